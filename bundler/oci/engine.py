"""The container runtime seam: Docker engine or Podman, both through the Docker API.

docker-py's low-level ``APIClient`` is used (not ``images.load``, which would hold
the whole archive in memory). Podman answers the same API on its service socket.
Every ``docker.errors`` / ``requests`` exception is translated here into ours.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import docker.errors
import requests

from bundler import env
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
