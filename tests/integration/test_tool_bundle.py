"""airgap itself across the gap: the tool bundle, install.sh, self-update.

The tool bundles here are built by the real CLI from this checkout, with the wheels of
the checkout's wheelhouse (``.cache/wheelhouse``, filled by scripts/setup or by the
first test session through airgap's own download path), and installed by the real
``install.sh`` with each claimed Python this machine has, inside ``unshare -n``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from bundler import __version__
from devkit import services
from devkit.wheelhouse import REPO, ensure, pythons_here

from conftest import Keys, airgap, build_bundle, make_key

pytestmark = pytest.mark.integration
PYTHONS = pythons_here()
HOST_PY = "3.11"  # Debian 12's python3: the one CI always has
NEXT = re.sub(r"\d+$", lambda m: str(int(m[0]) + 1), __version__)
CLEAN_PATH = "/usr/bin:/bin"
HERE = platform.machine()
OTHER = "aarch64" if HERE == "x86_64" else "x86_64"


def run(
    cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A host program as an operator runs it: a clean environment (no PYTHONPATH)."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env if env is not None else {"PATH": CLEAN_PATH, "HOME": str(cwd or "/nonexistent")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def tool_bundle(out: Path, key: Keys, *extra: str) -> Path:
    home = out.parent / "home"
    r = airgap(
        "tool-bundle",
        "-o",
        str(out),
        "--key",
        str(key.private),
        "--no-index",
        "--find-links",
        str(ensure()),
        "--cache-dir",
        str(out.parent / "cache"),
        *extra,
        env={"HOME": str(home)},
    )
    assert r.returncode == 0, r.stderr.decode()
    return out


@pytest.fixture(scope="session")
def tool_key(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_key(tmp_path_factory.mktemp("tool-keys"), "tools")


@pytest.fixture(scope="session")
def tool_v1(tmp_path_factory: pytest.TempPathFactory, tool_key: Keys) -> Path:
    """This checkout's airgap with wheels for every claimed Python that is here."""
    out = tmp_path_factory.mktemp("tool-v1") / f"airgap-tool-{__version__}.tar"
    pythons = [a for v in sorted(PYTHONS) for a in ("--python", v)]
    return tool_bundle(out, tool_key, *pythons)


@pytest.fixture(scope="session")
def tool_v2(tmp_path_factory: pytest.TempPathFactory, tool_key: Keys) -> Path:
    """The same code with the next patch version, from a copy of the source tree."""
    work = tmp_path_factory.mktemp("tool-v2")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "bundler", src / "bundler", ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "bundler" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', f'"{NEXT}"'))
    return tool_bundle(
        work / f"airgap-tool-{NEXT}.tar", tool_key, "--python", HOST_PY, "--source", str(src)
    )


def extract(bundle: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    with tarfile.open(bundle) as tf:
        tf.extractall(into, filter="data")
    return into


def install_sh(
    root: Path,
    prefix: Path,
    key: Keys,
    *extra: str,
    tmp: Path | None = None,
    path: str = CLEAN_PATH,
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": str(root)}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    cmd = ["/bin/sh", "tool/install.sh", "--prefix", str(prefix), "--trusted-key", str(key.public)]
    return run([*cmd, *extra], cwd=root, env=env)


def test_claimed_pythons_include_the_os_python() -> None:
    """CI installs with every claimed Python this machine has; Debian's is always one."""
    assert HOST_PY in PYTHONS and str(PYTHONS[HOST_PY]).startswith("/usr/bin/")


@pytest.mark.parametrize("version", sorted(PYTHONS))
def test_installs_and_runs_offline_from_a_clean_directory(
    tmp_path: Path, tool_v1: Path, tool_key: Keys, bundle: Path, key: Keys, version: str
) -> None:
    clean = extract(tool_v1, tmp_path / "clean")
    prefix = tmp_path / "opt" / "airgap-tool"
    # Debian's python3.11 is found on PATH; the others are named.
    pick = "" if version == HOST_PY else f"--python {PYTHONS[version]}"
    # A wheel that is not in the signed index is never offered to pip (it would win).
    (clean / "tool/wheels/click-99.0.0-py3-none-any.whl").write_bytes(b"not signed")
    script = f"""
        set -e
        echo "net: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
        sh tool/install.sh --prefix {prefix} --trusted-key {tool_key.public} {pick}
        {prefix}/bin/airgap --version
        {prefix}/bin/airgap verify {bundle} --trusted-key {key.public}
        {prefix}/current/bin/python -I -c 'import bundler, os, sys; print(os.path.realpath(bundler.__file__), sys.version_info[:2])'
    """
    r = run(["unshare", "-n", "sh", "-c", script], cwd=clean)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "net: lo "  # a network namespace with loopback only
    assert f"airgap, version {__version__}" in lines
    assert any(ln.startswith("OK demo v1: signed by 1 trusted key(s)") for ln in lines), r.stdout
    site = prefix / "versions" / __version__
    major, minor = version.split(".")
    assert (
        f"{site}/lib/python{version}/site-packages/bundler/__init__.py ({major}, {minor})" in lines
    )
    assert os.readlink(prefix / "current") == f"versions/{__version__}"
    assert os.readlink(prefix / "bin" / "airgap") == "../current/bin/airgap"
    assert not (prefix / "previous").exists()
    assert not list(site.glob("lib/python*/site-packages/click-99*"))


def test_install_sh_refuses_an_expired_tool_bundle(
    tmp_path: Path, tool_v1: Path, tool_key: Keys
) -> None:
    (own,) = extract(tool_v1, tmp_path / "v1").glob("tool/wheels/airgap_bundler-*.whl")
    out = tmp_path / "old.tar"
    past = str(int(time.time()) - 3 * 86400)
    r = airgap(
        "tool-bundle", "-o", str(out), "--key", str(tool_key.private), "--python", HOST_PY,
        "--source", str(own), "--no-index", "--find-links", str(ensure()),
        "--expires-days", "1", env={"SOURCE_DATE_EPOCH": past, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    prefix = tmp_path / "opt"
    r = install_sh(extract(out, tmp_path / "x"), prefix, tool_key)
    assert r.returncode == 3 and "this tool bundle expired at" in r.stderr, r.stderr
    assert not prefix.exists()


TAMPER = ["damaged wheel", "wheel and SHA256SUMS replaced", "index edited", "untrusted key"]


@pytest.mark.parametrize("how", TAMPER)
def test_install_sh_refuses_before_installing_anything(
    tmp_path: Path, tool_v1: Path, tool_key: Keys, how: str
) -> None:
    root = extract(tool_v1, tmp_path / "x")
    (wheel,) = (root / "tool" / "wheels").glob("pydantic_core-*cp311*.whl")
    rel = wheel.relative_to(root).as_posix()
    trusted = tool_key
    if how == "damaged wheel":
        data = bytearray(wheel.read_bytes())
        data[len(data) // 2] ^= 0x01
        wheel.write_bytes(bytes(data))
        expect = f"damaged: {rel}"
    elif how == "wheel and SHA256SUMS replaced":
        wheel.write_bytes(b"PK\x05\x06" + bytes(18))
        sums = root / "airgap" / "SHA256SUMS"
        new = subprocess.run(
            ["sha256sum", rel], cwd=root, capture_output=True, text=True, check=True
        ).stdout
        sums.write_text(
            "".join(
                new if f"  {rel}\n" in ln else ln
                for ln in sums.read_text().splitlines(keepends=True)
            )
        )
        expect = "airgap/SHA256SUMS differs from the sums in the signed index"
    elif how == "index edited":
        index = root / "airgap" / "index.json"
        index.write_bytes(re.sub(rb'"expires":"\d{4}', b'"expires":"2999', index.read_bytes()))
        expect = "does not verify"
    else:
        trusted = make_key(tmp_path / "other", "other")
        expect = "0 valid signature(s) by the trusted keys, 1 required"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    prefix = tmp_path / "opt"
    r = install_sh(root, prefix, trusted, tmp=tmp)
    assert r.returncode == 3, r.stdout + r.stderr
    assert expect in r.stderr
    assert not prefix.exists()  # nothing installed, not even the directory
    assert list(tmp.iterdir()) == []  # its private copy is gone too


def test_install_sh_names_the_python_to_install(
    tmp_path: Path, tool_v1: Path, tool_key: Keys
) -> None:
    """No suitable Python (here: a python3 that is 3.6, as on RHEL 8): the OS packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/bin", "/bin"):
        for entry in os.scandir(d):
            if not entry.name.startswith("python") and not (bin_dir / entry.name).exists():
                (bin_dir / entry.name).symlink_to(entry.path)
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\necho 3.6\n")
    fake.chmod(0o755)
    root = extract(tool_v1, tmp_path / "x")
    prefix = tmp_path / "opt"
    r = install_sh(root, prefix, tool_key, path=str(bin_dir))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no suitable Python" in r.stderr and "(python3 is 3.6)" in r.stderr
    assert "dnf install python3.12" in r.stderr or "dnf install python3.11" in r.stderr
    assert "apt-get install python3.11" in r.stderr
    assert not prefix.exists()


def test_install_sh_is_posix_sh(tmp_path: Path, tool_v1: Path) -> None:
    root = extract(tool_v1, tmp_path / "x")
    for script in (REPO / "bundler/toolbundle/install.sh", root / "tool/install.sh"):
        for cmd in (["dash", "-n", str(script)], ["shellcheck", "-s", "sh", str(script)]):
            r = run(cmd)
            assert r.returncode == 0, r.stdout + r.stderr
    text = (root / "tool/install.sh").read_text()
    assert f"AIRGAP_VERSION='{__version__}'" in text
    assert not re.search(r"@[A-Z_]+@", text)


def test_self_update_and_back_keeps_installed_releases(
    tmp_path: Path,
    tool_v1: Path,
    tool_v2: Path,
    tool_key: Keys,
    demo_manifest: Path,
    key: Keys,
    docker_engine: services.Service,
) -> None:
    engine = docker_engine
    tool = tmp_path / "tool"
    r = install_sh(extract(tool_v1, tmp_path / "x"), tool, tool_key)
    assert r.returncode == 0, r.stdout + r.stderr
    home = tmp_path / "home"
    home.mkdir()

    def ag(*args: str) -> subprocess.CompletedProcess[str]:
        return run([str(tool / "bin" / "airgap"), *args], cwd=home)

    # Two releases, installed by the first version; the second carries the tool bundle.
    b1, b2 = tmp_path / "demo-1.tar", tmp_path / "demo-2.tar"
    build_bundle(demo_manifest, b1, key)
    text = demo_manifest.read_text()
    demo_manifest.write_text(re.sub(r"^version: \d+$", "version: 2", text, flags=re.M))
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(b2),
        "--key",
        str(key.private),
        "--with-tool",
        str(tool_v1),
    )
    assert r.returncode == 0, r.stderr.decode()
    member = f"tool/airgap-tool-{__version__}.tar"
    out = subprocess.run(["tar", "-xOf", str(b2), member], capture_output=True, check=True).stdout
    assert out == tool_v1.read_bytes()  # one tar command gets the tool bundle out, intact
    info = json.loads(airgap("inspect", str(b2), "--json").stdout)
    assert info["carries_tool"] == member
    prefix = tmp_path / "opt"
    target = ["--trusted-key", str(key.public), "--prefix", str(prefix), "--no-gpu"]
    target += ["--runtime-url", engine.url, "--no-serve"]
    status = ["status", "--prefix", str(prefix), "--runtime-url", engine.url, "--deep", "--json"]
    try:
        for b in (b1, b2):
            r = ag("install", str(b), *target)
            assert r.returncode == 0, r.stdout + r.stderr
        assert (prefix / "releases/demo-2" / member).read_bytes() == tool_v1.read_bytes()

        r = ag("self-update", str(tool_v2), "--trusted-key", str(tool_key.public))
        assert r.returncode == 0, r.stdout + r.stderr
        assert ag("--version").stdout.strip() == f"airgap, version {NEXT}"
        assert os.readlink(tool / "current") == f"versions/{NEXT}"
        assert os.readlink(tool / "previous") == f"versions/{__version__}"
        # the releases the old version installed: shown, healthy, and they roll back
        r = ag(*status)
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["ok"] and [rel["files_ok"] for rel in report["releases"]] == [True, True]
        assert "demo-2" in r.stdout and "demo-1" in r.stdout
        r = ag("rollback", "--prefix", str(prefix), "--runtime-url", engine.url)
        assert r.returncode == 0 and os.readlink(prefix / "current") == "releases/demo-1"

        # and back to the first version, which still reads what the second wrote
        r = ag("self-update", "--rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert ag("--version").stdout.strip() == f"airgap, version {__version__}"
        assert os.readlink(tool / "previous") == f"versions/{NEXT}"
        r = ag(*status)
        assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr

        # forward again: already installed, so only the switch
        r = ag("self-update", str(tool_v2), "--trusted-key", str(tool_key.public))
        assert r.returncode == 0 and "already installed" in r.stdout, r.stdout + r.stderr
        r = ag("self-update", str(tool_v2), "--trusted-key", str(tool_key.public))
        assert r.returncode == 0 and "nothing changed" in r.stdout
        # older is refused unless asked; a release bundle and an untrusted key are refused
        r = ag("self-update", str(tool_v1), "--trusted-key", str(tool_key.public))
        assert r.returncode == 3 and f"older than the current {NEXT}" in r.stderr
        r = ag("self-update", str(b1), "--trusted-key", str(key.public))
        assert r.returncode == 2 and "is a release bundle" in r.stderr
        r = ag("self-update", str(tool_v1), "--trusted-key", str(key.public), "--allow-downgrade")
        assert r.returncode == 3 and "signature" in r.stderr.lower()
        # a tool bundle is not a release
        r = ag("install", str(tool_v2), *target, "--trusted-key", str(tool_key.public))
        assert r.returncode == 2 and "is a tool bundle" in r.stderr
        assert ag("--version").stdout.strip() == f"airgap, version {NEXT}"
        assert sorted(p.name for p in (tool / "versions").iterdir()) == sorted([__version__, NEXT])
    finally:
        ag("uninstall", "--prefix", str(prefix), "--runtime-url", engine.url)


def test_wheels_for_another_platform_come_from_the_index(tmp_path: Path, tool_key: Keys) -> None:
    """The real download path: pip's platform options against the package index."""
    out = tmp_path / "airgap-tool-other.tar"
    r = airgap(
        "tool-bundle",
        "-o",
        str(out),
        "--key",
        str(tool_key.private),
        "--platform",
        f"manylinux2014_{OTHER}",
        "--python",
        "3.12",
        "--cache-dir",
        str(REPO / ".cache" / "airgap"),
        "--json",
    )
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["name"] == "airgap-tool"
    root = extract(out, tmp_path / "x")
    wheels = sorted(p.name for p in (root / "tool" / "wheels").iterdir())
    assert any(
        re.match(rf"pydantic_core-.*-cp312-cp312-.*manylinux.*_{OTHER}.*\.whl$", w) for w in wheels
    )
    assert any(re.match(rf"cryptography-.*_{OTHER}.*\.whl$", w) for w in wheels)
    assert not [w for w in wheels if HERE in w]
    # checkable with stock tools alone, as the README says
    sig = next((root / "airgap" / "signatures").iterdir())
    r = run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(tool_key.public),
            "-rawin",
            "-in",
            "airgap/index.json",
            "-sigfile",
            str(sig),
        ],
        cwd=root,
    )
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout
    assert run(["sha256sum", "-c", "--quiet", "airgap/SHA256SUMS"], cwd=root).returncode == 0
    # this host is refused before anything is installed
    prefix = tmp_path / "opt"
    r = install_sh(root, prefix, tool_key)
    assert r.returncode == 1 and f"carries wheels for {OTHER}; this host is {HERE}" in r.stderr
    assert not prefix.exists()


def test_build_with_tool_refuses_a_release_bundle(
    tmp_path: Path, bundle: Path, demo_manifest: Path, key: Keys
) -> None:
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(tmp_path / "b.tar"),
        "--key",
        str(key.private),
        "--with-tool",
        str(bundle),
    )
    assert r.returncode == 2 and b"not a tool bundle" in r.stderr
    assert not (tmp_path / "b.tar").exists()


def test_install_sh_refuses_a_prefix_others_can_change(
    tmp_path: Path, tool_v1: Path, tool_key: Keys
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone may rename what is below
    root = extract(tool_v1, tmp_path / "x")
    r = install_sh(root, shared / "airgap-tool", tool_key)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{shared}: writable by group or others" in r.stderr
    assert "chmod go-w" in r.stderr
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)  # as /tmp: accepted for a directory above the prefix
    # ...and the next rule answers: this version is there already, from other bytes
    marker = shared / "airgap-tool" / "versions" / __version__ / ".airgap-tool"
    marker.parent.mkdir(parents=True)
    marker.write_text("index_sha256=" + "0" * 64 + "\n")
    r = install_sh(root, shared / "airgap-tool", tool_key)
    assert r.returncode == 3, r.stdout + r.stderr
    assert (
        f"airgap {__version__} is installed in {marker.parent} from another tool bundle" in r.stderr
    )
    assert sorted(p.name for p in marker.parent.iterdir()) == [".airgap-tool"]
