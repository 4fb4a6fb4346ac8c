"""Feed a bundle's verified image blobs to an internal OCI registry (``oci.registry``).

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
from typing import Any

from bundler.bundle.index import ImageEntry
from bundler.errors import InstallError
from bundler.oci.registry import Registry

logger = logging.getLogger(__name__)


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
