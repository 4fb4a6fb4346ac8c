"""SHA-256 on every core: whole files and fixed-size chunks, from files or a stream.

``hashlib`` releases the GIL for buffers larger than 2 KiB, so plain threads
scale across cores. Two engines:

* :func:`hash_sources` (build side): files are on disk, so every chunk of every
  file is an independent task reading with ``pread``; the whole-file hash of a
  multi-chunk file is one more sequential task running beside them.
* :class:`RangeVerifier` (verify side, bundle files): the reader walks the tar
  headers and hands each chunk over as the file ranges that hold it; every worker
  ``pread``s its chunk into its own small buffer and hashes it. Nothing is mapped,
  so a bundle that shrinks while it is read is a clean error, not a SIGBUS.
* :class:`StreamHasher` (verify side, stdin and sinks that take the bytes): a
  stream can only be read once, in order. The reader hands each block to the
  "lane" that owns its chunk (chunk *k* goes to lane *k mod N*), so chunks are
  hashed in parallel while blocks of one chunk stay in order. Blocks come from a
  fixed pool, which bounds memory and gives back-pressure when hashing is slower
  than reading.

Memory is bounded by bytes in flight, not by the core count: the read buffers of
all workers together stay within :data:`BUFFER_BUDGET` however many cores there are.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BLOCK_SIZE = 8 * 1024 * 1024
# Read buffers of all hashing threads together: the bound on their memory at any core count.
BUFFER_BUDGET = 64 * 1024 * 1024
# One read per MiB keeps the per-call Python cost (a syscall, a GIL hand-over) near 1% of
# the hashing time, and the buffer small enough to stay in the core's L2 cache.
READ_BLOCK = 1024 * 1024
MIN_READ_BLOCK = 64 * 1024


def default_workers() -> int:
    """Threads to hash with: the cores this process may run on (taskset, cgroups)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, BUFFER_BUDGET // MIN_READ_BLOCK))


def read_block(workers: int, chunk_size: int) -> int:
    """Per-thread read buffer size so that ``workers`` buffers fit :data:`BUFFER_BUDGET`."""
    return max(1, min(READ_BLOCK, max(MIN_READ_BLOCK, BUFFER_BUDGET // workers), chunk_size))


@dataclass(frozen=True)
class FileRange:
    """``size`` bytes of a local file starting at ``offset`` (a file, or a member inside a tar)."""

    path: Path
    offset: int
    size: int


@dataclass(frozen=True)
class Digests:
    sha256: str
    chunks: tuple[str, ...]


ProgressFn = Callable[[int], None]


class Cancelled(Exception):
    """Hashing was stopped (``stop`` set) because the work it was for failed elsewhere."""


def _hash_range(
    fd: int, offset: int, size: int, buf: bytearray, stop: threading.Event | None = None
) -> tuple[str, int]:
    h = hashlib.sha256()
    mv = memoryview(buf)
    done = 0
    while done < size:
        if stop is not None and stop.is_set():
            raise Cancelled("hashing stopped")
        want = min(len(buf), size - done)
        n = os.preadv(fd, [mv[:want]], offset + done)
        if n <= 0:
            raise EOFError(f"file ended {size - done} bytes early")
        h.update(mv[:n])
        done += n
    return h.hexdigest(), done


def hash_sources(
    sources: Sequence[FileRange | bytes],
    chunk_size: int,
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> list[Digests]:
    """Whole-file and chunk sha256 of every source, using every core.

    ``bytes`` sources (small generated files) are hashed inline. Setting ``stop``
    ends the work within one read block of every thread.

    Raises:
        OSError: a file cannot be read; EOFError if it is shorter than expected.
        Cancelled: ``stop`` was set before every digest was known.
    """
    workers = workers or default_workers()
    block = read_block(workers, chunk_size)
    local = threading.local()

    def buffer() -> bytearray:
        buf: bytearray | None = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(block)
        return buf

    fds: dict[Path, int] = {}
    results: list[Digests | None] = [None] * len(sources)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
            whole: dict[int, Future[tuple[str, int]]] = {}
            parts: dict[int, list[Future[tuple[str, int]]]] = {}
            # Largest files first so their sequential whole-file hash starts early.
            order = sorted(
                range(len(sources)),
                key=lambda i: -(len(s) if isinstance(s := sources[i], bytes) else s.size),
            )
            for i in order:
                src = sources[i]
                if isinstance(src, bytes):
                    digests = [
                        hashlib.sha256(src[o : o + chunk_size]).hexdigest()
                        for o in range(0, max(1, len(src)), chunk_size)
                    ]
                    results[i] = Digests(hashlib.sha256(src).hexdigest(), tuple(digests))
                    if progress:
                        progress(len(src))
                    continue
                if src.path not in fds:
                    fds[src.path] = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
                fd = fds[src.path]

                def task(off: int, n: int, report: bool, fd: int = fd) -> tuple[str, int]:
                    digest, done = _hash_range(fd, off, n, buffer(), stop)
                    if report and progress:
                        progress(done)
                    return digest, done

                n_chunks = max(1, -(-src.size // chunk_size))
                if n_chunks > 1:
                    whole[i] = pool.submit(task, src.offset, src.size, False)
                parts[i] = [
                    pool.submit(
                        task,
                        src.offset + k * chunk_size,
                        min(chunk_size, src.size - k * chunk_size),
                        True,
                    )
                    for k in range(n_chunks)
                ]
            for i, futs in parts.items():
                chunk_hashes = tuple(f.result()[0] for f in futs)
                sha = whole[i].result()[0] if i in whole else chunk_hashes[0]
                results[i] = Digests(sha, chunk_hashes)
    finally:
        for fd in fds.values():
            os.close(fd)
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class ChunkMismatch:
    """A chunk whose bytes did not hash to the signed value."""

    member: str
    chunk: int
    offset: int  # stream offset of the chunk's first byte
    expected: str
    actual: str


@dataclass(frozen=True)
class ShortRead:
    """A chunk whose bytes were no longer there: the file shrank while it was read."""

    member: str
    chunk: int
    offset: int  # stream offset of the first missing byte


Range = tuple[int, int, int]  # (fd, offset, size): bytes of an open file


class RangeVerifier:
    """Verify chunks of local files, each given as the file ranges that hold it.

    ``submit`` queues a chunk (it blocks while every worker is busy and the short
    queue is full, so memory stays bounded); workers ``pread`` the ranges into
    their own buffer, hash them and compare. ``close()`` waits for them and returns
    the failure at the lowest stream offset (a mismatch or a short read), or None.
    Chunks behind a known failure are skipped, so a damaged bundle fails fast.
    """

    def __init__(
        self,
        chunk_size: int,
        workers: int | None = None,
        progress: ProgressFn | None = None,
        block: int | None = None,
    ) -> None:
        self.workers = workers or default_workers()
        self.block = block or read_block(self.workers, chunk_size)
        self._progress = progress
        self._tasks: queue.SimpleQueue[tuple[tuple[Range, ...], str, str, int, int] | None]
        self._tasks = queue.SimpleQueue()
        self._room = threading.BoundedSemaphore(2 * self.workers)
        self._failures: list[ChunkMismatch | ShortRead] = []
        self._first_bad: int | None = None
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"verify-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()
        self._closed = False

    def submit(
        self, ranges: Sequence[Range], expected: str, *, member: str, chunk: int, offset: int
    ) -> None:
        """Queue one chunk: ``ranges`` hold its bytes, which start at stream ``offset``."""
        self._room.acquire()
        self._tasks.put((tuple(ranges), expected, member, chunk, offset))

    def _fail(self, failure: ChunkMismatch | ShortRead) -> None:
        with self._lock:
            self._failures.append(failure)
            if self._first_bad is None or failure.offset < self._first_bad:
                self._first_bad = failure.offset

    def _run(self) -> None:
        buf = bytearray(self.block)
        mv = memoryview(buf)
        block = self.block
        while (task := self._tasks.get()) is not None:
            ranges, expected, member, chunk, offset = task
            try:
                first_bad = self._first_bad
                if first_bad is not None and offset > first_bad:
                    continue
                h = hashlib.sha256()
                done = 0
                for fd, at, size in ranges:
                    end = at + size
                    while at < end:
                        n = os.preadv(fd, [mv[: min(block, end - at)]], at)
                        if n <= 0:
                            break
                        h.update(mv[:n])
                        at += n
                        done += n
                    if at < end:
                        self._fail(ShortRead(member, chunk, offset + done))
                        break
                else:
                    actual = h.hexdigest()
                    if actual != expected:
                        self._fail(ChunkMismatch(member, chunk, offset, expected, actual))
                if self._progress:
                    self._progress(done)
            except BaseException as e:  # recorded, re-raised by close()
                with self._lock:
                    self._errors.append(e)
            finally:
                self._room.release()

    @property
    def failed(self) -> bool:
        """True as soon as any worker has seen a failure (cheap to poll)."""
        return bool(self._failures or self._errors)

    def close(self) -> ChunkMismatch | ShortRead | None:
        """Wait for every queued chunk; return the earliest failure or None.

        Raises:
            OSError: a worker could not read the file.
        """
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._tasks.put(None)
            for t in self._threads:
                t.join()
        if self._errors:
            raise self._errors[0]
        if self._failures:
            return min(self._failures, key=lambda f: f.offset)
        return None


@dataclass(frozen=True)
class _Update:
    hasher: hashlib._Hash
    data: memoryview
    release: bytearray | None  # pool buffer to return once hashed


class ChunkResult:
    """Set by a lane when a chunk's hash is known: ``wait()`` returns True if it matched."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._ok = False

    def set(self, ok: bool) -> None:
        self._ok = ok
        self._event.set()

    def wait(self) -> bool:
        self._event.wait()
        return self._ok


@dataclass(frozen=True)
class _Finish:
    hasher: hashlib._Hash
    expected: str
    member: str
    chunk: int
    offset: int
    result: ChunkResult


class StreamHasher:
    """Verify chunk hashes of a single sequential stream on every core.

    Usage: ``h.update(chunk_id, view)`` for zero-copy views, or ``buf =
    h.get_buffer()``, fill it, ``h.update(chunk_id, view_of_buf, release=buf)``;
    at a chunk's end ``h.finish_chunk(...)``. ``h.close()`` waits for all lanes and
    returns the first mismatch (lowest offset), or None.
    """

    def __init__(
        self,
        block_size: int,
        chunk_size: int,
        workers: int | None = None,
        buffer_budget: int = 80 * 1024 * 1024,
    ) -> None:
        self.block_size = block_size
        self.lanes = workers or default_workers()
        # Lane k+1 can only start on chunk k+1 once the reader is a whole chunk ahead
        # of lane k, so a lane's queue holds a chunk's worth of blocks. Mapped views
        # cost nothing until hashed; copied blocks come from a pool capped by
        # ``buffer_budget`` (allocated on demand), which bounds memory on stdin.
        blocks_per_chunk = max(1, chunk_size // block_size)
        self._queues: list[queue.Queue[_Update | _Finish | None]] = [
            queue.Queue(maxsize=blocks_per_chunk + 2) for _ in range(self.lanes)
        ]
        self._pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        # Verified delivery holds a whole chunk until its hash is known: the pool must
        # be able to hold one, or the reader could never finish that chunk. Beyond that
        # the budget, not the number of lanes, bounds it.
        self._pool_cap = max(blocks_per_chunk + 2, buffer_budget // block_size)
        self._allocated = 0
        self._hashers: dict[int, hashlib._Hash] = {}
        self._mismatches: list[ChunkMismatch] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"verify-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()
        self._closed = False

    def _run(self, q: queue.Queue[_Update | _Finish | None]) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            try:
                if isinstance(item, _Update):
                    item.hasher.update(item.data)
                    if item.release is not None:
                        self._pool.put(item.release)
                else:
                    actual = item.hasher.hexdigest()
                    item.result.set(actual == item.expected)
                    if actual != item.expected:
                        with self._lock:
                            self._mismatches.append(
                                ChunkMismatch(
                                    item.member, item.chunk, item.offset, item.expected, actual
                                )
                            )
            except BaseException as e:  # pragma: no cover - recorded, re-raised by close()
                if isinstance(item, _Finish):
                    item.result.set(False)
                with self._lock:
                    self._errors.append(e)

    def get_buffer(self) -> bytearray:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            if self._allocated < self._pool_cap:
                self._allocated += 1
                return bytearray(self.block_size)
            return self._pool.get()

    def release(self, buf: bytearray) -> None:
        self._pool.put(buf)

    def update(self, chunk_id: int, data: memoryview, release: bytearray | None = None) -> None:
        """Queue ``data`` for chunk ``chunk_id``; ``release`` goes back to the pool after."""
        hasher = self._hashers.get(chunk_id)
        if hasher is None:
            hasher = self._hashers[chunk_id] = hashlib.sha256()
        self._queues[chunk_id % self.lanes].put(_Update(hasher, data, release))

    def finish_chunk(
        self, chunk_id: int, expected: str, *, member: str, chunk: int, offset: int
    ) -> ChunkResult:
        """Queue the comparison at a chunk's end; the result says whether it matched."""
        hasher = self._hashers.pop(chunk_id, None) or hashlib.sha256()
        result = ChunkResult()
        self._queues[chunk_id % self.lanes].put(
            _Finish(hasher, expected, member, chunk, offset, result)
        )
        return result

    @property
    def failed(self) -> bool:
        """True as soon as any lane has seen a mismatch (cheap to poll)."""
        return bool(self._mismatches or self._errors)

    def close(self) -> ChunkMismatch | None:
        """Wait for every lane; return the earliest mismatch or None."""
        if not self._closed:
            self._closed = True
            for q in self._queues:
                q.put(None)
            for t in self._threads:
                t.join()
        if self._errors:
            raise self._errors[0]
        if self._mismatches:
            return min(self._mismatches, key=lambda m: m.offset)
        return None
