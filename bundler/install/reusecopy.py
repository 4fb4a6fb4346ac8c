"""Put a delta's reused bytes in place, once the preflight passed: files into the staging
release (hardlinked from the installed base, or copied), image blobs from the base
bundle into the image feed. Nothing unverified is used: a hardlink is made only to the
very file the preflight hashed (same device, inode, size and mtime), a copy is hashed
chunk by chunk against the delta's signed entry as it is written, and a blob chunk is
handed to the engine only after it matched.

A failure raises; the reader then aborts the sink, which removes the staging release
and whatever the image feed started.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bundler.bundle.delta import read_span
from bundler.bundle.index import BLOB_PREFIX, FileEntry
from bundler.errors import VerificationError
from bundler.hashing import BLOCK_SIZE, default_workers
from bundler.install.feeds import ArchiveFeed, RegistryFeed
from bundler.install.reuse import Reuse, Source

# A hardlink that cannot be made falls back to a copy (another filesystem after all,
# link count at its limit, links refused by the filesystem or by protected_hardlinks).
_NO_LINK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP, errno.EACCES)


def verified(
    blocks: Iterator[bytes],
    entry: FileEntry,
    chunk_size: int,
    fail: Callable[[str], VerificationError],
    *,
    hold: bool,
) -> Iterator[memoryview]:
    """The bytes of ``blocks`` as pieces, each chunk checked against ``entry.chunks``.

    ``hold``: a chunk's pieces are given only after the chunk matched (memory: one
    chunk); else they are given as they come and a mismatch raises at the chunk's end.

    Raises:
        VerificationError: (from ``fail``) a chunk differs, or the bytes end early or late.
    """
    k = done = 0
    h = hashlib.sha256()
    left = min(chunk_size, entry.size)
    held: list[memoryview] = []
    for data in blocks:
        view = memoryview(data)
        while view:
            if left == 0:
                raise fail(f"more than the signed {entry.size} bytes")
            piece = view[: min(left, len(view))]
            h.update(piece)
            if hold:
                held.append(piece)
            else:
                yield piece
            view = view[len(piece) :]
            left -= len(piece)
            done += len(piece)
            if left == 0:
                if h.hexdigest() != entry.chunks[k]:
                    start = k * chunk_size
                    raise fail(f"chunk {k} (bytes {start}..{done}) differs from the signed hash")
                yield from held
                held = []
                k += 1
                h = hashlib.sha256()
                left = min(chunk_size, entry.size - done)
    if done != entry.size:
        raise fail(f"ends after {done} of the signed {entry.size} bytes")
    if entry.size == 0 and h.hexdigest() != entry.chunks[0]:
        raise fail("differs from the signed hash")


def _file_blocks(path: Path, block: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while data := os.read(fd, block):
            yield data
    finally:
        os.close(fd)


def _failure(reuse: Reuse, s: Source) -> Callable[[str], VerificationError]:
    where = f"{s.path}" if s.path is not None else f"{reuse.base.label} ({s.entry.path})"

    def fail(why: str) -> VerificationError:
        return VerificationError(
            f"{where}: {why}; this base is damaged (the new release was not switched in)",
            hint=f"Give an intact copy of {reuse.base.release}'s bundle with --base-bundle, "
            "or install the full bundle.",
        )

    return fail


def _blocks(reuse: Reuse, s: Source, block: int) -> Iterator[bytes]:
    if s.path is not None:
        return _file_blocks(s.path, block)
    assert reuse.base.location is not None and s.offset is not None
    return read_span(reuse.base.location, s.offset, s.entry.size, block)


def _put(reuse: Reuse, s: Source, staging: Path, chunk_size: int) -> None:
    dst = staging / s.entry.path
    dst.parent.mkdir(parents=True, exist_ok=True)
    if s.path is not None and reuse.link:
        st = os.lstat(s.path)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != reuse.checked.get(s.path):
            raise _failure(reuse, s)("changed after the preflight hashed it")
        try:
            os.link(s.path, dst, follow_symlinks=False)
            return
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
    block = min(BLOCK_SIZE, chunk_size)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dst, flags, 0o644)
    try:
        fail = _failure(reuse, s)
        for piece in verified(_blocks(reuse, s, block), s.entry, chunk_size, fail, hold=False):
            while piece:
                piece = piece[os.write(fd, piece) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def put_files(reuse: Reuse, staging: Path, chunk_size: int) -> None:
    """Every reused file into the staging release (all cores for copies).

    Raises:
        VerificationError: a file differs from its signed entry, or changed since checked.
        OSError: it cannot be linked, read or written.
    """
    if not reuse.files:
        return
    with ThreadPoolExecutor(min(default_workers(), len(reuse.files))) as pool:
        for f in [pool.submit(_put, reuse, s, staging, chunk_size) for s in reuse.files]:
            f.result()


def feed_blobs(reuse: Reuse, feed: ArchiveFeed | RegistryFeed, chunk_size: int) -> None:
    """Tell the feed which blobs its target holds, then stream the base bundle's blobs.

    Raises:
        VerificationError: a blob differs from its signed entry (nothing of that chunk
            was handed on).
    """
    for digest, repository in reuse.held.items():
        if feed.wants(digest):
            feed.held(digest, repository)
    block = min(BLOCK_SIZE, chunk_size)
    for s in reuse.blobs:
        digest = "sha256:" + s.entry.path[len(BLOB_PREFIX) :]
        if not feed.wants(digest):
            continue
        feed.open_blob(digest, s.entry.size)
        fail = _failure(reuse, s)
        for piece in verified(_blocks(reuse, s, block), s.entry, chunk_size, fail, hold=True):
            feed.write(piece)
        feed.close_blob(s.entry.size)
