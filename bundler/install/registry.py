"""Push a bundle's images to an internal OCI registry (the distribution spec, with requests).

For clusters that pull from a registry instead of a local engine. Blobs are
streamed from the bundle as they are verified (one monolithic, chunked-encoded
upload each; the registry checks the digest too), blobs another repository
already has are mounted rather than sent again, and each image manifest is put
last, under the bundle's own name for it (``PREFIX/<bundle>/<role>:<version>``, never a
name taken from the index), once every blob of the bundle verified.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from bundler.bundle.index import ImageEntry
from bundler.errors import InstallError, UsageError
from bundler.fetch.registry import is_loopback

logger = logging.getLogger(__name__)


class Registry:
    """One registry, addressed as ``HOST[:PORT][/PREFIX]``."""

    def __init__(
        self,
        spec: str,
        *,
        insecure: bool = False,
        ca: Path | None = None,
        session: requests.Session | None = None,
    ) -> None:
        host, _, prefix = spec.partition("/")
        if not host:
            raise UsageError(f"--registry {spec!r}: give HOST[:PORT][/PREFIX]")
        self.spec = spec
        self.host = host
        self.prefix = prefix.strip("/")
        self.scheme = "http" if (insecure or is_loopback(host)) else "https"
        self.session = session or requests.Session()
        # Passed on every request: a session-level verify loses to REQUESTS_CA_BUNDLE.
        self.verify: str | bool = str(ca) if ca is not None else True
        self.base = f"{self.scheme}://{host}/v2/"

    def _req(self, method: str, url: str, **kw: Any) -> requests.Response:
        try:
            return self.session.request(
                method, url, timeout=kw.pop("timeout", 60), verify=self.verify, **kw
            )
        except requests.RequestException as e:
            raise InstallError(
                f"{self.host}: registry unreachable ({method} {url}): {e}",
                hint="Check --registry, and that the registry runs.",
            ) from e

    def _check(self, r: requests.Response, *ok: int) -> requests.Response:
        if r.status_code not in ok:
            raise InstallError(
                f"{r.request.method} {r.url}: HTTP {r.status_code}: {r.text[:300]}",
                hint="401/403: the registry needs credentials this install does not have; "
                "404 on upload: check the repository prefix.",
            )
        return r

    def ping(self) -> str:
        r = self._req("GET", self.base)
        self._check(r, 200, 401)
        return r.headers.get("Docker-Distribution-API-Version", "registry/2.0")

    def has_blob(self, name: str, digest: str) -> bool:
        r = self._req("HEAD", f"{self.base}{name}/blobs/{digest}")
        return r.status_code == 200

    def manifest_digest(self, name: str, reference: str, media_type: str) -> str | None:
        r = self._req(
            "HEAD", f"{self.base}{name}/manifests/{reference}", headers={"Accept": media_type}
        )
        if r.status_code != 200:
            return None
        return r.headers.get("Docker-Content-Digest")

    def upload(self, name: str, digest: str, chunks: Iterator[bytes]) -> None:
        r = self._check(self._req("POST", f"{self.base}{name}/blobs/uploads/"), 202)
        location = urljoin(self.base, r.headers["Location"])
        sep = "&" if "?" in location else "?"
        r = self._req(
            "PUT",
            f"{location}{sep}digest={digest}",
            data=chunks,
            headers={"Content-Type": "application/octet-stream"},
            timeout=3600,
        )
        self._check(r, 201)

    def mount(self, name: str, digest: str, source: str) -> bool:
        r = self._req(
            "POST", f"{self.base}{name}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        if r.status_code == 201:
            return True
        if r.status_code == 202 and "Location" in r.headers:  # mount refused: cancel upload
            self._req("DELETE", urljoin(self.base, r.headers["Location"]))
        return False

    def put_manifest(self, name: str, tag: str, media_type: str, data: bytes) -> str:
        r = self._check(
            self._req(
                "PUT",
                f"{self.base}{name}/manifests/{tag}",
                data=data,
                headers={"Content-Type": media_type},
            ),
            201,
        )
        return r.headers.get("Docker-Content-Digest", "")

    def delete_manifest(self, name: str, digest: str) -> bool:
        r = self._req("DELETE", f"{self.base}{name}/manifests/{digest}")
        return r.status_code in (200, 202)


class RegistryFeed:
    """Streams verified blobs of the images to push into the registry, one at a time."""

    def __init__(
        self,
        registry: Registry,
        images: list[ImageEntry],
        name_for: Callable[[ImageEntry], tuple[str, str]],
    ) -> None:
        self.registry = registry
        self.images = images
        self.name_for = name_for  # (repository, tag) in the bundle's namespace
        self.needed: dict[str, str] = {}  # digest -> repository it is uploaded to
        for img in images:
            name, _ = name_for(img)
            for digest in [img.config_digest, *(la.digest for la in img.layers)]:
                self.needed.setdefault(digest, name)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._skip = False

    def start(self) -> None:
        self.registry.ping()

    def wants(self, digest: str) -> bool:
        return digest in self.needed

    def open_blob(self, digest: str, size: int) -> None:
        name = self.needed[digest]
        self._skip = self.registry.has_blob(name, digest)
        if self._skip:
            return
        self._error = None

        def run() -> None:
            try:
                self.registry.upload(name, digest, self._chunks())
            except BaseException as e:
                self._error = e
                while True:  # unblock the producer
                    try:
                        self._q.get_nowait()
                    except queue.Empty:
                        break

        self._thread = threading.Thread(target=run, name="blob-push", daemon=True)
        self._thread.start()

    _ABORT = object()

    def _chunks(self) -> Iterator[bytes]:
        while (item := self._q.get()) is not None:
            if item is self._ABORT:
                raise InstallError("blob upload aborted: the bundle failed verification")
            yield item

    def _put(self, item: bytes | None) -> None:
        while self._error is None:
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise self._error

    def write(self, data: memoryview) -> None:
        if not self._skip:
            self._put(bytes(data))

    def close_blob(self, size: int) -> None:
        if self._skip or self._thread is None:
            return
        self._put(None)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error

    def finish_with(self, manifests: dict[str, bytes]) -> list[str]:
        """Mount shared blobs where needed, then put each manifest under its tag."""
        pushed = []
        for img in self.images:
            name, tag = self.name_for(img)
            ref = f"{self.registry.host}/{name}:{tag}"
            for digest in [img.config_digest, *(la.digest for la in img.layers)]:
                if not self.registry.has_blob(name, digest) and not self.registry.mount(
                    name, digest, self.needed[digest]
                ):
                    raise InstallError(
                        f"{self.registry.host}/{name}: blob {digest} missing after upload"
                    )
            got = self.registry.put_manifest(
                name, tag, img.manifest_media_type, manifests[img.manifest_digest]
            )
            if got and got != img.manifest_digest:
                raise InstallError(
                    f"{ref}: registry stored digest "
                    f"{got}, the signed manifest is {img.manifest_digest}"
                )
            pushed.append(ref)
        return pushed

    def abort(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._q.put(self._ABORT, timeout=5)
            self._thread.join(timeout=60)
