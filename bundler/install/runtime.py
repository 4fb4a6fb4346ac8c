"""The container runtime seam: Docker engine or Podman, both through the Docker API.

docker-py's low-level ``APIClient`` is used (not ``images.load``, which would hold
the whole archive in memory). Podman answers the same API on its service socket.
Every ``docker.errors`` / ``requests`` exception is translated here into ours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from bundler import env
from bundler.bundle.index import ImageEntry
from bundler.errors import InstallError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_URLS = {
    "docker": "unix:///var/run/docker.sock",
    "podman": "unix:///run/podman/podman.sock",
}


@dataclass(frozen=True)
class RuntimeInfo:
    kind: str
    url: str
    version: str
    api_version: str
    gpu: bool
    gpu_detail: str
    root_dir: str | None


class Runtime:
    """One container engine reached over its API socket."""

    def __init__(self, kind: str = "docker", url: str | None = None, timeout: int = 600) -> None:
        if kind not in DEFAULT_URLS:
            raise UsageError(f"--runtime must be docker or podman, not {kind!r}")
        self.kind = kind
        self.url = url or env.container_host(kind) or DEFAULT_URLS[kind]
        try:
            self.api = docker.APIClient(base_url=self.url, version="auto", timeout=timeout)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(
                f"cannot reach the {kind} engine at {self.url}: {e}",
                hint="Start it, or point --runtime-url (or DOCKER_HOST) at its socket.",
            ) from e

    def info(self) -> RuntimeInfo:
        """Version, GPU support and storage root, for the preflight table.

        Raises:
            InstallError: the engine does not answer.
        """
        try:
            version = self.api.version()
            info = self.api.info()
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"{self.kind} engine at {self.url} does not answer: {e}") from e
        runtimes = info.get("Runtimes") or {}
        gpu = "nvidia" in runtimes
        detail = "nvidia runtime present" if "nvidia" in runtimes else "no nvidia runtime"
        return RuntimeInfo(
            kind=self.kind,
            url=self.url,
            version=str(version.get("Version", "?")),
            api_version=str(version.get("ApiVersion", "?")),
            gpu=gpu,
            gpu_detail=detail,
            root_dir=info.get("DockerRootDir"),
        )

    def free_bytes(self, root_dir: str | None) -> int | None:
        """Free space where the engine stores images, if that path is visible here."""
        if not root_dir:
            return None
        try:
            return shutil.disk_usage(root_dir).free
        except OSError:
            return None

    def image_id(self, ref: str) -> str | None:
        """The image ID (config digest) of ``ref`` (a name or an ID), or None if absent."""
        try:
            data = self.api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"cannot inspect image {ref} on {self.kind}: {e}") from e
        image_id = str(data.get("Id", ""))
        return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"

    def image_tags(self, ref: str) -> list[str]:
        try:
            return [str(t) for t in self.api.inspect_image(ref).get("RepoTags") or []]
        except docker.errors.NotFound:
            return []

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """``docker load`` of a streamed docker-archive; returns the engine's messages.

        Raises:
            InstallError: the engine refused the archive.
        """
        messages: list[str] = []
        try:
            for item in self.api.load_image(chunks):
                if "error" in item or "errorDetail" in item:
                    raise InstallError(
                        f"{self.kind} refused the images: {item.get('error') or item}",
                        hint="The images in the bundle could not be loaded; see the engine log.",
                    )
                text = str(item.get("stream", "")).strip()
                if text:
                    messages.append(text)
        except docker.errors.APIError as e:
            raise InstallError(f"{self.kind} refused the images: {e.explanation or e}") from e
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"image load from the bundle was cut off: {e}") from e
        return messages

    def tag(self, image_id: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        if not repo or "/" in tag:
            repo, tag = ref, "latest"
        try:
            self.api.tag(image_id, repo, tag)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"cannot tag {image_id} as {ref}: {e}") from e

    def untag(self, ref: str) -> None:
        """Remove the tag ``ref`` (the image stays while another tag or an ID names it).

        Raises:
            InstallError: the engine refused.
        """
        try:
            self.api.remove_image(ref, force=False, noprune=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"cannot remove tag {ref}: {e}") from e

    def remove_image(self, image_id: str) -> bool:
        """Remove an image by ID (with its tags); False if it was already gone."""
        try:
            self.api.remove_image(image_id, force=True)
        except docker.errors.NotFound:
            return False
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"cannot remove image {image_id}: {e}") from e
        return True

    def close(self) -> None:
        self.api.close()


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
