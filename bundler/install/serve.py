"""Serve the installed model: vLLM behind Nginx (TLS + bearer token), proven healthy.

Two containers per bundle name, both labelled ``airgap.managed=true``:

* ``airgap-<name>-vllm``: the vLLM image, started with the command line built from
  the manifest's ``serve`` section; ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``,
  ``VLLM_API_KEY``; the model directory mounted read-only; GPUs unless ``--no-gpu``;
  ``ipc=host``; restart ``unless-stopped``. It listens on loopback only.
* ``airgap-<name>-nginx``: TLS 1.2+, a bearer-token check (401 otherwise), the token
  swapped for vLLM's internal key on the way in, no buffering (streamed answers),
  read timeouts well above Kibana's 120 s, ``/health`` open without a token, and an
  access log that carries no header. The configuration is checked with ``nginx -t``
  inside the image before the container starts. Only Nginx listens on the network.

Proof of health: ``/health`` through Nginx, ``/v1/models`` with the token must list
the served name, then one real chat completion. Failure at any point stops what this
run started (with the failing container's log tail in the error) and restarts the
containers that were serving before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import docker.errors
import docker.types
import requests

from bundler.errors import InstallError
from bundler.fsutil import atomic_write_bytes
from bundler.install.tlsgen import current_secret, ensure_tls, new_secret
from bundler.manifest import Manifest
from bundler.names import contained, container_name, model_mount, slug
from bundler.oci.engine import Runtime

logger = logging.getLogger(__name__)
MANAGED = "airgap.managed"


@dataclass(frozen=True)
class ServeOptions:
    port: int = 8443
    internal_port: int = 8000
    server_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    rotate_token: bool = False
    gpus: str = "all"  # "all", "none", or a list like "0,1"
    health_timeout: float = 900.0
    network: str = "host"  # "host", or the name of a Docker network to create/use
    extra_vllm_args: tuple[str, ...] = ()  # appended after the manifest's (tests use it)
    artifacts_port: int | None = 8081  # plain HTTP for ELSER/product docs; None: TLS port only


@dataclass
class Served:
    url: str  # what Kibana's connector calls
    ca_cert: str
    containers: dict[str, dict[str, str]] = field(default_factory=dict)
    port: int = 0
    model: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)  # "elser"/"product_docs" -> URL


def vllm_command(
    m: Manifest, model_dir: str, host: str, port: int, extra: tuple[str, ...] = ()
) -> list[str]:
    """vLLM's command line (after the image's entrypoint) from the manifest's ``serve``."""
    s = m.serve
    args = [
        "--model",
        model_dir,
        "--served-model-name",
        m.model.served_name,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if s.max_model_len is not None:
        args += ["--max-model-len", str(s.max_model_len)]
    if s.tensor_parallel_size != 1:
        args += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size != 1:
        args += ["--pipeline-parallel-size", str(s.pipeline_parallel_size)]
    if s.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}"]
    if s.dtype:
        args += ["--dtype", s.dtype]
    if s.enable_auto_tool_choice:
        args.append("--enable-auto-tool-choice")
    if s.tool_call_parser:
        args += ["--tool-call-parser", s.tool_call_parser]
    if s.tokenizer_mode:
        args += ["--tokenizer-mode", s.tokenizer_mode]
    if s.config_format:
        args += ["--config-format", s.config_format]
    if s.load_format:
        args += ["--load-format", s.load_format]
    if s.chat_template:
        args += ["--chat-template", s.chat_template]
    return [*args, *s.extra_args, *extra]


ARTIFACT_ROOT = "/srv/airgap/elastic"  # the release's elastic/ dir, read-only
LISTING = "/srv/airgap/meta/product-docs.xml"


def _artifact_locations(elser: bool, docs: bool) -> str:
    """Static Elastic artifacts: no token (public files, checked by their consumers against
    their own metadata), Range requests answered with 206, no redirects, no listing
    except the product-doc S3 listing Kibana asks for."""
    out = ""
    if elser:
        out += f"""
        location /elser/ {{
            alias {ARTIFACT_ROOT}/elser/;
            autoindex off;
            limit_except GET {{ deny all; }}
        }}"""
    if docs:
        out += f"""
        location = /product-docs {{
            default_type application/xml;
            alias {LISTING};
        }}
        location = /product-docs/ {{
            rewrite ^ /product-docs last;
        }}
        location /product-docs/ {{
            alias {ARTIFACT_ROOT}/product-docs/;
            autoindex off;
            limit_except GET {{ deny all; }}
        }}"""
    return out


def nginx_conf(
    port: int,
    upstream: str,
    *,
    elser: bool = False,
    docs: bool = False,
    artifacts_port: int | None = None,
) -> str:
    """The Nginx configuration; the token and the internal key live in auth.conf (0600)."""
    artifacts = _artifact_locations(elser, docs)
    plain = (
        f"""
    server {{
        listen {artifacts_port};
        server_name _;
        absolute_redirect off;{artifacts}
        location / {{ return 404; }}
    }}"""
        if artifacts and artifacts_port
        else ""
    )
    return f"""# generated by airgap; do not edit (reinstall regenerates it)
user nginx;
worker_processes auto;
pid /tmp/airgap-nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    server_tokens off;
    log_format airgap '$remote_addr [$time_local] "$request_method $uri" $status '
                      '$body_bytes_sent ${{request_time}}s';
    access_log /dev/stdout airgap;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    client_max_body_size 32m;
    map_hash_bucket_size 128;  # the token map's key is longer than the default allows
    include /etc/airgap/auth.conf;
    upstream vllm {{ server {upstream}; keepalive 16; }}
    server {{
        listen {port} ssl;
        server_name _;
        ssl_certificate /etc/airgap/tls/server.crt;
        ssl_certificate_key /etc/airgap/tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers HIGH:!aNULL:!MD5;
        ssl_session_cache shared:airgap:10m;
        absolute_redirect off;{artifacts}
        location = /health {{
            proxy_pass http://vllm/health;
        }}
        location / {{
            if ($airgap_authorized = 0) {{
                add_header WWW-Authenticate 'Bearer realm="airgap"' always;
                return 401 '{{"error":"missing or wrong bearer token"}}';
            }}
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization $airgap_upstream_auth;
            proxy_buffering off;
            proxy_cache off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            add_header X-Accel-Buffering no;
        }}
    }}{plain}
}}
"""


def auth_conf(token: str, api_key: str) -> str:
    return (
        "# secrets: mode 0600, mounted read-only into the nginx container\n"
        f'map $http_authorization $airgap_authorized {{ default 0; "Bearer {token}" 1; }}\n'
        f'map $http_authorization $airgap_upstream_auth {{ default "Bearer {api_key}"; }}\n'
    )


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


class Server:
    """Creates, checks and removes the serving containers for one bundle name."""

    def __init__(self, runtime: Runtime, prefix: Path, name: str) -> None:
        self.runtime = runtime
        self.api = runtime.api
        self.prefix = prefix
        self.name = name
        self.secrets = prefix / "secrets"
        self.serve_dir = prefix / "serve"

    def container_name(self, role: str) -> str:
        return container_name(self.name, role)

    # -- containers ---------------------------------------------------------------------

    def _find(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = self.api.inspect_container(name)
            return data
        except docker.errors.NotFound:
            return None

    def _remove(self, ident: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(ident, force=True)

    def logs(self, ident: str, lines: int = 30) -> str:
        try:
            raw = self.api.logs(ident, tail=lines)
        except docker.errors.APIError:
            return ""
        return raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw)

    def _create(
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

    # -- the whole step ----------------------------------------------------------------

    def start(
        self,
        m: Manifest,
        release_dir: Path,
        release: str,
        images: dict[str, str],
        opts: ServeOptions,
        no_gpu: bool,
        previous: dict[str, dict[str, str]] | None = None,
    ) -> Served:
        """Start (or replace) the containers for ``release`` and prove the endpoint works.

        Raises:
            InstallError: a container failed to start or never became healthy (with
                its log tail); the previous containers are running again.
        """
        # New secrets (first start, or --rotate-token) are kept only once the new
        # containers proved healthy: a failed start leaves the old ones in force.
        token = current_secret(self.secrets / "bearer-token")
        api_key = current_secret(self.secrets / "vllm-api-key")
        fresh: dict[str, str] = {}
        if token is None or opts.rotate_token:
            token = fresh["bearer-token"] = new_secret()
        if api_key is None or opts.rotate_token:
            api_key = fresh["vllm-api-key"] = new_secret()
        if opts.tls_cert and opts.tls_key:
            tls_dir = self.secrets / "tls-user"
            tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(tls_dir / "server.crt", opts.tls_cert.read_bytes())
            atomic_write_bytes(tls_dir / "server.key", opts.tls_key.read_bytes(), mode=0o600)
            ca = str(opts.tls_cert)
        else:
            tls = ensure_tls(self.secrets / "tls", opts.server_names, opts.ips)
            tls_dir, ca = tls.cert.parent, str(tls.ca_cert)
        # Per start: containers restored after a failed start keep reading their own
        # configuration and auth file, never the new ones.
        start_id = f"{release}-{new_secret()[:8]}"
        serve_dir = self.serve_dir / slug(self.name) / start_id
        serve_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        auth_dir = self.secrets / "nginx" / slug(self.name)
        auth_file = auth_dir / f"{start_id}.conf"
        start_tls = auth_dir / f"{start_id}.tls"  # this start's copy of the certificate
        host_net = opts.network == "host"
        vllm_host = "127.0.0.1" if host_net else "0.0.0.0"
        upstream = (
            f"127.0.0.1:{opts.internal_port}"
            if host_net
            else f"{self.container_name('vllm')}:{opts.internal_port}"
        )
        elastic_dir = release_dir / "elastic"
        elser = any((elastic_dir / "elser").glob("*.metadata.json"))
        docs = sorted((elastic_dir / "product-docs").glob("kb-product-doc-*.zip"))
        listing = serve_dir / "product-docs.xml"
        atomic_write_bytes(listing, product_docs_listing(docs).encode(), mode=0o644)
        atomic_write_bytes(
            serve_dir / "nginx.conf",
            nginx_conf(
                opts.port,
                upstream,
                elser=elser,
                docs=bool(docs),
                artifacts_port=opts.artifacts_port,
            ).encode(),
            mode=0o644,
        )
        nginx_binds = {
            str(serve_dir / "nginx.conf"): {"bind": "/etc/airgap/nginx.conf", "mode": "ro"},
            str(auth_file): {"bind": "/etc/airgap/auth.conf", "mode": "ro"},
            str(start_tls): {"bind": "/etc/airgap/tls", "mode": "ro"},
        }
        if elser or docs:
            nginx_binds[str(elastic_dir)] = {"bind": ARTIFACT_ROOT, "mode": "ro"}
            nginx_binds[str(listing)] = {"bind": LISTING, "mode": "ro"}
        model_dir = model_mount(m.model.served_name)
        try:
            served_from = contained(release_dir / "models", m.model.served_name)
        except (ValueError, OSError) as e:
            raise InstallError(
                f"the model directory for {m.model.served_name!r} is not inside the release: {e}",
                hint="The release on disk does not match its signed index; reinstall the bundle.",
            ) from e
        stopped: dict[str, dict[str, str]] = {}
        started: dict[str, dict[str, str]] = {}
        try:
            auth_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(auth_file, auth_conf(token, api_key).encode(), mode=0o600)
            start_tls.mkdir(mode=0o700)
            for name, mode in (("server.crt", 0o644), ("server.key", 0o600)):
                atomic_write_bytes(start_tls / name, (tls_dir / name).read_bytes(), mode=mode)
            if not host_net:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.create_network(opts.network, driver="bridge", labels={MANAGED: "true"})
            self.check_nginx(images["nginx"], nginx_binds, opts.network)
            self._check_ours()  # both names, before either container is stopped
            self._stop_previous(stopped)
            vllm_id = self._create(
                "vllm",
                images["vllm"],
                command=vllm_command(
                    m, model_dir, vllm_host, opts.internal_port, opts.extra_vllm_args
                ),
                env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_API_KEY": api_key},
                binds={str(served_from): {"bind": model_dir, "mode": "ro"}},
                release=release,
                gpus="none" if no_gpu else opts.gpus,
                network=opts.network,
                ipc_host=True,
            )
            started["vllm"] = {"id": vllm_id, "name": self.container_name("vllm")}
            nginx_id = self._create(
                "nginx",
                images["nginx"],
                entrypoint=["/usr/sbin/nginx"],
                command=["-g", "daemon off;", "-c", "/etc/airgap/nginx.conf"],
                env={},
                binds=nginx_binds,
                release=release,
                gpus="none",
                network=opts.network,
                port=opts.port,
            )
            started["nginx"] = {"id": nginx_id, "name": self.container_name("nginx")}
            self.prove(opts.port, token, m.model.served_name, ca, started, opts.health_timeout)
            # Proven: the new secrets become the ones on record (still undone on failure).
            for name, value in fresh.items():
                atomic_write_bytes(self.secrets / name, value.encode() + b"\n", mode=0o600)
        except BaseException:
            for c in started.values():
                with contextlib.suppress(Exception):
                    self._remove(c["id"])
            with contextlib.suppress(OSError):
                auth_file.unlink()
            shutil.rmtree(start_tls, ignore_errors=True)
            shutil.rmtree(serve_dir, ignore_errors=True)
            if stopped:
                self._restore_previous(stopped)
                self._wait_healthy(opts.port, ca, opts.health_timeout)
            raise
        # The new release serves: what follows is tidying, and must not undo it.
        for c in stopped.values():
            try:
                self._remove(c["id"])
            except docker.errors.APIError as e:
                logger.warning("could not remove the replaced container %s: %s", c["name"], e)
        self._prune(auth_dir, start_id, (self.serve_dir / slug(self.name)), serve_dir)
        host = (
            opts.server_names[0]
            if opts.server_names
            else (opts.ips[0] if opts.ips else "localhost")
        )
        base = (
            f"http://{host}:{opts.artifacts_port}"
            if opts.artifacts_port
            else f"https://{host}:{opts.port}"
        )
        artifacts = {}
        if elser:
            artifacts["elser"] = f"{base}/elser"
        if docs:
            artifacts["product_docs"] = f"{base}/product-docs"
        return Served(
            url=f"https://{host}:{opts.port}/v1/chat/completions",
            ca_cert=ca,
            containers=started,
            port=opts.port,
            model=m.model.served_name,
            artifacts=artifacts,
        )

    def _check_ours(self) -> None:
        """Refuse, before anything stops, if a container name is taken by someone else."""
        for role in ("nginx", "vllm"):
            info = self._find(self.container_name(role))
            if info and info.get("Config", {}).get("Labels", {}).get(MANAGED) != "true":
                raise InstallError(
                    f"a container named {self.container_name(role)} exists and "
                    "was not created by airgap",
                    hint="Rename or remove it, then install again.",
                )

    def _stop_previous(self, stopped: dict[str, dict[str, str]]) -> None:
        """Stop and rename the containers that serve now, so the new ones can take over.

        ``stopped`` is filled as it goes, so a failure or Ctrl-C half-way still lets the
        caller restore exactly what was stopped.
        """
        for role in ("nginx", "vllm"):
            info = self._find(self.container_name(role))
            if info is None:
                continue
            ident = info["Id"]
            stopped[role] = {"id": ident, "name": self.container_name(role)}
            with contextlib.suppress(docker.errors.APIError):
                self.api.stop(ident, timeout=30)
            self.api.rename(ident, f"{self.container_name(role)}-previous-{int(time.time())}")

    def _prune(self, auth_dir: Path, keep: str, serve_root: Path, keep_serve: Path) -> None:
        """Remove this bundle's older per-start files (no container uses them any more)."""
        for old in auth_dir.iterdir():
            if old.name.rsplit(".", 1)[0] == keep:
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    old.unlink()
        for old in serve_root.iterdir() if serve_root.is_dir() else []:
            if old != keep_serve and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.secrets / "nginx-auth.conf").unlink()  # the single file of older versions

    def _restore_previous(self, stopped: dict[str, dict[str, str]]) -> None:
        for role in ("vllm", "nginx"):
            c = stopped.get(role)
            if c is None:
                continue
            with contextlib.suppress(docker.errors.APIError):
                self.api.rename(c["id"], c["name"])
                self.api.start(c["id"])

    def _wait_healthy(self, port: int, ca: str, timeout: float) -> bool:
        """Best effort: wait until the restored previous release answers /health."""
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (
                    session.get(
                        f"https://127.0.0.1:{port}/health", timeout=5, verify=ca
                    ).status_code
                    == 200
                ):
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.5)
        logger.warning("the previous release did not answer /health again within %.0fs", timeout)
        return False

    def prove(
        self,
        port: int,
        token: str,
        model: str,
        ca: str,
        started: dict[str, dict[str, str]],
        timeout: float,
    ) -> None:
        """Health, the model list and one chat completion, through Nginx over TLS."""
        base = f"https://127.0.0.1:{port}"
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace our CA; no proxies
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            for role, c in started.items():
                state = (self._find(c["id"]) or {}).get("State", {})
                if not state.get("Running", False):
                    raise InstallError(
                        f"the {role} container stopped (exit {state.get('ExitCode')}); "
                        f"its last log lines:\n{self.logs(c['id'])}",
                        hint="Fix what the log says (model files, flags, GPU), then install "
                        "again; the previous release keeps serving.",
                    )
            try:
                r = session.get(f"{base}/health", timeout=5, verify=ca)
                if r.status_code == 200:
                    break
                last = f"/health answered {r.status_code}"
            except requests.RequestException as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise InstallError(
                    f"vLLM was not healthy after {timeout:.0f}s ({last}); its last log "
                    f"lines:\n{self.logs(started['vllm']['id'])}",
                    hint="Large models take minutes to load: raise --health-timeout, or fix "
                    "what the log says.",
                )
            time.sleep(1)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            r = session.get(f"{base}/v1/models", headers=headers, timeout=30, verify=ca)
            names = [d.get("id") for d in r.json().get("data", [])] if r.ok else []
            if model not in names:
                raise InstallError(
                    f"/v1/models through nginx answered {r.status_code} "
                    f"without {model!r} (got {names})"
                )
            r = session.post(
                f"{base}/v1/chat/completions",
                verify=ca,
                headers=headers,
                timeout=300,
                json={
                    "model": model,
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Say hello."}],
                },
            )
            if r.status_code != 200 or not r.json().get("choices"):
                raise InstallError(
                    f"the test chat completion answered {r.status_code}: {r.text[:300]}"
                )
        except (requests.RequestException, ValueError) as e:
            raise InstallError(
                f"the endpoint did not answer correctly: {e}; vLLM log:\n"
                f"{self.logs(started['vllm']['id'])}"
            ) from e

    def remove(self, containers: dict[str, dict[str, str]]) -> list[str]:
        removed = []
        for c in containers.values():
            if self._find(c["id"]) is not None:
                self._remove(c["id"])
                removed.append(f"container {c['name']}")
        return removed

    def running(self, containers: dict[str, dict[str, str]]) -> dict[str, bool]:
        return {
            role: bool((self._find(c["id"]) or {}).get("State", {}).get("Running"))
            for role, c in containers.items()
        }


def served_record(s: Served) -> dict[str, Any]:
    return {
        "url": s.url,
        "ca_cert": s.ca_cert,
        "port": s.port,
        "model": s.model,
        "containers": s.containers,
        "artifacts": s.artifacts,
    }


def product_docs_listing(files: list[Path]) -> str:
    """An S3 ``ListBucketResult`` of the product-doc artifacts: what Kibana lists with
    ``GET <artifactRepositoryUrl>?max-keys=1000``, and reads as ``index.xml`` for a
    ``file://`` repository."""
    rows = []
    for f in files:
        st = f.stat()
        modified = datetime.fromtimestamp(st.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        rows.append(
            "  <Contents>\n"
            f"    <Key>{escape(f.name)}</Key>\n"
            f"    <LastModified>{modified}</LastModified>\n"
            f"    <Size>{st.st_size}</Size>\n"
            "    <StorageClass>STANDARD</StorageClass>\n"
            "  </Contents>\n"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\n'
        "  <Name>airgap-product-docs</Name>\n  <Prefix></Prefix>\n  <Marker></Marker>\n"
        f"  <MaxKeys>1000</MaxKeys>\n  <IsTruncated>false</IsTruncated>\n{''.join(rows)}"
        "</ListBucketResult>\n"
    )
