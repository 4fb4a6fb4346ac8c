"""Saved images (docker-archive, OCI layout dir, OCI archive) become verified blobs."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from bundler.errors import SourceError
from bundler.images import load_image_archive
from devkit.demo_data import Image, sha, tar_bytes

CHUNK = 64 * 1024
LAYERS = [{"bin/sh": b"#!shell" * 50}, {"etc/conf": b"x=1\n"}]


def load(path: Path, platform: str = "linux/amd64"):  # type: ignore[no-untyped-def]
    return load_image_archive(
        path, role="vllm", platform=platform, default_ref="airgap/x:1", chunk_size=CHUNK
    )


def blobs_of(img) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    out = {}
    for p in img.payloads:
        src = p.source
        if isinstance(src, bytes):
            data = src
        else:
            with open(src.path, "rb") as f:
                f.seek(src.offset)
                data = f.read(src.size)
        out[p.path.rsplit("/", 1)[1]] = data
    return out


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci-dir"])
@pytest.mark.parametrize("compress", [False, True])
def test_every_form_yields_content_addressed_blobs(
    tmp_path: Path, kind: str, compress: bool
) -> None:
    image = Image(LAYERS, compress=compress)
    if kind == "docker-archive":
        path = image.docker_archive(tmp_path / "i.tar", "example.org/x:1")
    elif kind == "oci-archive":
        path = image.oci_archive(tmp_path / "i.tar", "example.org/x:1")
    else:
        path = image.oci_dir(tmp_path / "layout", "example.org/x:1")
    img = load(path)
    assert img.entry.config_digest == image.config_digest
    assert [la.digest for la in img.entry.layers] == ["sha256:" + sha(b) for b in image.blobs]
    assert img.entry.ref == "example.org/x:1"
    assert img.entry.platform == "linux/amd64"
    blobs = blobs_of(img)
    for digest, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == digest
    manifest = json.loads(blobs[img.entry.manifest_digest.removeprefix("sha256:")])
    assert manifest["config"]["digest"] == image.config_digest
    assert [la["mediaType"] for la in manifest["layers"]] == image.media_types
    if kind != "docker-archive":  # the registry manifest is carried as-is
        assert img.entry.manifest_digest == "sha256:" + sha(image.manifest)


def test_wrong_platform_is_refused(tmp_path: Path) -> None:
    path = Image(LAYERS, arch="arm64").docker_archive(tmp_path / "i.tar", "x:1")
    with pytest.raises(SourceError, match="image is for linux/arm64"):
        load(path)
    assert load(path, "linux/arm64/v8").entry.platform == "linux/arm64"


def test_damaged_layer_is_refused(tmp_path: Path) -> None:
    image = Image(LAYERS)
    layout = image.oci_dir(tmp_path / "layout")
    blob = layout / "blobs/sha256" / sha(image.blobs[0])
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="layer content is"):
        load(layout)


def test_uncompressed_docker_layer_must_match_its_diff_id(tmp_path: Path) -> None:
    image = Image(LAYERS)
    path = image.docker_archive(tmp_path / "i.tar", "x:1")
    with tarfile.open(path) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]
    name = f"{sha(image.blobs[1])}/layer.tar"
    files[name] = files[name][:-1] + b"\x01"
    path.write_bytes(tar_bytes(files))
    with pytest.raises(SourceError, match="layer content is"):
        load(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"hello.txt": b"hi"}, "neither a docker-archive"),
        ({"manifest.json": b"[]"}, "exactly one image"),
        ({"manifest.json": b"not json"}, "not valid JSON"),
    ],
)
def test_not_an_image(tmp_path: Path, content: dict[str, bytes], message: str) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(tar_bytes(content))
    with pytest.raises(SourceError, match=message):
        load(path)


def test_gzipped_or_missing_archive(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes({"a": b"b"})))
    with pytest.raises(SourceError, match="uncompressed tar"):
        load(path)
    with pytest.raises(SourceError, match="does not exist"):
        load(tmp_path / "nope.tar")
