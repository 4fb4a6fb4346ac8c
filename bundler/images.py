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
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import canonical, safejson
from bundler.bundle import tarfmt
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
                        tarfmt.check_size(m.size, "tar header", m.name)
                        self._members[m.name.removeprefix("./")] = m
            except (tarfile.TarError, OSError, ValueError, OverflowError, tarfmt.HeaderError) as e:
                # tarfile accepts a negative or huge size (base-256, pax) and fails later
                where = f"member {e.member}: " if isinstance(e, tarfmt.HeaderError) else ""
                raise SourceError(
                    f"not a readable uncompressed tar: {where}{e}",
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
        return self.parse(name, self.read(name))

    def parse(self, name: str, data: bytes) -> Any:
        """``data`` (the bytes of ``name``) as JSON, within :mod:`bundler.safejson`'s limits."""
        try:
            return safejson.loads(data)
        except safejson.JSONInputError as e:
            raise self.malformed(name, e) from e

    def malformed(self, name: str, e: safejson.JSONInputError) -> SourceError:
        return SourceError(
            f"{name} is not a valid image document: {e}",
            path=str(self.path),
            hint="The archive is damaged or was not written by `docker save`/`skopeo`; save "
            "or copy it again.",
        )

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
        config_name = safejson.field(item, "Config", str, "manifest.json[0]")
        layer_names = [
            safejson.text(x, f"manifest.json[0].Layers[{i}]")
            for i, x in enumerate(safejson.field(item, "Layers", list, "manifest.json[0]"))
        ]
        tags = [
            safejson.text(t, f"manifest.json[0].RepoTags[{i}]")
            for i, t in enumerate(
                safejson.arr(item.get("RepoTags") or [], "manifest.json[0].RepoTags")
            )
        ]
    except safejson.JSONInputError as e:
        raise store.malformed("manifest.json", e) from e
    config_bytes = store.read(config_name)
    config = store.parse(config_name, config_bytes)
    try:
        rootfs = safejson.field(safejson.obj(config, config_name), "rootfs", dict, config_name)
        diff_ids = [
            safejson.text(d, f"{config_name}.rootfs.diff_ids[{i}]")
            for i, d in enumerate(safejson.field(rootfs, "diff_ids", list, f"{config_name}.rootfs"))
        ]
    except safejson.JSONInputError as e:
        raise store.malformed(config_name, e) from e
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
            expected = diff_id  # uncompressed: the blob digest is the diff_id
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

    def walk(descs: Any, ref: str | None, depth: int, where: str) -> None:
        if not isinstance(descs, list) or depth > 3:
            raise SourceError(f"{where}: malformed manifests list", path=str(store.path))
        for d in descs:
            if not isinstance(d, dict):
                continue
            annotations = d.get("annotations")
            name = ref
            if isinstance(annotations, dict):
                named = annotations.get("org.opencontainers.image.ref.name", ref)
                name = named if isinstance(named, str) else ref
            mt = d.get("mediaType")
            if mt in IMAGE_INDEXES:
                digest = safejson.field(d, "digest", str, f"{where}.manifests[]")
                child = _verified_json(store, digest)
                walk(
                    child.get("manifests") if isinstance(child, dict) else None,
                    name,
                    depth + 1,
                    f"blob {digest}",
                )
            elif mt in IMAGE_MANIFESTS:
                plat = d.get("platform")
                if isinstance(plat, dict) and not platform_matches(platform_of(plat), platform):
                    continue
                candidates.append((d, name))

    try:
        walk(index.get("manifests") if isinstance(index, dict) else None, None, 0, "index.json")
        matching = []
        for desc, name in candidates:
            digest = safejson.field(desc, "digest", str, "index.json: a descriptor")
            manifest_bytes = _verified_blob(store, digest)
            manifest = safejson.obj(store.parse(f"blob {digest}", manifest_bytes), digest)
            config_desc = safejson.field(manifest, "config", dict, digest)
            config_digest = safejson.field(config_desc, "digest", str, f"{digest}.config")
            config_bytes = _verified_blob(store, config_digest)
            config = safejson.obj(store.parse(f"blob {config_digest}", config_bytes), config_digest)
            if platform_matches(platform_of(config), platform):
                matching.append((desc, name, manifest_bytes, manifest, config_bytes, config))
    except safejson.JSONInputError as e:
        raise store.malformed("the OCI layout", e) from e
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
    try:
        for i, la in enumerate(safejson.arr(manifest.get("layers", []), "layers")):
            at = f"layers[{i}]"
            la = safejson.obj(la, at)
            digest = safejson.field(la, "digest", str, at)
            size = safejson.count(safejson.field(la, "size", int, at), f"{at}.size")
            media_type = safejson.field(la, "mediaType", str, at)
            r = store.range(_blob_name(digest))
            if r.size != size:
                raise SourceError(
                    f"layer {digest} is {r.size} bytes, manifest says {size}",
                    path=str(store.path),
                )
            layers.append((r, media_type, digest))
    except safejson.JSONInputError as e:
        raise store.malformed(f"image manifest {desc['digest']}", e) from e
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
    return store.parse(f"blob {digest}", _verified_blob(store, digest))
