"""Feed a bundle's verified image blobs to where its images go.

``ArchiveFeed``: a docker-archive generated on the fly into the engine's ``load``
(``oci.engine``). ``RegistryFeed``: an internal OCI registry (``oci.registry``), for
clusters that pull from a registry instead of a local engine. Blobs are
streamed from the bundle as they are verified (one monolithic, chunked-encoded
upload each; the registry checks the digest too), blobs another repository
already has are mounted rather than sent again, and each image manifest is put
last, under the bundle's own name for it (``PREFIX/<bundle>/<role>:<version>``, never a
name taken from the index), once every blob of the bundle verified.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from bundler.bundle.index import ImageEntry
from bundler.errors import InstallError
from bundler.oci.engine import Runtime
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

    def held(self, digest: str, repository: str) -> None:
        """A delta's blob that ``repository`` in this registry has: mounted, not sent."""
        self.needed[digest] = repository

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


class ArchiveFeed:
    """A docker-archive tar built on the fly and streamed into ``Runtime.load``.

    ``manifest.json`` goes first, then each config and layer blob as it is
    delivered (already verified) from the bundle, under ``blobs/sha256/<hex>``.
    Layers stay the original (possibly compressed) blobs: the engine accepts them
    and checks them against the config's diff IDs. The queue is bounded, so the
    reader waits for the engine instead of buffering.
    """

    _ABORT = object()

    def __init__(self, runtime: Runtime, images: list[ImageEntry]) -> None:
        self.runtime = runtime
        manifest = []
        self.needed: set[str] = set()
        for img in images:
            # Loaded untagged: a tag is moved only in EngineTarget.finish, after the whole
            # bundle verified, so a failed install never repoints an existing tag.
            manifest.append(
                {
                    "Config": _blob(img.config_digest),
                    "RepoTags": [],
                    "Layers": [_blob(la.digest) for la in img.layers],
                }
            )
            self.needed.add(img.config_digest)
            self.needed.update(la.digest for la in img.layers)
        self._manifest = json.dumps(manifest, sort_keys=True).encode()
        self._q: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._messages: list[str] = []
        self._error: BaseException | None = None
        self._remaining = set(self.needed)
        self._current = ""
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="image-load", daemon=True)
        self._started = False

    def start(self) -> None:
        self._started = True
        self._thread.start()
        self._member("manifest.json", len(self._manifest))
        self._put(self._manifest + b"\0" * (-len(self._manifest) % 512))

    def _run(self) -> None:
        try:
            self._messages = self.runtime.load(self._chunks())
        except BaseException as e:
            self._error = e
            # unblock a producer waiting on a full queue
            while True:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self._q.get()
            if item is None:
                return
            if item is self._ABORT:
                raise InstallError("image load aborted: the bundle failed verification")
            yield item

    def _put(self, data: object) -> None:
        while self._error is None:
            try:
                self._q.put(data, timeout=0.5)
                return
            except queue.Full:
                continue
        raise self._error

    def _member(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        self._put(info.tobuf(tarfile.USTAR_FORMAT))

    def wants(self, digest: str) -> bool:
        return digest in self.needed

    def open_blob(self, digest: str, size: int) -> None:
        self._member(_blob(digest), size)
        self._current = digest

    def write(self, data: memoryview) -> None:
        self._put(bytes(data))

    def held(self, digest: str, where: str = "") -> None:
        """A delta's layer the engine holds already: named with no bytes. The engine
        reuses its own (Docker: by the chain of diff_ids; Podman: by the diff_id)."""
        self._member(_blob(digest), 0)
        self._current = digest
        self.close_blob(0)

    def close_blob(self, size: int) -> None:
        pad = -size % 512
        if pad:
            self._put(b"\0" * pad)
        self._remaining.discard(self._current)
        if not self._remaining:
            # Every blob is in: end the archive now, so the engine unpacks the layers
            # while the rest of the bundle (model files) is still being written.
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._put(b"\0" * 1024)
            self._put(None)

    def finish(self) -> list[str]:
        """End the archive (if not yet) and wait for the engine to finish loading it."""
        self._end()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._messages

    def abort(self) -> None:
        if not self._started:
            return
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._q.put(self._ABORT, timeout=5)
            self._thread.join(timeout=60)


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")
