"""The tool bundle's rules without pip: versions, kinds, the self-update gate, rollback.

The bundles here are written by the real writer, with install.sh rendered as
`airgap tool-bundle` renders it but a stand-in for the wheels (the real thing is built
and installed in tests/integration/test_tool_bundle.py)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bundler.bundle.index import FileEntry
from bundler.bundle.plan import BuildPlan, Payload
from bundler.bundle.reader import read_head
from bundler.bundle.signing import load_signing_key
from bundler.bundle.writer import write_bundle
from bundler.errors import (
    BundleError,
    InstallError,
    RollbackError,
    UsageError,
    VerificationError,
)
from bundler.install.contents import check_signed_names
from bundler.pins import Pins
from bundler.toolbundle import NAME, arch_of, is_tool_bundle, version_number, version_tuple
from bundler.toolbundle.build import render_files, tool_manifest
from bundler.toolbundle.update import MARKER, ToolLayout, rollback, self_update

from conftest import Keys


def fake_tool_bundle(out: Path, key: Keys, version: str) -> Path:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    payloads = [Payload(p, d) for p, d in render_files(version, ("3.11",), ("x86_64",)).items()]
    payloads.append(Payload("tool/wheels/pip-1.0-py3-none-any.whl", b"a stand-in, not a wheel"))
    plan = BuildPlan(
        name=NAME,
        version=version_number(version),
        created=now,
        expires=now + timedelta(days=1),
        manifest=tool_manifest(version, ("3.11",), ("manylinux2014_x86_64",)),
        lock=Pins(),
        payloads=payloads,
    )
    write_bundle(plan, out, [load_signing_key(key.private)])
    return out


def installed(prefix: Path, *versions: str, current: str, previous: str | None = None) -> None:
    for v in versions:
        (prefix / "versions" / v).mkdir(parents=True)
        (prefix / "versions" / v / MARKER).write_text("index_sha256=x\npython=/usr/bin/python3\n")
    os.symlink(f"versions/{current}", prefix / "current")
    if previous:
        os.symlink(f"versions/{previous}", prefix / "previous")


def test_release_versions_map_to_growing_integers() -> None:
    assert version_number("0.1.0") == 1000
    assert version_number("0.1.1") == 1001 > version_number("0.1.0")
    assert version_number("1.0") == 1_000_000 > version_number("0.999.999")
    assert version_tuple("0.10.0") > version_tuple("0.9.9")  # not a string comparison
    for bad in ("0.2.0.dev1", "1.2.3.4", "1000.0.0", "v1.0.0", ""):
        with pytest.raises(UsageError, match="release versions"):
            version_number(bad)
    assert arch_of("manylinux_2_28_aarch64") == "aarch64"
    with pytest.raises(UsageError, match="not a Linux wheel platform"):
        arch_of("macosx_11_0_arm64")


def test_install_sh_is_rendered_for_its_version(tmp_path: Path) -> None:
    files = render_files("1.2.3", ("3.13", "3.11"), ("x86_64", "aarch64"))
    script = files["tool/install.sh"].decode()
    assert "AIRGAP_VERSION='1.2.3'" in script
    assert "PYTHONS='3.11 3.13'" in script and "ARCHES='x86_64 aarch64'" in script
    assert "@" not in files["tool/README.txt"].decode().replace("release.pub", "")


def test_a_tool_bundle_is_marked_by_its_signed_manifest(
    tmp_path: Path, key: Keys, bundle: Path
) -> None:
    tool = read_head(str(fake_tool_bundle(tmp_path / "t.tar", key, "0.1.0"))).index
    assert is_tool_bundle(tool) and not is_tool_bundle(read_head(str(bundle)).index)
    # Older airgaps self-update from it: it must stay in a format they read. The first
    # release that can self-update (0.2.0) reads airgap-bundle/2, and a tool bundle uses
    # none of format 2's optional keys.
    assert tool.format == "airgap-bundle/2" and tool.requires == "airgap>=0.2.0"
    assert tool.model_facts is None and tool.base is None and tool.sbom is None
    assert [f.path for f in tool.files][:2] == ["tool/README.txt", "tool/install.sh"]
    # install refuses it by what it is (usage, exit 2), not as a hostile release
    with pytest.raises(UsageError, match=r"is a tool bundle \(airgap 0.1.0\)") as e:
        check_signed_names(tool, bundle="t.tar")
    assert "self-update" in (e.value.hint or "")


def test_a_release_carries_only_a_tool_bundle_under_tool(bundle: Path) -> None:
    index = read_head(str(bundle)).index
    zero = "0" * 64

    def with_file(path: str) -> None:
        entry = FileEntry(path=path, size=0, sha256=zero, chunks=[zero])
        check_signed_names(index.model_copy(update={"files": [*index.files, entry]}))

    with_file("tool/airgap-tool-0.1.0.tar")
    for bad in ("tool/install.sh", "tool/airgap-tool-0.1.0.tar.sh", "tool/x/airgap-tool-1.0.0.tar"):
        with pytest.raises(BundleError, match="only tool/airgap-tool-X.Y.Z.tar"):
            with_file(bad)


def test_self_update_refuses_a_release_bundle(tmp_path: Path, bundle: Path, key: Keys) -> None:
    prefix = tmp_path / "tool"
    installed(prefix, "0.1.0", current="0.1.0")
    with pytest.raises(UsageError, match="is a release bundle"):
        self_update(str(bundle), key.trust(), [key.public], prefix=prefix)
    assert sorted(p.name for p in (prefix / "versions").iterdir()) == ["0.1.0"]  # no leftovers


def test_self_update_refuses_an_older_version_and_skips_the_current(
    tmp_path: Path, key: Keys
) -> None:
    prefix = tmp_path / "tool"
    installed(prefix, "0.2.0", current="0.2.0")
    old = fake_tool_bundle(tmp_path / "old.tar", key, "0.1.9")
    with pytest.raises(RollbackError, match="carries airgap 0.1.9, older than the current 0.2.0"):
        self_update(str(old), key.trust(), [key.public], prefix=prefix)
    # the same version already installed: nothing is run (the stand-in wheels would fail)
    same = fake_tool_bundle(tmp_path / "same.tar", key, "0.2.0")
    result = self_update(str(same), key.trust(), [key.public], prefix=prefix)
    assert (result.status, result.before, result.after) == ("unchanged", "0.2.0", "0.2.0")
    # a newer one reaches install.sh, whose failure leaves the current version alone
    new = fake_tool_bundle(tmp_path / "new.tar", key, "0.3.0")
    with pytest.raises(InstallError, match=r"install.sh of the new version failed \(exit 1\)"):
        self_update(str(new), key.trust(), [key.public], prefix=prefix, python=sys.executable)
    assert os.readlink(prefix / "current") == "versions/0.2.0"
    assert sorted(p.name for p in (prefix / "versions").iterdir()) == ["0.2.0"]


def test_rollback_swaps_current_and_previous(tmp_path: Path) -> None:
    prefix = tmp_path / "tool"
    installed(prefix, "0.1.0", "0.2.0", current="0.2.0", previous="0.1.0")
    result = rollback(prefix)
    assert (result.before, result.after) == ("0.2.0", "0.1.0")
    assert os.readlink(prefix / "current") == "versions/0.1.0"
    assert os.readlink(prefix / "previous") == "versions/0.2.0"
    assert not [p for p in prefix.iterdir() if p.name.startswith(".")]
    rollback(prefix)
    assert os.readlink(prefix / "current") == "versions/0.2.0"


def test_rollback_needs_a_complete_previous_version(tmp_path: Path) -> None:
    prefix = tmp_path / "tool"
    installed(prefix, "0.2.0", current="0.2.0")
    with pytest.raises(UsageError, match="no previous version"):
        rollback(prefix)
    os.symlink("versions/0.1.0", prefix / "previous")  # its install never finished
    with pytest.raises(UsageError, match="no previous version"):
        rollback(prefix)
    assert os.readlink(prefix / "current") == "versions/0.2.0"
    (prefix / "previous").unlink()
    os.symlink("/usr", prefix / "previous")
    with pytest.raises(VerificationError, match="not a version this tool installed"):
        ToolLayout(prefix).version(prefix / "previous")


def test_a_tool_bundle_in_a_newer_format_points_at_its_install_sh(
    tmp_path: Path, key: Keys
) -> None:
    """The airgap being updated cannot read it; install.sh needs only openssl."""
    from bundler import canonical
    from bundler.bundle.writer import _head

    index = canonical.dumps(
        {"format": "airgap-bundle/3", "requires": "airgap>=0.3.0", "name": NAME, "version": 3000}
    )
    signing = load_signing_key(key.private)
    head = _head(index, [(signing.keyid, signing.sign(index))], b"", 0)
    newer = tmp_path / "airgap-tool-0.3.0.tar"
    newer.write_bytes(head + bytes(1024))
    prefix = tmp_path / "tool"
    installed(prefix, "0.1.0", current="0.1.0")
    with pytest.raises(BundleError, match=r"needs airgap >= 0.3.0") as e:
        self_update(str(newer), key.trust(), [key.public], prefix=prefix)
    assert f"sh tool/install.sh --prefix {prefix}" in (e.value.hint or "")
    assert os.readlink(prefix / "current") == "versions/0.1.0"


def test_without_prefix_only_a_tool_install_knows_its_own() -> None:
    assert ToolLayout.running() is None  # the tests run from a development venv
    with pytest.raises(UsageError, match="was not installed from a tool bundle") as e:
        rollback(None)
    assert "--prefix" in (e.value.hint or "")
