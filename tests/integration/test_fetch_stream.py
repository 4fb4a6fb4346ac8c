"""The download loop against a real HTTP server that frames bodies in every way the
read path distinguishes: Content-Length or chunked (in small chunks, as olah sends
them), content-encoded, too long, closed early, resumed; and several downloads at once
through one downloader (parallel, memory bounded by its buffer pool)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bundler.errors import FetchError
from bundler.fetch.cache import Cache
from bundler.fetch.http import Downloader, Expect
from bundler.fetch.remote import Download, Fetcher, FetchOptions
from bundler.fetch.stream import BLOCK, PER_DOWNLOAD
from bundler.hashing import FileRange, hash_sources

pytestmark = pytest.mark.integration
CHUNK = 256 * 1024


class _Server(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: ClassVar[dict[str, bytes]] = {}
    # per path: "chunked", "gzip", "long" (more bytes than the pin), "short" (closes
    # before its Content-Length), "cut-once" (closes half way, then serves), "slow"
    mode: ClassVar[dict[str, str]] = {}
    log: ClassVar[list[tuple[str, float, float, str]]] = []  # path, start, end, Range

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        start = time.monotonic()
        if self.path not in self.files:
            self.send_error(404)
            return
        data = self.files[self.path]
        mode = self.mode.get(self.path, "")
        rng = self.headers.get("Range", "")
        offset = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[offset:]
        self.send_response(206 if offset else 200)
        if offset:
            self.send_header("Content-Range", f"bytes {offset}-{len(data) - 1}/{len(data)}")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 4096):  # olah's chunk size
                piece = body[i : i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif mode == "trickle":  # a slow-loris: one byte every 0.2 s
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return  # the client cut us off
        elif mode == "trailers":  # the whole body, then chunk trailers that never end
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n" % (len(body), body))
            try:
                for _ in range(100_000):
                    self.wfile.write(b"X-Trailer: " + b"a" * 100 + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
            except OSError:
                return
        elif mode == "gzip":
            packed = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)
        elif mode in ("short", "cut-once"):
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            self.close_connection = True
            if mode == "cut-once":
                self.mode[self.path] = ""
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = 64 * 1024
            for i in range(0, len(body), step):
                self.wfile.write(body[i : i + step])
                if mode == "slow":
                    time.sleep(0.02)
        self.log.append((self.path, start, time.monotonic(), rng))


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Server]]]:
    handler: Any = type("H", (_Server,), {"files": {}, "mode": {}, "log": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def _pin(data: bytes) -> Expect:
    return Expect(size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _chunks_on_disk(path: Path) -> tuple[str, ...]:
    """The chunk digests of a file, computed from its bytes by the build's own hasher."""
    return hash_sources([FileRange(path, 0, path.stat().st_size)], CHUNK)[0].chunks


def _cached_chunks(cache: Cache, path: Path) -> tuple[str, ...] | None:
    got = cache.hashes.get(FileRange(path.resolve(), 0, path.stat().st_size), CHUNK)
    return None if got is None else got.chunks


@pytest.mark.parametrize("mode", ["", "chunked", "gzip"])
def test_every_framing_gives_the_bytes_and_their_chunk_digests(
    tmp_path: Path, server: tuple[str, type[_Server]], mode: str
) -> None:
    url, handler = server
    data = os.urandom(3 * CHUNK + 12345)
    handler.files["/f"] = data
    handler.mode["/f"] = mode
    cache = Cache(tmp_path / "c")
    got = Downloader(cache, CHUNK, backoff=0.01).fetch(url + "/f", _pin(data), key="k", what="f")
    assert got.path.read_bytes() == data
    # the digests kept for the build are those of the bytes on disk
    assert _cached_chunks(cache, got.path) == _chunks_on_disk(got.path)
    assert len(_chunks_on_disk(got.path)) == 4


def test_resumed_download_keeps_the_right_chunk_digests(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """Cut half way, then resumed with Range, in the same run and by the next run: the
    kept bytes are hashed again (by the next run) and the chunk digests span the splice
    correctly."""
    url, handler = server
    data = os.urandom(4 * BLOCK + 777)
    handler.files["/f"] = data
    handler.mode["/f"] = "cut-once"
    cache = Cache(tmp_path / "c")
    got = Downloader(cache, CHUNK, backoff=0.01).fetch(url + "/f", _pin(data), key="k", what="f")
    assert got.path.read_bytes() == data
    ranges = [r for p, _, _, r in handler.log if p == "/f"]
    assert len(ranges) == 2 and ranges[0] == "" and ranges[1].startswith("bytes=")
    assert int(ranges[1].split("=")[1].rstrip("-")) > 0  # resumed, not restarted
    assert _cached_chunks(cache, got.path) == _chunks_on_disk(got.path)

    other = data[::-1]
    handler.files["/g"] = other
    handler.mode["/g"] = "cut-once"
    with pytest.raises(FetchError, match="g: the connection closed before the end of the body"):
        Downloader(cache, CHUNK, retries=0).fetch(url + "/g", _pin(other), key="g", what="g")
    kept = cache.partial("g").stat().st_size
    assert 0 < kept < len(other)
    got = Downloader(cache, CHUNK).fetch(url + "/g", _pin(other), key="g", what="g")
    assert got.downloaded == len(other) - kept and got.path.read_bytes() == other
    assert _cached_chunks(cache, got.path) == _chunks_on_disk(got.path)


def test_more_bytes_than_pinned_are_refused_and_nothing_is_cached(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    url, handler = server
    data = os.urandom(3 * BLOCK)
    handler.files["/f"] = data + b"tail"  # the server sends 4 bytes more than the pin
    cache = Cache(tmp_path / "c")
    with pytest.raises(FetchError, match="server sent more than the 3145728 bytes") as e:
        Downloader(cache, CHUNK, backoff=0.01).fetch(url + "/f", _pin(data), key="k", what="f")
    assert url + "/f" in str(e.value) and e.value.hint
    assert not cache.has(_pin(data).sha256 or "")
    assert list((tmp_path / "c" / "blobs" / "sha256").iterdir()) == []
    assert _partials(tmp_path / "c") == []  # nothing a rerun would resume from


def test_a_body_shorter_than_its_content_length_is_retried_even_unpinned(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """Nothing pins the size (an ELSER metadata file): only the Content-Length tells a
    cut body from a whole one."""
    url, handler = server
    data = os.urandom(2 * BLOCK + 5)
    handler.files["/f"] = data
    handler.mode["/f"] = "cut-once"
    cache = Cache(tmp_path / "c")
    got = Downloader(cache, CHUNK, backoff=0.01).fetch(url + "/f", Expect(), key="k", what="f")
    assert got.path.read_bytes() == data
    assert len([p for p, *_ in handler.log if p == "/f"]) == 2

    handler.mode["/g"], handler.files["/g"] = "short", data  # always cut: give up
    with pytest.raises(FetchError, match="f2: .*after 2 retries"):
        Downloader(cache, CHUNK, retries=2, backoff=0.01).fetch(
            url + "/g", Expect(), key="k2", what="f2"
        )


def test_jobs_download_in_parallel_within_the_buffer_budget(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """One big, slow layer and three small ones with --jobs 4: the small ones are done
    while the big one is still arriving, and all of them together never hold more
    buffers than the downloader's pool."""
    url, handler = server
    files = {"/big": os.urandom(3 * 1024 * 1024)}
    files |= {f"/small{i}": os.urandom(300_000 + i) for i in range(3)}
    handler.files.update(files)
    handler.mode["/big"] = "slow"  # about 1 s
    cache = Cache(tmp_path / "c")
    fetcher = Fetcher(cache, CHUNK, FetchOptions(jobs=4))
    downloads = [
        Download(name, url + name, _pin(data), hashlib.sha256(data).hexdigest())
        for name, data in files.items()
    ]
    assert fetcher.fetch_all(downloads) == sum(map(len, files.values()))
    deadline = time.monotonic() + 10
    while len(handler.log) < len(files) and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler logs after its last write, which the client may beat
    spans = {p: (start, end) for p, start, end, _ in handler.log}
    big_end = spans["/big"][1]
    for i in range(3):
        # queued after the big one, finished before it: they did not wait for it
        assert spans[f"/small{i}"][1] < big_end, spans
    pool = fetcher.downloader.pool
    assert 0 < pool.allocated <= pool.cap and pool.allocated * pool.block <= 4 * PER_DOWNLOAD
    for data in files.values():
        assert cache.blob(hashlib.sha256(data).hexdigest()).read_bytes() == data


def _partials(root: Path) -> list[str]:
    """The partial downloads a rerun would resume from (not the lock files beside them)."""
    where = root / "partial"
    return sorted(p.name for p in where.glob("*.part")) if where.exists() else []


def test_a_trickling_body_is_cut_and_retried_not_waited_for(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """A server that sends a byte every 0.2 s never trips a read timeout; the download
    must still give up (at under 16 KiB/s over the read timeout) instead of hanging."""
    url, handler = server
    data = os.urandom(BLOCK)
    handler.files["/f"], handler.mode["/f"] = data, "trickle"
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"after 1 retries \(the body came at under 16 KiB/s"):
        Downloader(Cache(tmp_path / "c"), CHUNK, retries=1, backoff=0.01, read_timeout=2).fetch(
            url + "/f", _pin(data), key="k", what="f"
        )
    assert time.monotonic() - started < 30  # a byte every 0.2 s: 2.4 days for 1 MiB


def test_endless_chunk_trailers_do_not_hold_the_download(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """The body, then trailer lines that never end: bytes flow, but none are the body's."""
    url, handler = server
    data = os.urandom(BLOCK // 2)
    handler.files["/f"], handler.mode["/f"] = data, "trailers"
    started = time.monotonic()
    got = Downloader(Cache(tmp_path / "c"), CHUNK, backoff=0.01, read_timeout=2).fetch(
        url + "/f", _pin(data), key="k", what="f"
    )
    assert got.path.read_bytes() == data
    assert time.monotonic() - started < 30  # the trailers alone would run for 1000 s


def test_an_unpinned_body_is_bounded_after_decoding(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """A gzip bomb where nothing pins the size (ELSER metadata is fetched to learn the
    pins): refused at the caller's bound on the decoded bytes, nothing left to resume."""
    url, handler = server
    handler.files["/meta"], handler.mode["/meta"] = bytes(8 * BLOCK), "gzip"  # ~8 KiB on the wire
    cache = Cache(tmp_path / "c")
    with pytest.raises(FetchError, match=f"server sent more than {BLOCK} bytes") as e:
        Downloader(cache, CHUNK, backoff=0.01).fetch(
            url + "/meta", Expect(max_size=BLOCK), key="k", what="meta"
        )
    assert e.value.hint
    assert _partials(tmp_path / "c") == []
    assert list((tmp_path / "c" / "blobs" / "sha256").iterdir()) == []
    # the negative control: within the bound it is fetched
    handler.files["/small"], handler.mode["/small"] = bytes(BLOCK // 2), "gzip"
    got = Downloader(cache, CHUNK, backoff=0.01).fetch(
        url + "/small", Expect(max_size=BLOCK), key="k2", what="small"
    )
    assert got.size == BLOCK // 2


def test_a_content_encoded_body_of_the_wrong_size_is_refused_not_resumed(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """A registry blob pinned by its wire bytes (a .tar.gz) that a CDN labels
    Content-Encoding: gzip: decoded it is another size. Refused at once with the cause,
    never resumed with a Range counted in decoded bytes."""
    url, handler = server
    data = os.urandom(3 * BLOCK)
    wire = gzip.compress(data)
    handler.files["/blob"], handler.mode["/blob"] = data, "gzip"  # sends gzip(data) = wire
    with pytest.raises(FetchError, match="content-encoded the body .*decoded it is") as e:
        Downloader(Cache(tmp_path / "c"), CHUNK, backoff=0.01).fetch(
            url + "/blob", _pin(wire), key="k", what="blob"
        )
    assert "identity" in (e.value.hint or "")
    assert [rng for p, *_, rng in handler.log if p == "/blob"] == [""]  # one try, no Range
    assert _partials(tmp_path / "c") == []


def test_one_failed_download_stops_the_others_at_once(
    tmp_path: Path, server: tuple[str, type[_Server]]
) -> None:
    """With --jobs, a 404 (or Ctrl-C) ends the run without waiting for a slow download
    in flight to finish; what it got stays for the next run to resume."""
    url, handler = server
    big = os.urandom(64 * BLOCK)
    handler.files["/big"], handler.mode["/big"] = big, "slow"  # ≈20 s at this pace
    cache = Cache(tmp_path / "c")
    fetcher = Fetcher(cache, CHUNK, FetchOptions(jobs=2))
    downloads = [
        Download("big", url + "/big", _pin(big), hashlib.sha256(big).hexdigest()),
        Download("gone", url + "/missing", Expect(size=5, sha256="0" * 64), "0" * 64),
    ]
    started = time.monotonic()
    with pytest.raises(FetchError, match="404"):
        fetcher.fetch_all(downloads)
    assert time.monotonic() - started < 10
    kept = _partials(tmp_path / "c")
    assert len(kept) == 1 and (tmp_path / "c" / "partial" / kept[0]).stat().st_size < len(big)
    assert not fetcher.downloader.cancel.is_set()  # the next run starts clean
