"""The container engine seam: Docker engine or Podman, both through the Docker API —
images (``Runtime``) and the serving containers (``Containers``). The only module that
imports ``docker``.

docker-py's low-level ``APIClient`` is used (not ``images.load``, which would hold
the whole archive in memory). Podman answers the same API on its service socket.
Every ``docker.errors`` / ``requests`` exception is translated here into ours.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from bundler import env, faults, net
from bundler.errors import InstallError, UsageError
from bundler.names import container_name
from bundler.oci.binds import check_binds

logger = logging.getLogger(__name__)

ENGINE_HINT = (
    "Check that the engine runs and answers on its socket (--runtime-url, DOCKER_HOST); "
    "then run the same command again: it first removes what an interrupted run left."
)
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
    runtimes: tuple[str, ...] = ()  # the engine's OCI runtimes (Docker: "nvidia" for GPUs)
    cdi_dirs: tuple[str, ...] = ()  # where the engine reads CDI specs, when it says so
    # Docker's containerd image store (not the classic one): a load needs every layer's
    # bytes, even those it has (so a delta's layers cannot be left to the engine there).
    containerd_store: bool = False


class Runtime:
    """One container engine reached over its API socket."""

    def __init__(self, kind: str = "docker", url: str | None = None, timeout: int = 600) -> None:
        if kind not in DEFAULT_URLS:
            raise UsageError(f"--runtime must be docker or podman, not {kind!r}")
        self.kind = kind
        self.url = url or env.container_host(kind) or DEFAULT_URLS[kind]
        # The first request (API version) must answer quickly; loads may take long.
        probe = min(timeout, env.net_timeout())
        try:
            self.api = docker.APIClient(base_url=self.url, version="auto", timeout=probe)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(
                f"cannot reach the {kind} engine at {self.url}: {net.describe(e, probe)}",
                hint=_unreachable_hint(net.kind_of(e), probe),
            ) from e
        self.api.timeout = timeout

    def info(self) -> RuntimeInfo:
        """Version, GPU support and storage root, for the preflight table.

        Raises:
            InstallError: the engine does not answer.
        """
        try:
            version = self.api.version()
            info = self.api.info()
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(
                f"{self.kind} engine at {self.url} does not answer: {e}", hint=ENGINE_HINT
            ) from e
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
            runtimes=tuple(sorted(str(r) for r in runtimes)),
            cdi_dirs=tuple(str(d) for d in info.get("CDISpecDirs") or ()),
            containerd_store=any(
                "containerd.snapshotter" in str(v)
                for row in info.get("DriverStatus") or ()
                for v in row
            ),
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
            raise InstallError(
                f"cannot inspect image {ref} on the {self.kind} engine at {self.url}: {e}",
                hint=ENGINE_HINT,
            ) from e
        image_id = str(data.get("Id", ""))
        return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"

    def image_layers(self, ref: str) -> list[str] | None:
        """The diff_ids of ``ref``'s layers as the engine holds them, or None if absent.

        Raises:
            InstallError: the engine does not answer.
        """
        try:
            data = self.api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"cannot inspect image {ref} on {self.kind}: {e}") from e
        layers = (data.get("RootFS") or {}).get("Layers") or []
        return [str(d) for d in layers]

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
            raise InstallError(
                f"image load into the {self.kind} engine at {self.url} was cut off: {e}",
                hint="Check that the engine runs (its log says why it stopped), then run the "
                "same install again: it first removes what this one left.",
            ) from e
        return messages

    def tag(self, image_id: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        if not repo or "/" in tag:
            repo, tag = ref, "latest"
        try:
            self.api.tag(image_id, repo, tag)
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(
                f"cannot tag {image_id} as {ref} at {self.url}: {e}", hint=ENGINE_HINT
            ) from e

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
            raise InstallError(
                f"cannot remove tag {ref} at {self.url}: {e}", hint=ENGINE_HINT
            ) from e

    def remove_image(self, image_id: str) -> bool:
        """Remove an image by ID (with its tags); False if it was already gone."""
        try:
            self.api.remove_image(image_id, force=True)
        except docker.errors.NotFound:
            return False
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(
                f"cannot remove image {image_id} at {self.url}: {e}", hint=ENGINE_HINT
            ) from e
        return True

    def container_exists(self, ident: str) -> bool:
        """Raises:
        InstallError: the engine does not answer."""
        try:
            self.api.inspect_container(ident)
        except docker.errors.NotFound:
            return False
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(
                f"cannot inspect container {ident} on the {self.kind} engine at {self.url}: {e}",
                hint=ENGINE_HINT,
            ) from e
        return True

    def close(self) -> None:
        self.api.close()


MANAGED = "airgap.managed"
OWNER = "airgap.prefix"
Containers_ = dict[str, dict[str, str]]


def _unreachable_hint(kind: net.Kind, timeout: float) -> str:
    if kind == "tls":
        return (
            "The engine's TLS certificate is not trusted; airgap speaks to an engine over "
            "its unix socket or plain tcp://: point --runtime-url (or DOCKER_HOST) there."
        )
    if kind == "timeout":
        return (
            f"The engine accepted the connection but did not answer within {timeout:g} s: "
            "check that it is not hung, or raise AIRGAP_NET_TIMEOUT."
        )
    return "Start it, or point --runtime-url (or DOCKER_HOST) at its socket."


class Containers:
    """The ``airgap-<name>-vllm`` and ``airgap-<name>-nginx`` containers of the install
    under ``owner`` (its prefix): each carries ``airgap.prefix=<owner>``, so an install of
    the same bundle name under another prefix never stops or replaces them."""

    def __init__(self, runtime: Runtime, name: str, owner: str) -> None:
        self.runtime = runtime
        self.api = runtime.api
        self.name = name
        self.owner = owner

    def ensure_network(self, name: str) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.api.create_network(name, driver="bridge", labels={MANAGED: "true"})

    def container_name(self, role: str) -> str:
        return container_name(self.name, role)

    def find(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = self.api.inspect_container(name)
            return data
        except docker.errors.NotFound:
            return None

    def remove_one(self, ident: str) -> None:
        """Raises:
        InstallError: the engine refused (a container already gone is fine)."""
        try:
            self.api.remove_container(ident, force=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise InstallError(f"cannot remove container {ident}: {e}", hint=ENGINE_HINT) from e

    def logs(self, ident: str, lines: int = 30) -> str:
        try:
            raw = self.api.logs(ident, tail=lines)
        except docker.errors.APIError:
            return ""
        return raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw)

    def create(
        self,
        role: str,
        image: str,
        *,
        command: list[str],
        env: dict[str, str],
        binds: dict[str, dict[str, str]],
        release: str,
        gpus: str,
        entrypoint: list[str] | None = None,
        network: str,
        port: int | None = None,
        ipc_host: bool = False,
    ) -> str:
        check_binds(binds)
        device_requests = None
        if gpus != "none":
            if gpus == "all":
                device_requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
            else:
                device_requests = [
                    docker.types.DeviceRequest(device_ids=gpus.split(","), capabilities=[["gpu"]])
                ]
        host_config = self.api.create_host_config(
            binds=binds,
            network_mode=network,
            restart_policy={"Name": "unless-stopped"},
            ipc_mode="host" if ipc_host else None,
            device_requests=device_requests,
            port_bindings={port: port} if (port and network != "host") else None,
        )
        try:
            c = self.api.create_container(
                image,
                command=command,
                entrypoint=entrypoint,
                name=self.container_name(role),
                environment=env,
                host_config=host_config,
                ports=[port] if (port and network != "host") else None,
                labels={
                    MANAGED: "true",
                    OWNER: self.owner,
                    "airgap.release": release,
                    "airgap.role": role,
                },
            )
            faults.point("serve.container-created")
            self.api.start(c["Id"])
        except docker.errors.APIError as e:
            raise InstallError(
                f"cannot start the {role} container: {e.explanation or e}",
                hint="--no-gpu for CPU-only images; check the engine's log.",
            ) from e
        return str(c["Id"])

    def check_nginx(self, image: str, binds: dict[str, dict[str, str]], network: str) -> None:
        """``nginx -t`` of the generated configuration, inside the nginx image."""
        check_binds(binds)
        try:
            c = self.api.create_container(
                image,
                entrypoint=["/usr/sbin/nginx"],
                command=["-t", "-c", "/etc/airgap/nginx.conf"],
                host_config=self.api.create_host_config(binds=binds, network_mode=network),
                labels={MANAGED: "true", "airgap.role": "nginx-test"},
            )
            self.api.start(c["Id"])
            code = int(self.api.wait(c["Id"], timeout=60).get("StatusCode", 1))
            output = self.logs(c["Id"], 20)
        except (docker.errors.APIError, requests.RequestException) as e:
            raise InstallError(f"cannot run `nginx -t` in {image}: {e}") from e
        finally:
            with contextlib.suppress(Exception):
                self.api.remove_container(c["Id"], force=True)
        if code != 0:
            raise InstallError(
                f"generated nginx configuration rejected by nginx -t: {output}",
                hint="This is a bug in airgap or an unusual nginx image; report the message above.",
            )

    def check_ours(self) -> None:
        """Refuse, before anything stops, if a container name is taken by someone else:
        a container airgap did not make, or one another prefix's install serves with.
        (Containers made before the prefix label existed count as this install's.)"""
        for role in ("nginx", "vllm"):
            name = self.container_name(role)
            info = self.find(name)
            if info is None:
                continue
            labels = info.get("Config", {}).get("Labels") or {}
            if labels.get(MANAGED) != "true":
                raise InstallError(
                    f"a container named {name} exists and was not created by airgap",
                    hint="Rename or remove it, then install again.",
                )
            if labels.get(OWNER, self.owner) != self.owner:
                raise InstallError(
                    f"a container named {name} serves the airgap install under "
                    f"{labels[OWNER]}, not this one ({self.owner})",
                    hint="Uninstall that prefix first, or install this bundle there.",
                )

    def stop_previous(self, stopped: dict[str, dict[str, str]]) -> None:
        """Stop and rename the containers that serve now, so the new ones can take over.

        ``stopped`` is filled as it goes, so a failure or Ctrl-C half-way still lets the
        caller restore exactly what was stopped.
        """
        for role in ("nginx", "vllm"):
            info = self.find(self.container_name(role))
            if info is None:
                continue
            ident = info["Id"]
            stopped[role] = {"id": ident, "name": self.container_name(role)}
            with contextlib.suppress(docker.errors.APIError):
                self.api.stop(ident, timeout=30)
            self.api.rename(ident, f"{self.container_name(role)}-previous-{int(time.time())}")

    def restore_previous(self, stopped: dict[str, dict[str, str]]) -> None:
        for role in ("vllm", "nginx"):
            c = stopped.get(role)
            if c is None:
                continue
            with contextlib.suppress(docker.errors.APIError):
                self.api.rename(c["id"], c["name"])
                self.api.start(c["id"])

    def remove(self, containers: dict[str, dict[str, str]]) -> list[str]:
        removed = []
        for c in containers.values():
            if self.find(c["id"]) is not None:
                self.remove_one(c["id"])
                removed.append(f"container {c['name']}")
        return removed

    def running(self, containers: dict[str, dict[str, str]]) -> dict[str, bool]:
        return {
            role: bool((self.find(c["id"]) or {}).get("State", {}).get("Running"))
            for role, c in containers.items()
        }


def recover_containers(runtime: Runtime, owner: str, known: set[str]) -> list[str]:
    """Undo a serving start that was killed half-way (``kill -9``, a power cut).

    Such a start may have left, among the containers labelled with ``owner`` (the
    install's prefix): new containers under the serving names, and the containers that
    served before, stopped and renamed ``<name>-previous-<time>``. Every container not
    in ``known`` (the containers on record in the receipt) is removed; the ones on
    record get their name back and are started again, so what served before serves
    again. ``known`` empty removes every container of ``owner`` (uninstall).

    Raises:
        InstallError: the engine does not answer or refuses.
    """
    api = runtime.api
    done: list[str] = []
    try:
        found = api.containers(all=True, filters={"label": [f"{MANAGED}=true", f"{OWNER}={owner}"]})
        restore = []
        for c in found:
            name = str((c.get("Names") or ["/?"])[0]).lstrip("/")
            renamed = re.fullmatch(r"(?P<name>.+)-previous-\d+", name)
            if c["Id"] in known:
                if renamed:
                    restore.append((c["Id"], renamed["name"]))
                continue
            api.remove_container(c["Id"], force=True)
            done.append(f"removed container {name} of an interrupted run")
        for ident, name in restore:
            with contextlib.suppress(docker.errors.NotFound):
                api.inspect_container(name)
                continue  # the name is taken by a container on record: leave it be
            api.rename(ident, name)
            api.start(ident)
            done.append(f"started {name} again (an interrupted run had stopped it)")
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise InstallError(
            f"cannot clean up the containers of an interrupted run on {runtime.url}: {e}",
            hint="Check the engine is running, then run the same command again.",
        ) from e
    return done
