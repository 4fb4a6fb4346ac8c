"""The serving containers of one bundle name in the engine: create, check, stop, rename,
restore, remove. Every container airgap makes carries the label ``airgap.managed=true``;
a container of the same name without it is never touched."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import docker.errors
import docker.types
import requests

from bundler.errors import InstallError
from bundler.names import container_name
from bundler.oci.engine import Runtime

MANAGED = "airgap.managed"
Containers_ = dict[str, dict[str, str]]


def _check_binds(binds: dict[str, dict[str, str]]) -> None:
    """Every bind source is an absolute path that exists (the engine would create a
    missing one on the host), and no path holds the ``:`` that separates a bind's fields.
    Sources are the release's proven model directory (``contained``) or paths the
    layout names; none is spelled from index content.

    Raises:
        InstallError: a bind breaks either rule.
    """
    for source, spec in binds.items():
        problem = None
        if ":" in source or ":" in spec["bind"]:
            problem = "holds ':'"
        elif not os.path.isabs(source) or not os.path.lexists(source):
            problem = "does not exist"
        if problem:
            raise InstallError(
                f"bind mount {source} -> {spec['bind']} {problem}; refusing to start a container",
                hint="Use an install --prefix without ':' or links in its path.",
            )


class Containers:
    """The ``airgap-<name>-vllm`` and ``airgap-<name>-nginx`` containers."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.api = runtime.api
        self.name = name

    def container_name(self, role: str) -> str:
        return container_name(self.name, role)

    def find(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = self.api.inspect_container(name)
            return data
        except docker.errors.NotFound:
            return None

    def remove_one(self, ident: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(ident, force=True)

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
        _check_binds(binds)
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
                labels={MANAGED: "true", "airgap.release": release, "airgap.role": role},
            )
            self.api.start(c["Id"])
        except docker.errors.APIError as e:
            raise InstallError(
                f"cannot start the {role} container: {e.explanation or e}",
                hint="--no-gpu for CPU-only images; check the engine's log.",
            ) from e
        return str(c["Id"])

    def check_nginx(self, image: str, binds: dict[str, dict[str, str]], network: str) -> None:
        """``nginx -t`` of the generated configuration, inside the nginx image."""
        _check_binds(binds)
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
        """Refuse, before anything stops, if a container name is taken by someone else."""
        for role in ("nginx", "vllm"):
            info = self.find(self.container_name(role))
            if info and info.get("Config", {}).get("Labels", {}).get(MANAGED) != "true":
                raise InstallError(
                    f"a container named {self.container_name(role)} exists and "
                    "was not created by airgap",
                    hint="Rename or remove it, then install again.",
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
