"""Resumable, verified downloads into the cache.

A download streams into ``partial/<key>.part``; an interrupted one resumes with an
HTTP ``Range`` request (a server that ignores Range makes it start over). The bytes
are hashed as they arrive, beside the download (sha256 and the bundle's chunk
digests, plus a git blob id where that is the published identity; see
:mod:`bundler.fetch.stream`), checked when complete, and only then renamed into
``blobs/``. Bytes that do not match are deleted, never cached. 5xx answers and
dropped connections are retried with backoff; 401/403/404 are not (they will not get
better).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from bundler import env, faults, net
from bundler.errors import FetchError
from bundler.fetch.cache import Cache
from bundler.fetch.stream import (
    Body,
    BodyDecodeError,
    BodyError,
    BufferPool,
    StreamDigests,
    Watchdog,
    Writeback,
)
from bundler.fsutil import naming
from bundler.hashing import Digests

logger = logging.getLogger(__name__)
STREAM_BLOCK = 1024 * 1024


# The most an unpinned download may be (callers set tighter bounds where they know them).
UNPINNED_MAX = 4 * 1024 * 1024 * 1024


class FetchCancelled(Exception):
    """Another download failed, or the user interrupted: this one stopped (partial kept)."""


@dataclass(frozen=True)
class Expect:
    """What the downloaded bytes must be: any of size, sha256, git blob id."""

    size: int | None = None
    sha256: str | None = None
    git_blob: str | None = None
    # Without a size pin, refuse a body larger than this (trust-on-first-use metadata).
    max_size: int = UNPINNED_MAX


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    downloaded: int  # bytes that came over the network in this run


def git_blob_id(path: Path) -> str:
    """The git object id of a file (sha1 of ``blob <size>\\0`` + content)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(STREAM_BLOCK * 8):
            h.update(block)
    return h.hexdigest()


class Downloader:
    def __init__(
        self,
        cache: Cache,
        chunk_size: int,
        session: requests.Session | None = None,
        *,
        retries: int = 6,
        backoff: float = 0.5,
        read_timeout: float = 120,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.cache = cache
        self.chunk_size = chunk_size
        self.session = session or requests.Session()
        self.retries = retries
        self.backoff = backoff
        self.read_timeout = read_timeout
        self.progress = progress
        self.pool = BufferPool()  # shared by every download, however many run at once
        self.cancel = threading.Event()  # set: every download stops at once (partials kept)

    def cached(self, expect: Expect) -> Path | None:
        if expect.sha256 and self.cache.has(expect.sha256, expect.size):
            return self.cache.blob(expect.sha256)
        if expect.git_blob and (sha := self.cache.alias("gitblob", expect.git_blob)):
            return self.cache.blob(sha)
        return None

    def fetch(
        self,
        url: str,
        expect: Expect,
        *,
        key: str,
        what: str,
        headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
        verify: str | bool = True,
    ) -> Fetched:
        """Download ``url`` into the cache (or find it there) and verify it.

        Raises:
            FetchError: HTTP error, too many retries, or bytes that do not match.
        """
        hit = self.cached(expect)
        if hit is not None:
            return Fetched(hit, hit.name, hit.stat().st_size, 0)
        with self.cache.locked(key):
            hit = self.cached(expect)  # another build may have fetched it meanwhile
            if hit is not None:
                return Fetched(hit, hit.name, hit.stat().st_size, 0)
            partial = self.cache.partial(key)
            downloaded, digests, sha1 = self._download(
                url, partial, expect, what, headers or {}, session or self.session, verify
            )
            return self._verify_and_commit(partial, expect, url, what, downloaded, digests, sha1)

    def _download(
        self,
        url: str,
        partial: Path,
        expect: Expect,
        what: str,
        headers: dict[str, str],
        session: requests.Session,
        verify: str | bool = True,
    ) -> tuple[int, Digests, str | None]:
        """Stream into ``partial`` (resuming), hashing as bytes arrive."""
        downloaded = 0
        attempt = 0
        timeout = min(env.net_timeout(), self.read_timeout)  # AIRGAP_FETCH_TIMEOUT may be shorter
        digests: StreamDigests | None = None
        git_size = expect.size if expect.git_blob else None

        def fresh(seed: bool) -> StreamDigests:
            nonlocal digests
            if digests is not None:
                digests.abandon()
            digests = StreamDigests(self.chunk_size, self.pool, git_size, expect.size)
            if seed and partial.exists():
                digests.seed(partial)
            return digests

        if partial.exists() and not (expect.sha256 or expect.git_blob):
            # Nothing pins these bytes, so a leftover could splice two versions: restart.
            partial.unlink()
        # The bytes as stored: a content-encoded answer could not be resumed with Range.
        headers = {"Accept-Encoding": "identity", **headers}
        try:
            while True:
                offset = partial.stat().st_size if partial.exists() else 0
                if expect.size is not None and offset > expect.size:
                    partial.unlink()
                    offset = 0
                if expect.size is not None and offset == expect.size and offset > 0:
                    d = digests or fresh(seed=True)
                    result = d.finish()
                    digests = None
                    return downloaded, *result
                h = dict(headers)
                if offset:
                    h["Range"] = f"bytes={offset}-"
                try:
                    with session.get(
                        url,
                        headers=h,
                        stream=True,
                        timeout=(min(15, timeout), timeout),
                        verify=verify,
                    ) as r:
                        if r.status_code == 416 and offset:
                            partial.unlink()  # our partial is bad: start over
                            fresh(seed=False)
                            continue
                        self._check_status(r, url, what)
                        mode = "ab"
                        if r.status_code == 200 or not offset:
                            mode, offset = "wb", 0
                        elif not r.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                            mode, offset = "wb", 0  # an answer we cannot splice: start over
                        d = fresh(seed=False) if mode == "wb" else (digests or fresh(seed=True))
                        body = Body(r)
                        watch = Watchdog(body, timeout, self.cancel)
                        try:
                            with naming(partial), open(partial, mode) as f:
                                flusher = Writeback(f.fileno())
                                try:
                                    while n := self._block(body, f, d, expect, offset, url, what):
                                        offset += n
                                        downloaded += n
                                        flusher.wrote(n)
                                        watch.moved(n)
                                        if self.progress:
                                            self.progress(n)
                                        if expect.size is not None and offset < expect.size:
                                            faults.point("fetch.mid-blob")
                                finally:
                                    flusher.close()
                        except (BodyError, FetchError) as e:
                            if watch.fired == "cancelled":
                                raise FetchCancelled(what) from e
                            if isinstance(e, FetchError) or body.encoded:
                                partial.unlink(missing_ok=True)  # never resumed from
                            if isinstance(e, BodyDecodeError):
                                raise FetchError(
                                    f"{what}: the server content-encoded the body and {e}",
                                    url=url,
                                    hint="Fetch through a server or proxy that sends the "
                                    "bytes as they are (airgap asks for identity).",
                                ) from e
                            if watch.fired:
                                raise _Retry(watch.fired) from e
                            raise
                        finally:
                            watch.close()
                        if expect.size is not None and offset < expect.size:
                            if body.encoded:  # a whole encoded body of the wrong size
                                partial.unlink(missing_ok=True)
                                raise FetchError(
                                    f"{what}: the server content-encoded the body "
                                    f"({r.headers.get('Content-Encoding')}); decoded it is "
                                    f"{offset} bytes, the pin says {expect.size}",
                                    url=url,
                                    hint="Fetch through a server or proxy that sends the "
                                    "bytes as they are (airgap asks for identity).",
                                )
                            raise _Retry(f"connection closed at {offset} of {expect.size} bytes")
                        result = d.finish()
                        digests = None
                        return downloaded, *result
                except (
                    _Retry,
                    BodyError,
                    requests.ConnectionError,
                    requests.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                ) as e:
                    kind = None if isinstance(e, _Retry) else net.kind_of(e)
                    if kind in ("dns", "tls"):  # no retry will change these
                        raise unreachable(e, url, what, timeout) from e
                    attempt += 1
                    if attempt > self.retries:
                        if kind is not None:
                            raise unreachable(e, url, what, timeout, self.retries) from e
                        raise FetchError(
                            f"{what}: giving up after {self.retries} retries ({e})",
                            url=url,
                            hint="The download is kept; run the same command again to resume.",
                        ) from e
                    delay = self.backoff * 2 ** (attempt - 1)
                    logger.info("%s: %s; retry %d in %.1fs", url, e, attempt, delay)
                    time.sleep(delay)
                except requests.RequestException as e:  # an invalid URL, a redirect loop
                    raise unreachable(e, url, what, timeout) from e
        finally:
            if digests is not None:
                digests.abandon()

    def _block(
        self,
        body: Body,
        f: IO[bytes],
        d: StreamDigests,
        expect: Expect,
        offset: int,
        url: str,
        what: str,
    ) -> int:
        """Read the next block of ``body`` into a pool buffer, write it at ``offset`` and
        hand it to the digests; returns its size (0 at the end of the body)."""
        if self.cancel.is_set():
            raise FetchCancelled(what)
        buf = d.buffer()
        try:
            n = body.readinto(buf)
            if expect.size is not None and offset + n > expect.size:
                raise FetchError(
                    f"{what}: server sent more than the {expect.size} bytes expected",
                    url=url,
                    hint="The source does not match its pin; check the lock.",
                )
            if expect.size is None and offset + n > expect.max_size:
                raise FetchError(
                    f"{what}: server sent more than {expect.max_size} bytes, the most "
                    "accepted for this file",
                    url=url,
                    hint="The server does not serve the expected file; check the URL.",
                )
            if n:
                f.write(memoryview(buf)[:n])
        except BaseException:
            d.discard(buf)
            raise
        if n:
            d.update(buf, n)
        else:
            d.discard(buf)
        return n

    @staticmethod
    def _check_status(r: requests.Response, url: str, what: str) -> None:
        if r.status_code in (401, 403):
            raise FetchError(
                f"{what}: HTTP {r.status_code} (not authorized)",
                url=url,
                status=r.status_code,
                hint=_auth_hint(url),
            )
        if r.status_code == 404:
            raise FetchError(
                f"{what}: HTTP 404 (not found)",
                url=url,
                status=404,
                hint="Check the name, tag or revision in the manifest.",
            )
        if r.status_code >= 500 or r.status_code == 429:
            raise _Retry(f"HTTP {r.status_code}")
        if r.status_code not in (200, 206):
            raise FetchError(
                f"{what}: unexpected HTTP {r.status_code}", url=url, status=r.status_code
            )

    def _verify_and_commit(
        self,
        partial: Path,
        expect: Expect,
        url: str,
        what: str,
        downloaded: int,
        digests: Digests,
        sha1: str | None,
    ) -> Fetched:
        size = partial.stat().st_size
        problem = None
        if expect.size is not None and size != expect.size:
            problem = f"{size} bytes, expected {expect.size}"
        elif expect.sha256 and digests.sha256 != expect.sha256:
            problem = f"sha256 {digests.sha256}, expected {expect.sha256}"
        elif expect.git_blob and (sha1 or git_blob_id(partial)) != expect.git_blob:
            problem = f"git blob id differs from {expect.git_blob}"
        if problem:
            partial.unlink()
            raise FetchError(
                f"{what}: the served bytes are not the published file ({problem}); "
                "nothing was cached",
                url=url,
                hint="The mirror or proxy serves altered content; fetch from a trusted source.",
            )
        faults.point("fetch.verified")  # checked, not yet in blobs/
        path = self.cache.commit(partial, digests.sha256, digests, self.chunk_size)
        faults.point("fetch.committed")
        if expect.git_blob:
            self.cache.set_alias("gitblob", expect.git_blob, digests.sha256)
        return Fetched(path, digests.sha256, size, downloaded)


class _Retry(Exception):
    pass


def unreachable(
    e: BaseException, url: str, what: str, timeout: float, retries: int = 0
) -> FetchError:
    """A transport failure (no HTTP answer) of ``url``, named, with the fix for its kind."""
    kind = net.kind_of(e)
    after = f" (after {retries} {'retry' if retries == 1 else 'retries'})" if retries else ""
    return FetchError(
        f"{what}: {net.describe(e, timeout)}{after}",
        url=url,
        hint=net.hint_for(
            kind,
            endpoint=_endpoint_setting(url),
            tls="The server's certificate is not trusted: for a private CA add it to "
            "REQUESTS_CA_BUNDLE (registries: --registry-ca)",
            timeout=f"No answer within {timeout:g} s: raise AIRGAP_NET_TIMEOUT",
        )
        + (
            " What was downloaded is kept; run the same command again to resume." if retries else ""
        ),
    )


def _endpoint_setting(url: str) -> str:
    """Where the operator sets the address ``url`` came from."""
    if "/v2/" in url:
        return "the image reference in the manifest"
    if "/resolve/" in url:
        return "HF_ENDPOINT, the Hub or a local mirror"
    return "elastic.elser_url / elastic.product_docs_url in the manifest"


def _auth_hint(url: str) -> str:
    if "/v2/" in url:
        return "Log in to the registry (`docker login`, kept in ~/.docker/config.json)."
    if "/resolve/" in url:
        return (
            "For a gated or private Hugging Face model, accept its licence on the model "
            "page and export HF_TOKEN."
        )
    return "The server refused access; check the URL and any proxy or mirror permissions."
