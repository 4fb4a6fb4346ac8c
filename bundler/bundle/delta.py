"""Delta bundles: carry only what the base release does not give already.

A delta's index lists every file and image of the new release, as any index does, and
adds ``base``: the sha256 of the base's signed index (so the signature covers which
release it builds on), and the payload paths whose bytes it leaves out. A file is left
out when the base gives the same bytes:

* a model or Elastic file, or an image manifest: the base release keeps a file with the
  same sha256 and size (under any path: a renamed file is reused too);
* an image config or layer: the base carries the same blob (same digest). Layers are
  named with their diff_id as well, the digest an engine knows an unpacked layer by.

The build hashes every file first (the hash cache makes that cheap for unchanged
sources), then writes only the carried ones. Install takes the rest from the base and
re-hashes them against this index (:mod:`bundler.install.reuse`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler import safejson
from bundler.boundedio import MAX_INDEX_SIZE, RefusedFile, read_bounded
from bundler.bundle import tarfmt
from bundler.bundle.index import (
    BLOB_PREFIX,
    INDEX_MEMBER,
    SIGNATURE_DIR,
    SUMS_MEMBER,
    BaseRef,
    FileEntry,
    Index,
    parse_index,
    render_sha256sums,
)
from bundler.bundle.parts import BundleLocation
from bundler.bundle.plan import BuildPlan, LateBytes, Payload
from bundler.bundle.signing import SIGNATURE_SIZE
from bundler.errors import SourceError, UsageError
from bundler.hashcache import HashCache
from bundler.hashing import Digests, FileRange, ProgressFn

MAX_CONFIG = 16 * 1024 * 1024  # an image config is read whole to find its diff_ids


@dataclass(frozen=True)
class BaseIndex:
    """The base of a delta: its signed index, as the exact bytes whose sha256 names it."""

    index: Index
    index_bytes: bytes
    label: str  # what was given (for messages)
    signatures: tuple[str, ...] = ()  # key IDs embedded in the base bundle (its layout)
    location: BundleLocation | None = None  # the base bundle, when one was given

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.index_bytes).hexdigest()

    @property
    def release(self) -> str:
        return f"{self.index.name} v{self.index.version}"


def load_base(spec: str) -> BaseIndex:
    """``--base``: the previous bundle (a file, its first part) or its signed index, as
    ``airgap inspect --index OLD > old-index.json`` prints it.

    Raises:
        UsageError: nothing readable at ``spec``.
        BundleError: not an airgap bundle or index (or a newer format).
    """
    from bundler.bundle.reader import read_head

    path = Path(spec)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                first = f.read(1)
            if first == b"{":
                data = read_bounded(path, MAX_INDEX_SIZE, follow_symlinks=True)
                return BaseIndex(parse_index(data, bundle=spec), data, spec)
        except (RefusedFile, OSError) as e:
            raise UsageError(f"{spec}: cannot read the base: {e}") from e
    head = read_head(spec)
    return BaseIndex(
        head.index,
        head.index_bytes,
        head.location.label,
        tuple(k for k, _ in head.embedded),
        head.location,
    )


def kept_as_files(index: Index) -> dict[tuple[str, int], str]:
    """(sha256, size) -> path of each file an installed release of ``index`` keeps on disk:
    everything but image configs and layers (those live in the engine)."""
    manifests = {BLOB_PREFIX + img.manifest_digest.removeprefix("sha256:") for img in index.images}
    out: dict[tuple[str, int], str] = {}
    for f in index.files:
        if not f.path.startswith(BLOB_PREFIX) or f.path in manifests:
            out.setdefault((f.sha256, f.size), f.path)
    return out


def is_engine_blob(index: Index, path: str) -> bool:
    """An image config or layer (kept by the engine, not as a file of the release)."""
    if not path.startswith(BLOB_PREFIX):
        return False
    return all(BLOB_PREFIX + img.manifest_digest[7:] != path for img in index.images)


def _payload_bytes(p: Payload) -> bytes:
    if isinstance(p.source, bytes):
        return p.source
    if not isinstance(p.source, FileRange) or p.size > MAX_CONFIG:
        raise SourceError(f"image config is {p.size} bytes, more than {MAX_CONFIG}", path=p.origin)
    fd = os.open(p.source.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, p.size, p.source.offset)
    finally:
        os.close(fd)


def _diff_ids(p: Payload) -> list[str]:
    where = p.origin or p.path
    try:
        config = safejson.obj(safejson.loads(_payload_bytes(p)), where)
        rootfs = safejson.field(config, "rootfs", dict, where)
        ids = safejson.field(rootfs, "diff_ids", list, f"{where}.rootfs")
        return [safejson.text(d, f"{where}.rootfs.diff_ids[{i}]") for i, d in enumerate(ids)]
    except safejson.JSONInputError as e:
        raise SourceError(f"image config: {e}", path=where) from e


def make_delta(
    plan: BuildPlan,
    base: BaseIndex,
    cache: HashCache | None = None,
    progress: ProgressFn | None = None,
) -> BuildPlan:
    """The plan of a delta against ``base``: every file hashed, only the new ones carried.

    Returns ``plan`` unchanged (a full bundle) when the base gives none of its files.

    Raises:
        SourceError: a source cannot be read or does not match its expected digest.
    """
    from bundler.bundle.entries import _dedupe, compute_entries, stamp

    # a file made at write time (the SBOM) is new by nature: always carried, never hashed here
    late = [p for p in plan.payloads if isinstance(p.source, LateBytes)]
    payloads = _dedupe([p for p in plan.payloads if not isinstance(p.source, LateBytes)])
    stamps = {
        p.source.path: stamp(p.source.path) for p in payloads if isinstance(p.source, FileRange)
    }
    entries = compute_entries(payloads, plan.chunk_size, progress, cache)
    as_files = kept_as_files(base.index)
    blobs = {f.path for f in base.index.files if is_engine_blob(base.index, f.path)}
    new_blobs = {
        BLOB_PREFIX + d.removeprefix("sha256:")
        for img in plan.images
        for d in (img.config_digest, *(la.digest for la in img.layers))
    }
    carried: list[Payload] = []
    reused: list[FileEntry] = []
    for p, e in zip(payloads, entries, strict=True):
        hit = e.path in blobs if e.path in new_blobs else (e.sha256, e.size) in as_files
        if hit:
            reused.append(e)
        else:
            carried.append(dataclasses.replace(p, digests=Digests(e.sha256, tuple(e.chunks))))
    if not reused:
        return plan
    carried += late
    reused_paths = {e.path for e in reused}
    by_path = {p.path: p for p in payloads}
    layers: dict[str, str] = {}
    for img in plan.images:
        todo = [la for la in img.layers if BLOB_PREFIX + la.digest[7:] in reused_paths]
        if todo:
            ids = _diff_ids(by_path[BLOB_PREFIX + img.config_digest[7:]])
            for i, la in enumerate(img.layers):
                if la in todo and i < len(ids):
                    layers[la.digest] = ids[i]
    ref = BaseRef(
        index_sha256=base.sha256,
        name=base.index.name,
        version=base.index.version,
        reused=sorted(reused_paths),
        layers=dict(sorted(layers.items())) or None,
    )
    return dataclasses.replace(plan, payloads=carried, reused=reused, base=ref, stamps=stamps)


@dataclass(frozen=True)
class DeltaPreview:
    """``build --dry-run --base``: what a delta would carry and what it would reuse."""

    base: BaseIndex
    carried: list[tuple[str, int]]
    reused: list[tuple[str, int]]

    @property
    def carried_bytes(self) -> int:
        return sum(n for _, n in self.carried)

    @property
    def reused_bytes(self) -> int:
        return sum(n for _, n in self.reused)

    def to_json(self) -> dict[str, object]:
        return {
            "base": {
                "index_sha256": self.base.sha256,
                "name": self.base.index.name,
                "version": self.base.index.version,
            },
            "carried": [{"path": p, "bytes": n} for p, n in self.carried],
            "reused": [{"path": p, "bytes": n} for p, n in self.reused],
            "carried_bytes": self.carried_bytes,
            "reused_bytes": self.reused_bytes,
        }


def preview(plan: BuildPlan, base: BaseIndex) -> DeltaPreview:
    """What ``plan`` (after :func:`make_delta`) carries and reuses, with sizes."""
    carried = sorted((p.path, p.size) for p in plan.payloads)
    return DeltaPreview(base, carried, sorted((f.path, f.size) for f in plan.reused))


# -- reading the base bundle (install, --base-bundle) ------------------------------------


def member_offsets(base: BaseIndex) -> dict[str, int]:
    """Where each carried file's bytes start in the base bundle's tar stream.

    The layout is the writer's (deterministic): index, signatures, SHA256SUMS, then
    each carried file in index order. Bytes read at these offsets are still hashed
    against the signed entries before use: a wrong offset reads as damage.
    """
    index = base.index
    mtime = int(index.created_at.timestamp())
    pos = 0

    def member(path: str, size: int) -> int:
        nonlocal pos
        pos += len(tarfmt.member_header(path, size, mtime))
        start = pos
        pos += size + tarfmt.padding(size)
        return start

    member(INDEX_MEMBER, len(base.index_bytes))
    for keyid in base.signatures:
        member(f"{SIGNATURE_DIR}{keyid}.sig", SIGNATURE_SIZE)
    member(SUMS_MEMBER, len(render_sha256sums(index.carried)))
    return {f.path: member(f.path, f.size) for f in index.carried}


def read_span(loc: BundleLocation, offset: int, size: int, block: int) -> Iterator[bytes]:
    """``size`` bytes of the bundle's tar stream from ``offset``, across split parts.

    Raises:
        EOFError: the bundle ends first.
        OSError: a part cannot be read.
    """
    parts: Sequence[tuple[Path, int, int]] = [(p.path, p.start, p.size) for p in loc.parts]
    fds: dict[Path, int] = {}
    try:
        while size > 0:
            part = next(((p, s, n) for p, s, n in parts if s <= offset < s + n), None)
            if part is None:
                raise EOFError(f"{loc.label} ends before byte {offset}")
            path, start, n = part
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            want = min(block, size, start + n - offset)
            data = os.pread(fds[path], want, offset - start)
            if not data:
                raise EOFError(f"{path} ends before byte {offset - start}")
            yield data
            offset += len(data)
            size -= len(data)
    finally:
        for fd in fds.values():
            os.close(fd)
