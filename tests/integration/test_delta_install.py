"""Delta bundles installed into a real Docker engine (and Podman, and a registry): the
result is the release a full bundle makes, and a missing or damaged base changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_install import docker_ids, inspect_id, install, remove_images

from bundler.bundle.delta import is_engine_blob
from bundler.bundle.plan import BuildResult
from bundler.fmt import human
from bundler.names import image_tag
from devkit import services
from devkit.demo_data import Image, safetensors_bytes

from conftest import Keys, airgap, build_bundle, tree_snapshot

pytestmark = pytest.mark.integration

SHARED = {"bin/busybox": b"\x7fELF-not-really" * 100}  # the demo images' shared layer


@pytest.fixture
def clean_engine(docker_engine: services.Service) -> Iterator[services.Service]:
    before = set(docker_ids(docker_engine))
    yield docker_engine
    remove_images(docker_engine, sorted(set(docker_ids(docker_engine)) - before))


def state(prefix: Path) -> dict[str, tuple[int, int, str]]:
    """The prefix's snapshot, the lock file's content aside (each run writes its pid)."""
    snap = tree_snapshot(prefix)
    if ".airgap.lock" in snap:
        mode, owner, _ = snap[".airgap.lock"]
        snap[".airgap.lock"] = (mode, owner, "")
    return snap


def change(src: Path, what: str, version: int) -> None:
    """Make the demo sources release ``version``, changing only ``what``."""
    manifest = src / "manifest.yaml"
    text = manifest.read_text()
    manifest.write_text(re.sub(r"^version: \d+$", f"version: {version}", text, flags=re.M))
    if what == "weights":
        model = src / "weights" / "model.safetensors"
        model.write_bytes(safetensors_bytes(model.stat().st_size, fill=bytes([version]) * 7))
    elif what == "image":  # a new top layer; the shared bottom layer stays
        Image([SHARED, {"app/server.py": b"print('v%d')\n" % version}], compress=True).oci_archive(
            src / "vllm.tar", "example.org/vllm:test"
        )
    elif what == "image-below":  # a new bottom layer; the shared layer now sits above it
        Image([{"first": b"v%d" % version}, SHARED], compress=True).oci_archive(
            src / "vllm.tar", "example.org/vllm:test"
        )
    elif what == "docs":
        with open(src / "elastic" / "kb-product-doc-kibana-9.2.zip", "ab") as f:
            f.write(b"v%d" % version)
    elif what != "nothing":
        raise AssertionError(what)


def build_delta(manifest: Path, out: Path, key: Keys, base: Path) -> BuildResult:
    from bundler.build import BuildOptions, build
    from bundler.bundle.signing import load_signing_key
    from bundler.manifest import load_manifest

    opts = BuildOptions(
        output=out, keys=(load_signing_key(key.private),), chunk_size=64 * 1024, base=str(base)
    )
    return build(load_manifest(manifest), opts)


def payload_tree(release: Path) -> dict[str, str]:
    """sha256 of every payload file of a release (everything but its airgap/ metadata)."""
    out = {}
    for p in sorted(release.rglob("*")):
        rel = p.relative_to(release).as_posix()
        if p.is_file() and not rel.startswith("airgap/"):
            assert not p.is_symlink()
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def receipt_release(prefix: Path, key: str) -> dict[str, Any]:
    """A release's receipt record without what must differ (times, index, base, paths)."""
    rel = json.loads((prefix / "state/receipt.json").read_text())["releases"][key]
    for k in ("installed_at", "index_sha256", "base"):
        rel.pop(k, None)
    rel["path"] = Path(rel["path"]).name
    return dict(rel)


def uninstall(prefix: Path, svc: services.Service) -> None:
    r = airgap("uninstall", "--prefix", str(prefix), "--runtime-url", svc.url)
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("what", ["weights", "image", "docs"])
def test_delta_installs_the_same_release_as_the_full_bundle(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service, what: str
) -> None:
    src = demo_manifest.parent
    v1, full, delta = tmp_path / "v1.tar", tmp_path / "v2-full.tar", tmp_path / "v2-delta.tar"
    build_bundle(demo_manifest, v1, key)
    change(src, what, 2)
    full_result = build_bundle(demo_manifest, full, key)
    result = build_delta(demo_manifest, delta, key, v1)

    # The delta lists every file, carries only the changed ones, and is smaller.
    index = result.index
    assert index.base is not None and [f.path for f in index.files] == [
        f.path for f in full_result.index.files
    ]
    changed = {
        "weights": {"models/tiny/model.safetensors"},
        "docs": {"elastic/product-docs/kb-product-doc-kibana-9.2.zip"},
    }.get(what)
    carried = {f.path for f in index.carried}
    if changed is None:  # image: its manifest, config and new top layer only
        vllm = next(i for i in index.images if i.role == "vllm")
        changed = {
            "images/blobs/sha256/" + d[7:]
            for d in (vllm.manifest_digest, vllm.config_digest, vllm.layers[1].digest)
        }
        layers = index.base.layers or {}  # reused layers named with their diff_id
        assert vllm.layers[0].digest in layers and vllm.layers[1].digest not in layers
    assert carried == changed | {"sbom/cyclonedx.json"}  # made at write time: always carried
    assert delta.stat().st_size < full.stat().st_size

    # Install v1 then the delta; the delta's release is what the full bundle makes.
    a = tmp_path / "a"
    assert install(v1, key, a, clean_engine).returncode == 0
    r = install(delta, key, a, clean_engine, "--json")
    assert r.returncode == 0, r.stderr.decode()
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["base"]["ok"] is True and "hardlinked" in checks["base"]["detail"]
    # hardlinks take no space: the disk row counts the carried files only
    carried_files = sum(f.size for f in index.carried if not f.path.startswith("images/"))
    assert checks["disk"]["detail"].startswith(f"{human(carried_files)} needed under")
    tree_a = payload_tree(a / "releases/demo-2")
    # an unchanged model file is the base's very file (hardlinked), not a copy
    same = "models/tiny/tokenizer/tokenizer.json"
    assert (a / "releases/demo-2" / same).stat().st_ino == (
        a / "releases/demo-1" / same
    ).stat().st_ino
    rec_a = receipt_release(a, "demo-2")
    assert json.loads((a / "state/receipt.json").read_text())["releases"]["demo-2"]["base"] == (
        index.base.index_sha256
    )
    ids_a = docker_ids(clean_engine)
    uninstall(a, clean_engine)

    b = tmp_path / "b"
    assert install(v1, key, b, clean_engine).returncode == 0
    assert install(full, key, b, clean_engine).returncode == 0
    assert payload_tree(b / "releases/demo-2") == tree_a
    assert receipt_release(b, "demo-2") == rec_a
    assert docker_ids(clean_engine) == ids_a
    for img in index.images:
        assert inspect_id(clean_engine, image_tag("demo", 2, img.role)) == img.config_digest


def test_delta_from_the_base_bundle_into_a_fresh_prefix(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    src = demo_manifest.parent
    v1, full, delta = tmp_path / "v1.tar", tmp_path / "v2-full.tar", tmp_path / "v2-delta.tar"
    build_bundle(demo_manifest, v1, key, split_size=64 * 1024)  # the base in parts
    change(src, "image", 2)
    change(src, "weights", 2)
    build_bundle(demo_manifest, full, key)
    result = build_delta(demo_manifest, delta, key, v1)
    images = docker_ids(clean_engine)

    # Without its base: refused before anything is written (no prefix content, no image).
    a = tmp_path / "a"
    r = install(delta, key, a, clean_engine)
    assert r.returncode == 1, r.stderr.decode()
    err = r.stderr.decode()
    assert "needs its base demo v1" in err and "--base-bundle" in err
    assert not (a / "releases").exists() and not (a / "state").exists()
    assert docker_ids(clean_engine) == images

    # Another bundle given as the base: refused by its index sha256.
    r = install(delta, key, a, clean_engine, "--base-bundle", str(full))
    assert r.returncode == 2 and b"this delta needs demo v1" in r.stderr
    assert not (a / "releases").exists()

    # With the base bundle (split in parts): files copied from it, every blob the
    # engine lacks loaded from it; the release is the full bundle's.
    r = install(delta, key, a, clean_engine, "--base-bundle", str(v1) + ".part-000", "--json")
    assert r.returncode == 0, r.stderr.decode()
    checks = {c["name"]: c["detail"] for c in json.loads(r.stdout)["checks"]}
    assert "copied" in checks["base"] and "image blobs" in checks["base"]
    # the copies count in the free-disk check
    index = result.index
    copied = sum(f.size for f in index.reused if not is_engine_blob(index, f.path))
    carried_files = sum(f.size for f in index.carried if not f.path.startswith("images/"))
    assert checks["disk"].startswith(f"{human(carried_files + copied)} needed under")
    tree = payload_tree(a / "releases/demo-2")
    rec = receipt_release(a, "demo-2")
    for img in result.index.images:
        assert inspect_id(clean_engine, image_tag("demo", 2, img.role)) == img.config_digest
    uninstall(a, clean_engine)
    b = tmp_path / "b"
    assert install(full, key, b, clean_engine).returncode == 0
    assert payload_tree(b / "releases/demo-2") == tree
    assert receipt_release(b, "demo-2") == rec


def test_damaged_base_is_refused_and_nothing_changes(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    v1, delta = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    change(demo_manifest.parent, "docs", 2)
    build_delta(demo_manifest, delta, key, v1)
    prefix = tmp_path / "opt"
    assert install(v1, key, prefix, clean_engine).returncode == 0

    rotted = prefix / "releases/demo-1/models/tiny/model.safetensors"
    data = bytearray(rotted.read_bytes())
    data[len(data) // 2] ^= 0x01
    rotted.write_bytes(bytes(data))
    before, images = state(prefix), docker_ids(clean_engine)
    r = install(delta, key, prefix, clean_engine)
    assert r.returncode == 3, r.stderr.decode()
    assert f"{rotted}: differs from the signed sha256" in r.stderr.decode()
    assert state(prefix) == before and docker_ids(clean_engine) == images

    # The same with the byte restored installs: the refusal was the damage, nothing else.
    data[len(data) // 2] ^= 0x01
    rotted.write_bytes(bytes(data))
    r = install(delta, key, prefix, clean_engine)
    assert r.returncode == 0, r.stderr.decode()

    # A damaged base bundle is refused the same way, naming the file in it.
    bad = tmp_path / "bad-v1.tar"
    with tarfile.open(v1) as tf:
        member = tf.getmember("models/tiny/model.safetensors")
    raw = bytearray(v1.read_bytes())
    raw[member.offset_data + member.size // 3] ^= 0x01
    bad.write_bytes(bytes(raw))
    fresh, images = tmp_path / "fresh", docker_ids(clean_engine)
    r = install(delta, key, fresh, clean_engine, "--base-bundle", str(bad))
    assert r.returncode == 3, r.stderr.decode()
    assert f"{bad} (models/tiny/model.safetensors): chunk " in r.stderr.decode()
    assert not (fresh / "releases").exists() or not any((fresh / "releases").iterdir())
    assert docker_ids(clean_engine) == images
    r = install(delta, key, fresh, clean_engine, "--base-bundle", str(v1))  # the intact one
    assert r.returncode == 0, r.stderr.decode()


def test_pruned_layer_is_named_and_the_base_bundle_gives_it(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    v1, delta = tmp_path / "v1.tar", tmp_path / "v2.tar"
    first = build_bundle(demo_manifest, v1, key)
    change(demo_manifest.parent, "image", 2)
    result = build_delta(demo_manifest, delta, key, v1)
    prefix = tmp_path / "opt"
    assert install(v1, key, prefix, clean_engine).returncode == 0
    new = next(i for i in result.index.images if i.role == "vllm")
    assert result.index.base is not None
    # the operator pruned the base's images (and so the layer v2 shares with them)
    for img in first.index.images:
        subprocess.run(
            ["docker", "-H", clean_engine.url, "rmi", "-f", img.config_digest],
            check=True,
            capture_output=True,
        )
    snapshot = state(prefix)
    r = install(delta, key, prefix, clean_engine)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    diff_id = result.index.base.layers[new.layers[0].digest]  # type: ignore[index]
    assert f"image vllm: layer {new.layers[0].digest}, diff_id {diff_id}" in err
    assert "--base-bundle" in err and state(prefix) == snapshot

    r = install(delta, key, prefix, clean_engine, "--base-bundle", str(v1))
    assert r.returncode == 0, r.stderr.decode()
    assert inspect_id(clean_engine, image_tag("demo", 2, "vllm")) == new.config_digest


def test_docker_reuses_a_layer_only_on_the_same_layers_below_it(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    v1, delta = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    change(demo_manifest.parent, "image-below", 2)
    result = build_delta(demo_manifest, delta, key, v1)
    new = next(i for i in result.index.images if i.role == "vllm")
    shared = new.layers[1].digest
    assert result.index.base is not None and shared in (result.index.base.layers or {})
    prefix = tmp_path / "opt"
    assert install(v1, key, prefix, clean_engine).returncode == 0
    # Docker has the shared layer, but only with nothing below it: it cannot reuse it
    # under the new bottom layer, so the preflight names it instead of a failed load.
    snapshot, images = state(prefix), docker_ids(clean_engine)
    r = install(delta, key, prefix, clean_engine)
    assert r.returncode == 1, r.stderr.decode()
    assert f"image vllm: layer {shared}" in r.stderr.decode()
    assert state(prefix) == snapshot and docker_ids(clean_engine) == images
    r = install(delta, key, prefix, clean_engine, "--base-bundle", str(v1))
    assert r.returncode == 0, r.stderr.decode()
    assert inspect_id(clean_engine, image_tag("demo", 2, "vllm")) == new.config_digest


def test_delta_chain_status_rollback_and_a_pruned_base(
    tmp_path: Path, demo_manifest: Path, key: Keys, clean_engine: services.Service
) -> None:
    src = demo_manifest.parent
    v1, v2, v3 = (tmp_path / f"v{n}.tar" for n in (1, 2, 3))
    build_bundle(demo_manifest, v1, key)
    change(src, "docs", 2)
    d2 = build_delta(demo_manifest, v2, key, v1)
    # v3 against v2, given by its index only (what the connected side keeps)
    index2 = tmp_path / "v2-index.json"
    r = airgap("inspect", "--index", str(v2))
    index2.write_bytes(r.stdout)
    change(src, "weights", 3)
    d3 = build_delta(demo_manifest, v3, key, index2)
    assert d3.index.base is not None and d3.index.base.index_sha256 == d2.index_sha256

    prefix = tmp_path / "opt"
    for bundle in (v1, v2, v3):
        r = install(bundle, key, prefix, clean_engine)
        assert r.returncode == 0, r.stderr.decode()
    r = airgap("status", "--prefix", str(prefix), "--runtime-url", clean_engine.url, "--json")
    rows = {row["release"]: row for row in json.loads(r.stdout)["releases"]}
    assert rows["demo-3"]["base_chain"] == ["demo-2", "demo-1"]
    assert rows["demo-1"]["base_chain"] == []
    r = airgap("status", "--prefix", str(prefix), "--runtime-url", clean_engine.url)
    assert b"delta of demo-2 <- demo-1" in r.stdout

    r = airgap("rollback", "--prefix", str(prefix))
    assert r.returncode == 0 and os.readlink(prefix / "current") == "releases/demo-2"
    # each release is whole on its own: the base's directory gone, the deltas still check
    shutil.rmtree(prefix / "releases/demo-1")
    r = airgap(
        "status", "--prefix", str(prefix), "--runtime-url", clean_engine.url, "--deep", "--json"
    )
    rows = {row["release"]: row for row in json.loads(r.stdout)["releases"]}
    assert rows["demo-2"]["files_ok"] is True and rows["demo-3"]["files_ok"] is True
    assert rows["demo-1"]["index_ok"] is False  # the negative control: that one is gone
    uninstall(prefix, clean_engine)
    assert not prefix.exists()
    for img in d3.index.images:
        assert inspect_id(clean_engine, img.config_digest) is None


@pytest.mark.parametrize("what", ["image", "image-below"])
def test_delta_on_podman_reuses_the_layer_it_has(
    tmp_path: Path, demo_manifest: Path, key: Keys, podman_engine: services.Service, what: str
) -> None:
    """Podman reuses a layer it holds by its diff_id wherever it sits (unlike Docker)."""
    v1, delta = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    change(demo_manifest.parent, what, 2)
    result = build_delta(demo_manifest, delta, key, v1)
    new = next(i for i in result.index.images if i.role == "vllm")
    prefix = tmp_path / "opt"
    engine = ["--runtime", "podman", "--runtime-url", podman_engine.url]
    try:
        assert install(v1, key, prefix, podman_engine, runtime="podman").returncode == 0
        r = install(delta, key, prefix, podman_engine, "--json", runtime="podman")
        assert r.returncode == 0, r.stderr.decode()
        checks = {c["name"]: c["detail"] for c in json.loads(r.stdout)["checks"]}
        assert "image blobs already in the image store" in checks["base"]
        r = airgap("status", "--prefix", str(prefix), *engine, "--json")
        rows = {row["release"]: row for row in json.loads(r.stdout)["releases"]}
        assert all(i["present"] for i in rows["demo-2"]["images"])
        assert {i["id"] for i in rows["demo-2"]["images"]} >= {new.config_digest}
    finally:
        airgap("uninstall", "--prefix", str(prefix), *engine)


def test_delta_to_a_registry_mounts_what_the_base_pushed(
    tmp_path: Path, demo_manifest: Path, key: Keys, oci_registry: services.Service
) -> None:
    v1, delta = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    change(demo_manifest.parent, "image", 2)
    result = build_delta(demo_manifest, delta, key, v1)
    new = next(i for i in result.index.images if i.role == "vllm")

    def push(bundle: Path, prefix: Path, namespace: str) -> subprocess.CompletedProcess[bytes]:
        return airgap(
            "install",
            str(bundle),
            "--trusted-key",
            str(key.public),
            "--prefix",
            str(prefix),
            "--no-gpu",
            "--registry",
            f"{oci_registry.url}/{namespace}",
            "--registry-insecure",
        )

    prefix = tmp_path / "opt"
    assert push(v1, prefix, "delta-a").returncode == 0
    # Negative control: a namespace the base was never pushed to lacks the shared layer.
    r = push(delta, prefix, "delta-b")
    assert r.returncode == 1
    assert f"image vllm: layer {new.layers[0].digest}" in r.stderr.decode()
    r = push(delta, prefix, "delta-a")
    assert r.returncode == 0, r.stderr.decode()
    ref = f"{oci_registry.url}/delta-a/demo/vllm:2"
    assert services.registry_digest(ref) == new.manifest_digest
