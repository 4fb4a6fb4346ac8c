"""A response body onto disk and through its digests, at the speed of the link.

The download loop reads the body straight from the connection into reused 1 MiB
buffers (:class:`Body`, no per-block allocation, HTTP chunks coalesced), writes each
buffer to the file and hands it to a two-stage hashing pipeline
(:class:`StreamDigests`): one thread keeps the whole-file sha256 (and the git blob
sha1 where that is the published identity), the next the bundle's chunk digests, and
the second stage gives the buffer back. The stages run beside the reader, so on two
or more cores verification keeps up with the network instead of following it, and
nothing reads the file a second time.

Memory is bounded by bytes, not by the number of downloads: every buffer comes from
one :class:`BufferPool` per downloader (:data:`POOL_BUDGET` in all), and one download
holds at most :data:`PER_DOWNLOAD` of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import queue
import socket
import threading
import time
from pathlib import Path

import requests

from bundler.hashing import Digests

BLOCK = 1024 * 1024
# Buffers of all downloads of one downloader together (any --jobs), and of one download.
POOL_BUDGET = 64 * 1024 * 1024
PER_DOWNLOAD = 16 * 1024 * 1024
# Ask the kernel to write back what has arrived every this many bytes, so the fsync
# before the cache commit has little left to do.
WRITEBACK_EVERY = 64 * 1024 * 1024


# A body must keep up at least this rate, averaged over the read timeout: a server that
# trickles bytes (or sends endless chunk trailers) is cut and the download resumed. 16 KiB/s
# is far below any link worth downloading a model over (1 Mbit/s is 122 KiB/s).
MIN_RATE = 16 * 1024


class BodyError(Exception):
    """The connection failed while the body was read (its cause is the transport error)."""


class BodyDecodeError(BodyError):
    """The server content-encoded the body and it does not decode: no retry will help."""


class BufferPool:
    """Fixed-size buffers, allocated on demand up to ``budget`` bytes, then reused.

    ``get`` blocks while all are in use: they come back once hashed, so a download
    waiting here waits for hashing, never for another download's network.
    """

    def __init__(self, block: int = BLOCK, budget: int = POOL_BUDGET) -> None:
        self.block = block
        self.cap = max(2, budget // block)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.allocated = 0

    def get(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self.allocated < self.cap:
                self.allocated += 1
                return bytearray(self.block)
        return self._free.get()

    def put(self, buf: bytearray) -> None:
        self._free.put(buf)


class Body:
    """``readinto`` for a streamed response's body: straight from the connection.

    A body that is not content-encoded (what downloads ask for) is read with the
    underlying ``http.client`` response's ``readinto``: no copy and no allocation per
    block, chunked transfer coalesced into full buffers. An encoded body goes through
    urllib3, which decodes it. A connection that drops, times out or ends before its
    Content-Length raises :class:`BodyError`; the end of the body reads as 0.
    """

    def __init__(self, r: requests.Response) -> None:
        self._r = r
        fp = getattr(r.raw, "_fp", None)
        encoding = r.headers.get("Content-Encoding", "").strip().lower()
        # asked for identity, the server encoded anyway: decoded bytes cannot be resumed
        # with Range (its offsets count the encoded bytes)
        self.encoded = encoding not in ("", "identity")
        self._raw_fp = fp if isinstance(fp, http.client.HTTPResponse) else None
        self._fp = None if self.encoded else self._raw_fp

    def abort(self) -> None:
        """Cut the connection under a read blocked in another thread (it then fails)."""
        sock = getattr(getattr(getattr(self._raw_fp, "fp", None), "raw", None), "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _read(self, view: memoryview) -> int:
        if self._fp is not None:
            n = self._fp.readinto(view)
            if not n and self._fp.length:  # closed before its Content-Length
                raise http.client.IncompleteRead(b"", self._fp.length)
            return n
        data = self._r.raw.read(len(view), decode_content=True)
        view[: len(data)] = data
        return len(data)

    def readinto(self, buf: bytearray) -> int:
        """Fill ``buf`` (fewer bytes only at the end of the body); 0 at the end."""
        view = memoryview(buf)
        try:
            return self._read(view)
        except http.client.IncompleteRead as e:
            raise BodyError("the connection closed before the end of the body") from e
        except (OSError, http.client.HTTPException, requests.RequestException) as e:
            raise BodyError(f"the connection failed while reading ({_name(e)})") from e
        except Exception as e:  # urllib3's own errors (ProtocolError, DecodeError)
            if type(e).__module__.split(".")[0] != "urllib3":
                raise
            if type(e).__name__ == "DecodeError":
                raise BodyDecodeError(f"its content-encoding does not decode ({_name(e)})") from e
            raise BodyError(f"the connection failed while reading ({_name(e)})") from e


class Watchdog:
    """Cuts a body that is too slow, or a download that was cancelled, from a side thread.

    Every second it checks the bytes :meth:`moved` reported: fewer than ``MIN_RATE`` per
    second over the last ``window`` seconds (a trickle, or bytes that never reach the body
    such as endless chunk trailers) or a set ``cancel`` event aborts the body, so the
    blocked read fails and the download loop retries, resumes or stops.
    """

    def __init__(self, body: Body, window: float, cancel: threading.Event) -> None:
        self._body = body
        self._window = max(1.0, window)
        self._cancel = cancel
        self._moved = 0
        self._done = threading.Event()
        self.fired: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="fetch-watchdog")
        self._thread.start()

    def moved(self, n: int) -> None:
        self._moved += n

    def _run(self) -> None:
        marks: list[tuple[float, int]] = [(time.monotonic(), 0)]
        while not self._done.wait(1.0):
            now = time.monotonic()
            marks.append((now, self._moved))
            while len(marks) > 1 and now - marks[1][0] >= self._window:
                marks.pop(0)
            start, before = marks[0]
            if self._cancel.is_set():
                self.fired = "cancelled"
            elif now - start >= self._window and self._moved - before < MIN_RATE * self._window:
                self.fired = (
                    f"the body came at under {MIN_RATE // 1024} KiB/s for {self._window:g} s"
                )
            if self.fired:
                self._body.abort()
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def _name(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class StreamDigests:
    """sha256, chunk digests (and a git blob id) of bytes as they arrive, on two threads.

    ``update(buf, n)`` takes ownership of a pool buffer holding ``n`` bytes; the
    whole-file stage hashes it and passes it on, the chunk stage hashes it and gives it
    back to the pool. A file of one chunk has its whole-file hash as its one chunk
    digest, so its bytes are hashed once.
    """

    def __init__(
        self,
        chunk_size: int,
        pool: BufferPool,
        git_blob_size: int | None = None,
        size: int | None = None,
    ) -> None:
        self.chunk_size = chunk_size
        self.pool = pool
        self._whole = hashlib.sha256()
        self._sha1 = None
        if git_blob_size is not None:
            self._sha1 = hashlib.sha1(usedforsecurity=False)
            self._sha1.update(b"blob %d\0" % git_blob_size)
        self._one_chunk = size is not None and size <= chunk_size
        self._chunks: list[str] = []
        self._chunk = hashlib.sha256()
        self._fill = 0
        self._total = 0
        self._room = threading.BoundedSemaphore(max(1, min(pool.cap, PER_DOWNLOAD // pool.block)))
        self._whole_q: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._chunk_q: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run_whole, name="sha256-whole", daemon=True),
            threading.Thread(target=self._run_chunks, name="sha256-chunks", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._done = False

    def buffer(self) -> bytearray:
        """A pool buffer to fill (blocks while this download has its share in flight)."""
        self._room.acquire()
        try:
            return self.pool.get()
        except BaseException:
            self._room.release()
            raise

    def _give_back(self, buf: bytearray) -> None:
        self.pool.put(buf)
        self._room.release()

    def _run_whole(self) -> None:
        whole, sha1 = self._whole, self._sha1
        while (item := self._whole_q.get()) is not None:
            buf, n = item
            try:
                view = memoryview(buf)[:n]
                whole.update(view)
                if sha1 is not None:
                    sha1.update(view)
            except BaseException as e:  # pragma: no cover - recorded, re-raised by finish()
                self._errors.append(e)
            self._chunk_q.put(item)
        self._chunk_q.put(None)

    def _run_chunks(self) -> None:
        size = self.chunk_size
        while (item := self._chunk_q.get()) is not None:
            buf, n = item
            try:
                if not self._one_chunk:
                    view = memoryview(buf)[:n]
                    while view:
                        take = min(len(view), size - self._fill)
                        self._chunk.update(view[:take])
                        self._fill += take
                        view = view[take:]
                        if self._fill == size:
                            self._chunks.append(self._chunk.hexdigest())
                            self._chunk, self._fill = hashlib.sha256(), 0
            except BaseException as e:  # pragma: no cover - recorded, re-raised by finish()
                self._errors.append(e)
            finally:
                self._give_back(buf)

    def update(self, buf: bytearray, n: int) -> None:
        """Hash the first ``n`` bytes of ``buf`` (from :meth:`buffer`; ownership passes)."""
        self._total += n
        self._whole_q.put((buf, n))

    def discard(self, buf: bytearray) -> None:
        """Give back a buffer from :meth:`buffer` that holds nothing to hash."""
        self._give_back(buf)

    def seed(self, path: Path) -> None:
        """Hash what an earlier, interrupted run already downloaded."""
        with open(path, "rb", buffering=0) as f:
            while True:
                buf = self.buffer()
                n = f.readinto(buf)
                if not n:
                    self.discard(buf)
                    return
                self.update(buf, n)

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._whole_q.put(None)
            for t in self._threads:
                t.join()

    def finish(self) -> tuple[Digests, str | None]:
        self._stop()
        if self._errors:
            raise self._errors[0]
        whole = self._whole.hexdigest()
        if self._one_chunk and self._total <= self.chunk_size:
            chunks: tuple[str, ...] = (whole,)
        else:
            if self._fill or not self._chunks:
                self._chunks.append(self._chunk.hexdigest())
            chunks = tuple(self._chunks)
        return Digests(whole, chunks), (self._sha1.hexdigest() if self._sha1 else None)

    def abandon(self) -> None:
        self._stop()


class Writeback:
    """Starts the kernel's writeback of a growing file from a side thread, so the fsync
    that makes a cached blob durable finds most of it on disk already."""

    def __init__(self, fd: int, every: int = WRITEBACK_EVERY) -> None:
        self._fd = fd
        self._every = every
        self._since = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        self._since += n
        if self._since < self._every:
            return
        self._since = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:  # the commit's own fsync reports a real failure
                return

    def close(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
