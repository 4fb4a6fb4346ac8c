"""Write a bundle to a stream (``airgap build -o -``): hash everything first, then send.

A pipe cannot be patched afterwards, so the head (index, signatures, SHA256SUMS) can only
go out once every source is hashed: all cores hash first (the hash cache makes a second
build of the same sources skip that), then the head and the payload are sent in order,
the payload by ``sendfile`` (in the kernel, no copy through this process). The bytes are
those :func:`bundler.bundle.writer.write_bundle` writes to a file from the same plan.

Each source's stamp (size, mtime) is taken before hashing and compared again just
before and just after it is sent. A source that changed in between ends the stream
with an error and without the end-of-archive blocks, so the reader on the other side
(``airgap verify -``) refuses it as incomplete; a change that keeps size and mtime is
caught there by the chunk hashes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import select
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from bundler.bundle import tarfmt
from bundler.bundle.entries import _dedupe, compute_entries, stamp
from bundler.bundle.index import FileEntry, render_sha256sums
from bundler.bundle.plan import BuildPlan, BuildResult, LateBytes, Payload
from bundler.bundle.signing import SigningKey
from bundler.bundle.writer import _head, build_index, head_size_of
from bundler.errors import AirgapError, SourceError, UsageError
from bundler.fsutil import send_range, write_all
from bundler.hashcache import HashCache

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]

STDOUT_NAME = "-"


class StreamClosedError(AirgapError):
    """The program reading the bundle from our standard output went away."""


def _closed(total: int, why: str) -> StreamClosedError:
    when = f"after {total} bytes" if total else "before the first byte"
    return StreamClosedError(
        f"standard output was closed by the program reading the bundle {when} ({why})",
        hint="The reading side stopped (its own error says why); the stream is "
        "incomplete and every reader refuses it. Run the pipeline again.",
    )


def reader_gone(fd: int) -> bool:
    """Whether the reading end of the pipe ``fd`` is closed (always False for a file)."""
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in p.poll(0))


class _Sink:
    """Writes to ``fd`` (blocking or not), counting every byte that left; a reader that
    went away, or a full disk behind a redirect, is one clear error."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.total = 0

    def _sent(self, n: int) -> None:
        self.total += n

    def _error(self, e: OSError) -> Exception:
        if e.errno in (errno.EPIPE, errno.ECONNRESET):
            return _closed(self.total, e.strerror or "broken pipe")
        return OSError(e.errno, e.strerror, "standard output")  # name what is full

    def write(self, data: bytes) -> None:
        try:
            write_all(self.fd, data, self._sent)
        except OSError as e:
            raise self._error(e) from e

    def send(self, src_fd: int, offset: int, count: int) -> None:
        try:
            send_range(src_fd, offset, self.fd, count, self._sent)
        except OSError as e:
            raise self._error(e) from e


def _hash_watching(
    payloads: Sequence[Payload],
    chunk_size: int,
    fd: int,
    progress: ProgressFn | None,
    cache: HashCache | None,
) -> list[FileEntry]:
    """Hash on every core, watching the reader meanwhile: a reader that went away, or
    Ctrl-C, stops every hashing thread within one read block (not after the last byte).

    Raises:
        StreamClosedError: the reading side closed the pipe while we hashed.
        SourceError: as :func:`compute_entries`.
    """
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-all")
    future = pool.submit(compute_entries, payloads, chunk_size, progress, cache, stop)
    try:
        while True:
            try:
                return future.result(timeout=0.5)
            except FutureTimeout:
                if reader_gone(fd):
                    raise _closed(0, "while every source was being hashed") from None
    finally:
        if not future.done():
            stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _changed(path: Path) -> SourceError:
    return SourceError(
        "changed while the bundle was being streamed; the stream ends without its "
        "end-of-archive, so every reader refuses it",
        path=str(path),
        hint="Do not modify sources during `airgap build`; run it again.",
    )


def stream_bundle(
    plan: BuildPlan,
    fd: int,
    keys: Sequence[SigningKey],
    *,
    progress: ProgressFn | None = None,
    hash_progress: ProgressFn | None = None,
    hash_cache: HashCache | None = None,
) -> BuildResult:
    """Hash every source (all cores), sign, then write the bundle to ``fd`` (a pipe).

    Memory stays bounded: hashing shares the hashers' buffer budget, the payload goes
    from file to ``fd`` in the kernel, and only the head (index, signatures, sums) and
    the small generated members are held.

    Raises:
        UsageError: no signing key, or an index larger than readers accept.
        SourceError: a source is unreadable, mismatched, or changed before or while it
            was sent (the stream then has no end-of-archive).
        StreamClosedError: the reading side closed the pipe.
    """
    if not keys:
        raise UsageError("at least one --key is needed to sign the bundle")
    payloads = _dedupe(plan.payloads)
    keys = list({k.keyid: k for k in keys}.values())
    mtime = int(plan.created.timestamp())
    before = plan.stamps or {
        p.source.path: stamp(p.source.path)
        for p in payloads
        if not isinstance(p.source, (bytes, LateBytes))
    }
    head_size_of(plan, payloads, [k.keyid for k in keys])  # limits, before any hashing
    early = [p for p in payloads if not isinstance(p.source, LateBytes)]
    entries = _hash_watching(early, plan.chunk_size, fd, hash_progress, hash_cache)
    done = sorted([*entries, *plan.reused], key=lambda e: e.path)
    rendered: dict[str, bytes] = {}
    for p in payloads:
        if isinstance(p.source, LateBytes):
            rendered[p.path] = p.source.rendered(p.path, done)
            entries += compute_entries([Payload(p.path, rendered[p.path])], plan.chunk_size)
    entries.sort(key=lambda e: e.path)
    for path, was in before.items():
        if stamp(path) != was:
            raise _changed(path)  # nothing written yet
    index = build_index(plan, entries)
    index_bytes = index.to_bytes()
    signatures = sorted((k.keyid, k.sign(index_bytes)) for k in keys)
    out = _Sink(fd)
    logger.info("streaming %s v%s: %d files", plan.name, plan.version, len(payloads))
    out.write(_head(index_bytes, signatures, render_sha256sums(entries), mtime))
    for p in payloads:
        out.write(tarfmt.member_header(p.path, p.size, mtime))
        if isinstance(p.source, bytes):
            out.write(p.source)
        elif isinstance(p.source, LateBytes):
            out.write(rendered[p.path])
        else:
            src = p.source
            src_fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(src_fd)
                if (st.st_size, st.st_mtime_ns) != before[src.path]:
                    raise _changed(src.path)
                try:
                    out.send(src_fd, src.offset, src.size)
                except EOFError as e:
                    raise _changed(src.path) from e
            finally:
                os.close(src_fd)
            if stamp(src.path) != before[src.path]:
                raise _changed(src.path)
        out.write(b"\0" * tarfmt.padding(p.size))
        if progress:
            progress(p.size)
    out.write(tarfmt.END_OF_ARCHIVE)
    return BuildResult(
        index=index,
        index_sha256=hashlib.sha256(index_bytes).hexdigest(),
        outputs=(Path(STDOUT_NAME),),
        size=out.total,
        signers=tuple(k for k, _ in signatures),
    )
