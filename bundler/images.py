"""Container images from saved archives, as content-addressed OCI blobs.

Accepts what operators already have: a ``docker save`` tar (docker-archive, old
and new layouts), an OCI image layout directory, or an OCI archive tar (the same
layout inside a tar). Blobs are never extracted: they are referenced as byte
ranges inside the archive and copied straight into the bundle. Every blob is
hashed and checked against its digest; for a docker-archive, which has no
registry manifest, an OCI image manifest is generated (canonical JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import canonical
from bundler.bundle.index import BLOB_PREFIX, ImageEntry, Layer
from bundler.bundle.plan import Payload
from bundler.errors import SourceError
from bundler.hashcache import HashCache, hash_with_cache
from bundler.hashing import Digests, FileRange
from bundler.oci.media import (
    IMAGE_INDEXES,
    IMAGE_MANIFESTS,
    LAYER_TAR,
    OCI_CONFIG,
    OCI_MANIFEST,
    platform_matches,
    platform_of,
    sniff_layer_media_type,
)

MAX_JSON = 16 * 1024 * 1024


@dataclass(frozen=True)
class LocalImage:
    entry: ImageEntry
    payloads: list[Payload]


class _Store:
    """Blobs and files of an archive: a directory or a tar read in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_dir = path.is_dir()
        self._members: dict[str, tarfile.TarInfo] = {}
        if not self.is_dir:
            try:
                with tarfile.open(path, "r:") as tf:
                    for m in tf.getmembers():
                        self._members[m.name.removeprefix("./")] = m
            except (tarfile.TarError, OSError) as e:
                raise SourceError(
                    f"not a readable uncompressed tar: {e}",
                    path=str(path),
                    hint="Give a `docker save` tar, an OCI archive tar, or an OCI layout directory "
                    "(decompress .tar.gz first).",
                ) from e

    def has(self, name: str) -> bool:
        if self.is_dir:
            return (self.path / name).is_file()
        return name in self._members

    def range(self, name: str, hops: int = 0) -> FileRange:
        if self.is_dir:
            p = self.path / name
            if not p.is_file():
                raise SourceError(f"missing file {name}", path=str(self.path))
            return FileRange(p.resolve(), 0, p.stat().st_size)
        m = self._members.get(name)
        if m is None:
            raise SourceError(f"archive has no member {name}", path=str(self.path))
        if m.issym() and hops < 8:
            target = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
            return self.range(target, hops + 1)
        if m.islnk() and hops < 8:
            return self.range(m.linkname.removeprefix("./"), hops + 1)
        if not m.isreg() or m.sparse is not None:
            raise SourceError(f"member {name} is not a regular file", path=str(self.path))
        return FileRange(self.path.resolve(), m.offset_data, m.size)

    def read(self, name: str) -> bytes:
        r = self.range(name)
        if r.size > MAX_JSON:
            raise SourceError(f"{name} is too large for metadata", path=str(self.path))
        with open(r.path, "rb") as f:
            f.seek(r.offset)
            data = f.read(r.size)
        if len(data) != r.size:
            raise SourceError(f"{name} is truncated", path=str(self.path))
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except (ValueError, UnicodeDecodeError) as e:
            raise SourceError(f"{name} is not valid JSON: {e}", path=str(self.path)) from e

    def head(self, r: FileRange, n: int = 4) -> bytes:
        with open(r.path, "rb") as f:
            f.seek(r.offset)
            return f.read(min(n, r.size))


def _blob_name(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64:
        raise SourceError(f"unsupported digest {digest!r} (only sha256)")
    return f"blobs/sha256/{hexd}"


def load_image_archive(
    path: Path,
    *,
    role: str,
    platform: str,
    default_ref: str,
    chunk_size: int,
    cache: HashCache | None = None,
) -> LocalImage:
    """Read a saved image and describe it as verified OCI blobs.

    Raises:
        SourceError: unreadable archive, wrong platform, or a blob that does not
            match its digest.
    """
    if not path.exists():
        raise SourceError(
            "image archive does not exist",
            path=str(path),
            hint="Save it with `docker save IMAGE -o FILE` or `skopeo copy`.",
        )
    store = _Store(path)
    if store.has("manifest.json") and not (
        store.has("index.json") and store.has("oci-layout") and not store.has("repositories")
    ):
        return _from_docker_archive(store, role, platform, default_ref, chunk_size, cache)
    if store.has("index.json") and store.has("oci-layout"):
        return _from_oci_layout(store, role, platform, default_ref, chunk_size, cache)
    raise SourceError(
        "neither a docker-archive (manifest.json) nor an OCI layout (oci-layout, index.json)",
        path=str(path),
        hint="Give a `docker save` tar, an OCI archive tar, or an OCI layout directory.",
    )


def _check_platform(store: _Store, config: dict[str, Any], want: str) -> str:
    have = platform_of(config)
    if not platform_matches(have, want):
        raise SourceError(
            f"image is for {have}, the manifest asks for platform {want}",
            path=str(store.path),
            hint="Save the image for the right platform (docker save --platform / skopeo "
            "--override-arch), or change `platform` in the manifest.",
        )
    return have


def _from_docker_archive(
    store: _Store,
    role: str,
    platform: str,
    default_ref: str,
    chunk_size: int,
    cache: HashCache | None,
) -> LocalImage:
    doc = store.json("manifest.json")
    if not isinstance(doc, list) or len(doc) != 1 or not isinstance(doc[0], dict):
        raise SourceError(
            "docker-archive must hold exactly one image",
            path=str(store.path),
            hint="Save one image per archive: `docker save IMAGE -o FILE`.",
        )
    item = doc[0]
    try:
        config_name = str(item["Config"])
        layer_names = [str(x) for x in item["Layers"]]
    except (KeyError, TypeError) as e:
        raise SourceError(f"manifest.json lacks {e}", path=str(store.path)) from e
    config_bytes = store.read(config_name)
    try:
        config = json.loads(config_bytes)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{config_name} is not an image config: {e}", path=str(store.path)) from e
    if len(diff_ids) != len(layer_names):
        raise SourceError(
            "config lists a different number of layers than manifest.json", path=str(store.path)
        )
    plat = _check_platform(store, config, platform)
    layers: list[tuple[FileRange, str, str | None]] = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        r = store.range(name)
        media_type = sniff_layer_media_type(store.head(r))
        expected = None
        if name.startswith("blobs/sha256/"):
            expected = "sha256:" + name.removeprefix("blobs/sha256/")
        if media_type == LAYER_TAR:
            expected = str(diff_id)  # uncompressed: the blob digest is the diff_id
        layers.append((r, media_type, expected))
    # Hash once here to know the digests the generated manifest needs.
    layer_digests = hash_with_cache([r for r, _, _ in layers], chunk_size, cache)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": mt, "digest": "sha256:" + d.sha256, "size": r.size}
            for (r, mt, _), d in zip(layers, layer_digests, strict=True)
        ],
    }
    tags = [str(t) for t in item.get("RepoTags") or []]
    return _finish_known(
        store,
        role,
        tags[0] if tags else default_ref,
        tags,
        canonical.dumps(manifest),
        OCI_MANIFEST,
        config_bytes,
        layers,
        layer_digests,
        plat,
    )


def _finish_known(
    store: _Store,
    role: str,
    ref: str,
    tags: list[str],
    manifest_bytes: bytes,
    manifest_media_type: str,
    config_bytes: bytes,
    layers: list[tuple[FileRange, str, str | None]],
    layer_digests: list[Digests],
    platform: str,
) -> LocalImage:
    payloads = []
    layer_entries = []
    for (r, media_type, expected), d in zip(layers, layer_digests, strict=True):
        digest = "sha256:" + d.sha256
        if expected is not None and expected != digest:
            raise SourceError(
                f"layer content is {digest}, the image says {expected}",
                path=str(store.path),
                hint="The archive is damaged; save or copy it again.",
            )
        layer_entries.append(Layer(digest=digest, size=r.size, media_type=media_type))
        payloads.append(Payload(BLOB_PREFIX + d.sha256, r, digests=d, origin=str(store.path)))
    blob_digest = {}
    for data in (manifest_bytes, config_bytes):
        sha = hashlib.sha256(data).hexdigest()
        blob_digest[id(data)] = "sha256:" + sha
        payloads.append(Payload(BLOB_PREFIX + sha, data, origin=str(store.path)))
    entry = ImageEntry(
        role=role,
        ref=ref,
        tags=tags,
        platform=platform,
        manifest_digest=blob_digest[id(manifest_bytes)],
        manifest_media_type=manifest_media_type,
        config_digest=blob_digest[id(config_bytes)],
        layers=layer_entries,
    )
    return LocalImage(entry, payloads)


def _from_oci_layout(
    store: _Store,
    role: str,
    platform: str,
    default_ref: str,
    chunk_size: int,
    cache: HashCache | None,
) -> LocalImage:
    index = store.json("index.json")
    candidates: list[tuple[dict[str, Any], str | None]] = []  # descriptor, ref name

    def walk(descs: Any, ref: str | None, depth: int) -> None:
        if not isinstance(descs, list) or depth > 3:
            raise SourceError("index.json: malformed manifests list", path=str(store.path))
        for d in descs:
            if not isinstance(d, dict):
                continue
            name = (d.get("annotations") or {}).get("org.opencontainers.image.ref.name", ref)
            mt = d.get("mediaType")
            if mt in IMAGE_INDEXES:
                child = _verified_json(store, str(d.get("digest")))
                walk(child.get("manifests"), name, depth + 1)
            elif mt in IMAGE_MANIFESTS:
                plat = d.get("platform")
                if isinstance(plat, dict) and not platform_matches(platform_of(plat), platform):
                    continue
                candidates.append((d, name))

    walk(index.get("manifests") if isinstance(index, dict) else None, None, 0)
    matching = []
    for desc, name in candidates:
        manifest_bytes = _verified_blob(store, str(desc["digest"]))
        manifest = json.loads(manifest_bytes)
        config_bytes = _verified_blob(store, str(manifest["config"]["digest"]))
        config = json.loads(config_bytes)
        if platform_matches(platform_of(config), platform):
            matching.append((desc, name, manifest_bytes, manifest, config_bytes, config))
    if len(matching) != 1:
        found = ", ".join(sorted({platform_of(c[5]) for c in matching})) or "none"
        raise SourceError(
            f"expected exactly one image for {platform} in the OCI layout, found "
            f"{len(matching)} (platforms: {found})",
            path=str(store.path),
            hint="Save one image per archive, for the manifest's platform.",
        )
    desc, name, manifest_bytes, manifest, config_bytes, config = matching[0]
    plat = platform_of(config)
    layers: list[tuple[FileRange, str, str | None]] = []
    for la in manifest.get("layers", []):
        r = store.range(_blob_name(str(la["digest"])))
        if r.size != la.get("size"):
            raise SourceError(
                f"layer {la['digest']} is {r.size} bytes, manifest says {la.get('size')}",
                path=str(store.path),
            )
        layers.append((r, str(la["mediaType"]), str(la["digest"])))
    layer_digests = hash_with_cache([r for r, _, _ in layers], chunk_size, cache)
    ref = name if name and ("/" in name or ":" in name) else default_ref
    return _finish_known(
        store,
        role,
        ref,
        [ref] if ref != default_ref else [],
        manifest_bytes,
        str(desc.get("mediaType", OCI_MANIFEST)),
        config_bytes,
        layers,
        layer_digests,
        plat,
    )


def _verified_blob(store: _Store, digest: str) -> bytes:
    data = store.read(_blob_name(digest))
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise SourceError(
            f"blob {digest} does not match its digest",
            path=str(store.path),
            hint="The archive is damaged; save or copy it again.",
        )
    return data


def _verified_json(store: _Store, digest: str) -> Any:
    try:
        return json.loads(_verified_blob(store, digest))
    except ValueError as e:
        raise SourceError(f"blob {digest} is not JSON", path=str(store.path)) from e
