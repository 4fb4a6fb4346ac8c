"""`airgap install` against the real Docker engine and Podman (started here, on sockets)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.names import image_tag
from devkit import services

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration


def docker_ids(svc: services.Service) -> dict[str, list[str]]:
    """Every image the engine has, by ID -> sorted tags (asked with the docker CLI)."""
    out = subprocess.run(
        [
            "docker",
            "-H",
            svc.url,
            "image",
            "ls",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Repository}}:{{.Tag}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ids: dict[str, list[str]] = {}
    for line in out.splitlines():
        image_id, tag = line.split(" ", 1)
        ids.setdefault(image_id, []).append(tag)
    return {k: sorted(v) for k, v in ids.items()}


def inspect_id(svc: services.Service, ref: str) -> str | None:
    r = subprocess.run(
        ["docker", "-H", svc.url, "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def remove_images(svc: services.Service, ids: list[str]) -> None:
    for image_id in ids:
        subprocess.run(
            ["docker", "-H", svc.url, "rmi", "-f", image_id], capture_output=True, check=False
        )


def set_version(manifest: Path, version: int, marker: bytes | None = None) -> None:
    text = manifest.read_text()
    manifest.write_text(re.sub(r"^version: \d+$", f"version: {version}", text, flags=re.M))
    if marker is not None:
        (manifest.parent / "weights" / "config.json").write_bytes(b'{"marker": "%s"}\n' % marker)


def install(
    bundle: Path,
    key: Keys,
    prefix: Path,
    svc: services.Service,
    *extra: str,
    runtime: str = "docker",
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return airgap(
        "install",
        str(bundle) if input is None else "-",
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--no-gpu",
        "--runtime",
        runtime,
        "--runtime-url",
        svc.url,
        "--no-serve",  # part 1 only: these demo images are not runnable
        *extra,
        input=input,
    )


@pytest.fixture
def clean_engine(docker_engine: services.Service) -> Iterator[services.Service]:
    before = set(docker_ids(docker_engine))
    yield docker_engine
    remove_images(docker_engine, sorted(set(docker_ids(docker_engine)) - before))


def test_install_loads_images_with_their_signed_ids(
    tmp_path: Path, bundle: Path, key: Keys, clean_engine: services.Service
) -> None:
    prefix = tmp_path / "opt"
    r = install(bundle, key, prefix, clean_engine, "--json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["status"] == "installed"
    from bundler.bundle.reader import read_head

    index = read_head(str(bundle)).index
    for img in index.images:
        # tagged in airgap's own namespace only, never under the ref the index names
        assert inspect_id(clean_engine, image_tag("demo", 1, img.role)) == img.config_digest
        assert inspect_id(clean_engine, img.ref) is None
    # files in the release, identical to the sources; the current pointer names it
    release = prefix / "releases" / "demo-1"
    assert os.readlink(prefix / "current") == "releases/demo-1"
    src = tmp_path / "src" / "weights"
    assert (release / "models/tiny/model.safetensors").read_bytes() == (
        src / "model.safetensors"
    ).read_bytes()
    assert (release / "elastic/elser/elser_model_2_linux-x86_64.pt").exists()
    # layers went to the engine only: no layer blob on our disk
    for img in index.images:
        for layer in img.layers:
            assert not (release / "images/blobs/sha256" / layer.digest[7:]).exists()
    assert (release / "images/blobs/sha256" / index.images[0].manifest_digest[7:]).exists()
    receipt = json.loads((prefix / "state/receipt.json").read_text())
    assert receipt["current"] == "demo-1" and receipt["pending"] is None
    assert oct((prefix / "state/receipt.json").stat().st_mode & 0o777) == "0o600"
    r = airgap(
        "status", "--prefix", str(prefix), "--runtime-url", clean_engine.url, "--deep", "--json"
    )
    assert r.returncode == 0, r.stderr.decode()
    status = json.loads(r.stdout)
    assert status["ok"] and status["releases"][0]["files_ok"] is True


def test_reinstall_changes_nothing_and_downgrade_is_refused(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    prefix = tmp_path / "opt"
    v1, v2 = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    set_version(demo_manifest, 2, b"two")
    build_bundle(demo_manifest, v2, key)

    assert install(v1, key, prefix, clean_engine).returncode == 0
    stamp = (prefix / "releases/demo-1").stat().st_mtime_ns
    images = docker_ids(clean_engine)
    r = install(v1, key, prefix, clean_engine, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "unchanged"
    assert (prefix / "releases/demo-1").stat().st_mtime_ns == stamp
    assert docker_ids(clean_engine) == images

    assert install(v2, key, prefix, clean_engine).returncode == 0
    assert os.readlink(prefix / "current") == "releases/demo-2"
    assert b"two" in (prefix / "current/models/tiny/config.json").read_bytes()

    r = install(v1, key, prefix, clean_engine)
    assert r.returncode == 3 and b"older than installed v2" in r.stderr
    assert os.readlink(prefix / "current") == "releases/demo-2"
    r = install(v1, key, prefix, clean_engine, "--allow-downgrade", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "reactivated"
    assert os.readlink(prefix / "current") == "releases/demo-1"

    r = airgap("rollback", "--prefix", str(prefix))
    assert r.returncode == 0 and b"demo-2" in r.stdout
    assert os.readlink(prefix / "current") == "releases/demo-2"


def _flip(src: Path, dst: Path, member: str, where: float = 0.5) -> None:
    with tarfile.open(src) as tf:
        m = tf.getmember(member)
    data = bytearray(src.read_bytes())
    data[m.offset_data + int(m.size * where)] ^= 0x01
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["image layer", "model file", "index"])
def test_damaged_bundle_changes_nothing(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service, what: str
) -> None:
    prefix = tmp_path / "opt"
    v1, v2 = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    assert install(v1, key, prefix, clean_engine).returncode == 0
    images_before = docker_ids(clean_engine)
    receipt_before = (prefix / "state/receipt.json").read_bytes()

    set_version(demo_manifest, 2, b"two")
    # give v2 an image v1 does not have, so a load really happens
    (demo_manifest.parent / "nginx.tar").unlink()
    from devkit.demo_data import Image

    Image([{"bin/new": os.urandom(300_000)}], compress=True).docker_archive(
        demo_manifest.parent / "nginx.tar", "example.org/nginx:two"
    )
    result = build_bundle(demo_manifest, v2, key)
    nginx = next(i for i in result.index.images if i.role == "nginx")
    member = {
        "image layer": f"images/blobs/sha256/{nginx.layers[0].digest[7:]}",
        "model file": "models/tiny/model.safetensors",
        "index": "airgap/index.json",
    }[what]
    bad = tmp_path / "bad.tar"
    _flip(v2, bad, member, 0.9)
    # the operator's tag that v2's image would take: a failed install must not move it
    old_id = next(iter(images_before))
    subprocess.run(
        ["docker", "-H", clean_engine.url, "tag", old_id, "example.org/nginx:two"], check=True
    )
    images_before = docker_ids(clean_engine)
    r = install(bad, key, prefix, clean_engine)
    assert r.returncode == 3, r.stderr.decode()
    assert docker_ids(clean_engine) == images_before
    assert inspect_id(clean_engine, nginx.config_digest) is None
    assert inspect_id(clean_engine, "example.org/nginx:two") == old_id
    assert os.readlink(prefix / "current") == "releases/demo-1"
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == ["demo-1"]
    assert json.loads((prefix / "state/receipt.json").read_text())["current"] == "demo-1"
    assert (
        json.loads(receipt_before)["releases"]
        == json.loads((prefix / "state/receipt.json").read_text())["releases"]
    )
    # and the good v2 still installs afterwards, leaving the operator's tag where it was
    assert install(v2, key, prefix, clean_engine).returncode == 0
    assert inspect_id(clean_engine, image_tag("demo", 2, "nginx")) == nginx.config_digest
    assert inspect_id(clean_engine, "example.org/nginx:two") == old_id


def test_killed_install_leaves_nothing_a_rerun_trusts(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    from devkit.demo_data import Image

    Image([{"blob": os.urandom(40 * 1024 * 1024)}]).docker_archive(
        demo_manifest.parent / "vllm.tar", "example.org/vllm:big"
    )
    bundle = tmp_path / "b.tar"
    result = build_bundle(demo_manifest, bundle, key)
    data = bundle.read_bytes()
    vllm = next(i for i in result.index.images if i.role == "vllm")
    with tarfile.open(bundle) as tf:
        layer = tf.getmember(f"images/blobs/sha256/{vllm.layers[0].digest[7:]}")
    prefix = tmp_path / "opt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bundler",
            "install",
            "-",
            "--trusted-key",
            str(key.public),
            "--prefix",
            str(prefix),
            "--no-gpu",
            "--runtime-url",
            clean_engine.url,
            "--no-serve",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    cut = layer.offset_data + layer.size // 2  # the middle of the image layer
    proc.stdin.write(data[:cut])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not list((prefix / "releases").glob(".staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((prefix / "releases").glob(".staging-*")), "install never started staging"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (prefix / "current").exists()
    assert inspect_id(clean_engine, vllm.config_digest) is None

    r = install(bundle, key, prefix, clean_engine, "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["status"] == "installed"
    assert not list((prefix / "releases").glob(".staging-*"))
    assert inspect_id(clean_engine, vllm.config_digest) == vllm.config_digest
    assert json.loads((prefix / "state/receipt.json").read_text())["pending"] is None


def test_uninstall_removes_exactly_what_it_created(
    tmp_path: Path, bundle: Path, key: Keys, clean_engine: services.Service
) -> None:
    from devkit.demo_data import Image

    # an image the operator had before: uninstall must not touch it
    theirs = Image([{"x": b"theirs"}])
    archive = theirs.docker_archive(tmp_path / "theirs.tar", "example.org/theirs:1")
    subprocess.run(
        ["docker", "-H", clean_engine.url, "load", "-i", str(archive)],
        check=True,
        capture_output=True,
    )
    prefix = tmp_path / "opt"
    assert install(bundle, key, prefix, clean_engine).returncode == 0
    r = airgap("uninstall", "--prefix", str(prefix), "--runtime-url", clean_engine.url)
    assert r.returncode == 0, r.stderr.decode()
    assert not prefix.exists()
    from bundler.bundle.reader import read_head

    for img in read_head(str(bundle)).index.images:
        assert inspect_id(clean_engine, img.config_digest) is None
    assert inspect_id(clean_engine, "example.org/theirs:1") == theirs.config_digest


def test_preflight_failures_and_dry_run_change_nothing(
    tmp_path: Path, bundle: Path, key: Keys, clean_engine: services.Service
) -> None:
    prefix = tmp_path / "opt"
    images = docker_ids(clean_engine)
    r = install(bundle, key, prefix, clean_engine, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["status"] == "dry-run"
    assert not (prefix / "releases" / "demo-1").exists()
    assert docker_ids(clean_engine) == images
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        busy = s.getsockname()[1]
        # the TLS port, and the artifacts port too, since this bundle carries Elastic files
        for flag, other in (("--port", "--artifacts-port"), ("--artifacts-port", "--port")):
            r = airgap(
                "install",
                str(bundle),
                "--trusted-key",
                str(key.public),
                "--prefix",
                str(prefix),
                "--no-gpu",
                "--runtime-url",
                clean_engine.url,
                flag,
                str(busy),
                other,
                str(services.free_port()),
            )
            assert r.returncode == 1 and f"port {busy}: in use".encode() in r.stderr
            assert not (prefix / "current").exists()
    assert not (prefix / "current").exists()
    r = airgap(
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--runtime-url",
        "unix:///nonexistent.sock",
    )
    assert r.returncode == 1 and b"nonexistent.sock" in r.stderr
    assert docker_ids(clean_engine) == images


def test_podman_gets_the_same_images(
    tmp_path: Path, bundle: Path, key: Keys, podman_engine: services.Service
) -> None:
    prefix = tmp_path / "opt"
    r = install(bundle, key, prefix, podman_engine, "--json", runtime="podman")
    assert r.returncode == 0, r.stderr.decode()
    from bundler.bundle.reader import read_head

    index = read_head(str(bundle)).index
    base = podman_engine.env["PODMAN_BASE"].split()
    for img in index.images:
        out = subprocess.run(
            [*base, "image", "inspect", "--format", "{{.Id}}", image_tag("demo", 1, img.role)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "sha256:" + out.stdout.strip().removeprefix("sha256:") == img.config_digest
    r = airgap(
        "uninstall",
        "--prefix",
        str(prefix),
        "--runtime",
        "podman",
        "--runtime-url",
        podman_engine.url,
    )
    assert r.returncode == 0, r.stderr.decode()


def test_registry_mode_pushes_the_signed_images(
    tmp_path: Path, bundle: Path, key: Keys, oci_registry: services.Service
) -> None:
    prefix = tmp_path / "opt"
    target = f"{oci_registry.url}/airgap"
    r = airgap(
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--registry",
        target,
        "--json",
    )
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    from bundler.bundle.reader import read_head

    index = read_head(str(bundle)).index
    pushed = {i["role"]: i["ref"] for i in result["images"]}
    # under the operator's prefix, in the bundle's namespace: never a name from the index
    assert pushed == {"nginx": f"{target}/demo/nginx:1", "vllm": f"{target}/demo/vllm:1"}
    for img in index.images:
        ref = f"docker://{pushed[img.role]}"
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Digest"] == img.manifest_digest
        # pull it back whole: skopeo checks every blob against its digest
        dest = tmp_path / f"pulled-{img.role}"
        out = subprocess.run(
            ["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", ref, f"oci:{dest}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        layout = json.loads((dest / "index.json").read_text())
        assert layout["manifests"][0]["digest"] == img.manifest_digest
    r = airgap(
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--registry",
        target,
        "--json",
    )
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "unchanged"
    r = airgap("status", "--prefix", str(prefix))
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    r = airgap("uninstall", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr.decode()
    for img in index.images:
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{pushed[img.role]}"],
            capture_output=True,
            check=False,
        )
        assert out.returncode != 0
    assert not prefix.exists()


def test_target_registry_is_what_registry_alone_means(
    tmp_path: Path, bundle: Path, key: Keys, oci_registry: services.Service
) -> None:
    prefix = tmp_path / "opt"
    target = f"{oci_registry.url}/explicit"
    r = airgap(
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--target",
        "registry",
        "--registry",
        target,
        "--json",
    )
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    from bundler.bundle.reader import read_head

    index = read_head(str(bundle)).index
    pushed = {i["role"]: i["ref"] for i in result["images"]}
    assert pushed == {"nginx": f"{target}/demo/nginx:1", "vllm": f"{target}/demo/vllm:1"}
    for img in index.images:
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{pushed[img.role]}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Digest"] == img.manifest_digest
    assert result["serving"] is None  # pushed only: nothing runs on this host
    r = airgap("uninstall", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr.decode()
    assert not prefix.exists()


def test_interrupted_run_in_another_engine_is_cleaned_there(
    tmp_path: Path, clean_engine: services.Service, podman_engine: services.Service
) -> None:
    """A run killed while loading into Docker, then a run into Podman: the Docker images
    the killed run loaded are removed from Docker (the receipt names where they went)."""
    from bundler.install.layout import Layout
    from bundler.install.records import ImageRecord, PendingRun
    from bundler.install.sink import recover
    from bundler.install.state import ReceiptFile
    from bundler.install.targets import EngineTarget
    from bundler.oci.engine import Runtime
    from devkit.demo_data import Image

    img = Image([{"left-behind": os.urandom(10_000)}])
    archive = img.docker_archive(tmp_path / "i.tar", "example.org/left:1")
    subprocess.run(["docker", "-H", clean_engine.url, "load", "-i", str(archive)], check=True)
    assert inspect_id(clean_engine, img.config_digest) == img.config_digest
    layout = Layout(tmp_path / "opt")
    receipt = ReceiptFile.load(layout.state)
    docker_target = EngineTarget(Runtime("docker", clean_engine.url))
    pending = PendingRun(
        staging=str(layout.releases / ".staging-x"),
        target=docker_target.spec(),
        images=[ImageRecord(role="vllm", ref="example.org/left:1", id=img.config_digest)],
    )
    receipt.save(receipt.receipt.with_pending(pending))
    docker_target.close()
    podman_target = EngineTarget(Runtime("podman", podman_engine.url))
    try:
        notes = recover(layout, ReceiptFile.load(layout.state), podman_target)
    finally:
        podman_target.close()
    assert f"removed image {img.config_digest} of an interrupted run" in notes
    assert inspect_id(clean_engine, img.config_digest) is None
    assert ReceiptFile.load(layout.state).receipt.pending is None


def test_registry_push_logs_in_like_pull(tmp_path: Path, bundle: Path, key: Keys) -> None:
    """A site registry that requires a login (htpasswd): refused cleanly without
    credentials, pushed with those in Docker's config.json, pulled back whole."""
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(
        ["htpasswd", "-Bbc", str(htpasswd), "ops", "s3cret"], check=True, capture_output=True
    )
    with services.registry(htpasswd) as reg:
        args = ["install", str(bundle), "--trusted-key", str(key.public), "--registry", reg.url]
        r = airgap(*args, "--prefix", str(tmp_path / "opt"))
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert "needs a login" in err and "docker login" in err and "Traceback" not in err
        assert not (tmp_path / "opt" / "releases" / "demo-1").exists()
        config = tmp_path / "docker-config"
        config.mkdir()
        (config / "config.json").write_text(
            json.dumps({"auths": {reg.url: {"auth": base64.b64encode(b"ops:s3cret").decode()}}})
        )
        env = {"DOCKER_CONFIG": str(config)}
        r = airgap(*args, "--prefix", str(tmp_path / "opt"), "--json", env=env)
        assert r.returncode == 0, r.stderr.decode()
        from bundler.bundle.reader import read_head

        for img in read_head(str(bundle)).index.images:
            ref = f"{reg.url}/airgap/demo/{img.role}:1"
            assert services.registry_digest(ref, "ops:s3cret") == img.manifest_digest
        r = airgap("uninstall", "--prefix", str(tmp_path / "opt"), env=env)
        assert r.returncode == 0, r.stderr.decode()
