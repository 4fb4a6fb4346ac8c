"""Getting the SBOM member out of a bundle: kept during a verifying pass (``airgap sbom``),
or read unverified at its computed offset (``airgap inspect``, which verifies nothing)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from bundler.bundle import tarfmt
from bundler.bundle.index import (
    INDEX_MEMBER,
    SIGNATURE_DIR,
    SUMS_MEMBER,
    FileEntry,
    Index,
    render_sha256sums,
)
from bundler.bundle.parts import BundleLocation
from bundler.bundle.reader import BundleHead
from bundler.errors import BundleError
from bundler.sbom.generate import sbom_reference
from bundler.sbom.model import SBOM_PATH, SbomSummary, summarize

MAX_SBOM = 256 * 1024 * 1024  # far above any real one: a few MB for the largest images


class SbomCapture:
    """A :class:`~bundler.bundle.policy.Sink` that keeps the SBOM member and drops the rest.

    The bytes are usable only after the pass ended without an error (``commit``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._buf: bytearray | None = None
        self._keep = False
        self.data: bytes | None = None

    def verified_only(self, entry: FileEntry) -> bool:
        return False

    def begin(
        self, index: Index, index_bytes: bytes, signatures: list[tuple[str, bytes]], sums: bytes
    ) -> None:
        self._buf = bytearray()

    def open_member(self, entry: FileEntry) -> None:
        self._keep = entry.path == self.path and entry.size <= MAX_SBOM

    def write(self, data: memoryview) -> None:
        if self._keep and self._buf is not None:
            self._buf += data

    def close_member(self, entry: FileEntry) -> None:
        self._keep = False

    def commit(self) -> None:
        self.data = bytes(self._buf) if self._buf else None

    def abort(self) -> None:
        self._buf = None


def _offset(index: Index, index_bytes: bytes, signatures: int, path: str) -> int:
    """Where ``path``'s bytes start in the tar stream (the writer's layout is exact)."""
    mtime = int(index.created_at.timestamp())

    def span(name: str, size: int) -> int:
        return len(tarfmt.member_header(name, size, mtime)) + size + tarfmt.padding(size)

    pos = span(INDEX_MEMBER, len(index_bytes))
    pos += signatures * span(f"{SIGNATURE_DIR}{'0' * 64}.sig", 64)
    pos += span(SUMS_MEMBER, len(render_sha256sums(index.files)))
    for f in index.files:
        if f.path == path:
            return pos + len(tarfmt.member_header(f.path, f.size, mtime))
        pos += span(f.path, f.size)
    raise KeyError(path)


def read_unverified(
    loc: BundleLocation, index: Index, index_bytes: bytes, signatures: int
) -> bytes | None:
    """The SBOM member's bytes, read at its offset without verifying the bundle.

    None when the bundle has no SBOM, comes from stdin, or the bytes there do not
    match the (unverified) index's sha256 (damaged: ``airgap verify`` says where).
    """
    ref = sbom_reference(index)
    if ref is None or not loc.parts:
        return None
    entry = next(f for f in index.files if f.path == ref[0])
    if entry.size > MAX_SBOM:
        return None
    start = _offset(index, index_bytes, signatures, ref[0])
    out = bytearray()
    for part in loc.parts:
        lo, hi = max(start, part.start), min(start + entry.size, part.start + part.size)
        if lo >= hi:
            continue
        try:
            fd = os.open(part.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            out += os.pread(fd, hi - lo, lo - part.start)
        finally:
            os.close(fd)
    data = bytes(out)
    return data if hashlib.sha256(data).hexdigest() == ref[1] else None


def parse_sbom(data: bytes, bundle: str) -> dict[str, Any]:
    """The signed CycloneDX document as JSON.

    Raises:
        BundleError: it is not a JSON object (a signed member can only be so if the
            signer wrote it that way).
    """
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise BundleError(f"SBOM is not JSON: {e}", bundle=bundle, member=SBOM_PATH) from e
    if not isinstance(doc, dict):
        raise BundleError("SBOM is not a JSON object", bundle=bundle, member=SBOM_PATH)
    return doc


def sbom_summary(head: BundleHead) -> SbomSummary | None:
    """``inspect``'s view of the SBOM (unverified, as everything ``inspect`` shows)."""
    data = read_unverified(head.location, head.index, head.index_bytes, len(head.embedded))
    if data is None:
        return None
    try:
        return summarize(parse_sbom(data, head.location.label))
    except BundleError:
        return None
