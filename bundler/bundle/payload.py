"""The payload of a bundle file, verified on every core.

When nothing takes the bytes (``verify``) and the bundle is a file, its layout is
known from the signed index: the reader walks the tar headers in order (each must
be exactly the canonical one) and only steps over the data, handing each chunk to
a :class:`~bundler.hashing.RangeVerifier` worker as the file ranges that hold it.
Each worker ``pread``s into its own small buffer, so reading scales with the cores
like hashing does, memory stays bounded, and a bundle that shrinks while it is read
fails with a clean error instead of a SIGBUS on a mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bundler.bundle import tarfmt
from bundler.bundle.index import FileEntry, Index
from bundler.bundle.parts import BundleLocation, damaged_parts
from bundler.errors import BundleError
from bundler.hashing import ChunkMismatch, RangeVerifier, ShortRead

if TYPE_CHECKING:
    from bundler.bundle.reader import _Reader


def expect_member(
    r: _Reader, entry: FileEntry, mtime: int, listed: set[str], seen: set[str]
) -> None:
    """The next header must be exactly the canonical one for ``entry``."""
    at = r.stream.pos
    h = r.check_member(r.read_header(entry.path), entry.path, entry.size, listed, seen, at)
    if h.raw != tarfmt.member_header(entry.path, entry.size, mtime):
        raise r.error("tar header differs from the canonical one", member=entry.path, at=at)
    seen.add(entry.path)


def verify_ranges(
    r: _Reader,
    index: Index,
    mtime: int,
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> ChunkMismatch | ShortRead | None:
    """Check every payload header and hash every chunk in parallel, straight from the file."""
    chunk_size = index.chunk_size
    listed = {f.path for f in index.carried}  # a delta: what its base does not give
    seen: set[str] = set()
    verifier = RangeVerifier(chunk_size, workers, progress)
    error: BundleError | None = None
    try:
        for entry in index.carried:
            expect_member(r, entry, mtime, listed, seen)
            data_start = r.stream.pos
            for k, expected in enumerate(entry.chunks):
                chunk_start = r.stream.pos
                n = min(chunk_size, entry.size - k * chunk_size)
                ranges = r.stream.skip(n)
                got = sum(size for _, _, size in ranges)
                if got != n:
                    missing = entry.size - (r.stream.pos - data_start)
                    raise r.error(
                        f"bundle ends early inside this member: truncated, {missing} bytes missing",
                        member=entry.path,
                        hint="Copy the bundle (or its last part) again; it is incomplete.",
                    )
                verifier.submit(ranges, expected, member=entry.path, chunk=k, offset=chunk_start)
                if verifier.failed:
                    break
            if verifier.failed:
                break
            r.expect_zeros(tarfmt.padding(entry.size), entry.path)
    except BundleError as e:
        error = e
    finally:
        failure = verifier.close()
    # Every chunk handed to the workers lies before the reader's position, so a chunk
    # that failed is an earlier fault than anything the reader found after it.
    if failure is None and error is not None:
        raise error
    return failure


def payload_error(r: _Reader, index: Index, failure: ChunkMismatch | ShortRead) -> BundleError:
    """The error for the earliest failed chunk, naming member, chunk, part and offset."""
    chunk_size = index.chunk_size
    file_size = next(f.size for f in index.files if f.path == failure.member)
    size = min(chunk_size, file_size - failure.chunk * chunk_size)
    start = failure.chunk * chunk_size
    if isinstance(failure, ShortRead):
        return r.error(
            f"bundle file was truncated or changed while reading chunk {failure.chunk} "
            f"(bytes {start}..{start + size} of the file)",
            member=failure.member,
            at=failure.offset,
            hint="Something shrank the bundle during the check; keep it unchanged and "
            "run the command again (copy it again if it stays short).",
        )
    message = (
        f"content differs from the signed hash in chunk {failure.chunk} "
        f"(bytes {start}..{start + size} of the file)"
    )
    damaged = _damaged_parts(r.loc, failure.offset, size)
    if damaged:
        return BundleError(
            message,
            bundle=r.label,
            member=failure.member,
            part=", ".join(damaged),
            hint=f"Copy {', '.join(damaged)} again; the parts list has every part's sha256.",
        )
    return r.error(message, member=failure.member, at=failure.offset)


def _damaged_parts(loc: BundleLocation, offset: int, size: int) -> list[str]:
    """When a chunk spans parts, hash those parts against the signed parts list."""
    spanned = [p for p in loc.parts if p.start < offset + size and offset < p.start + p.size]
    if len(spanned) < 2 or any(p.sha256 is None for p in spanned):
        return []
    return damaged_parts(spanned)
