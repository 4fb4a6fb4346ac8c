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
import shutil
from pathlib import Path

from bundler.bundle.index import INDEX_MEMBER, parse_index
from bundler.errors import AirgapError, BundleError, InstallError
from bundler.fsutil import atomic_write_bytes
from bundler.install.health import prove, wait_healthy
from bundler.install.layout import Layout
from bundler.install.records import ContainerRef, ServedWith, ServeOptions, ServeRecord
from bundler.install.serveconf import (
    ARTIFACT_ROOT,
    LISTING,
    auth_conf,
    nginx_conf,
    product_docs_listing,
    vllm_command,
)
from bundler.install.tlsgen import current_secret, ensure_tls, new_secret, restore, snapshot
from bundler.manifest import Manifest, parse_manifest
from bundler.names import DOC_FILE_RE, IMAGE_ROLES, contained, model_mount
from bundler.oci.engine import Containers, Runtime

logger = logging.getLogger(__name__)


def serve_release(
    server: Server, release_dir: Path, key: str, serve: ServeOptions, no_gpu: bool
) -> ServeRecord:
    """Serve the installed release ``key`` from ``release_dir``, the way ``serve`` says.

    Raises:
        InstallError: it did not start or prove healthy; what served before serves again.
    """
    index = parse_index(server.layout.index_file(release_dir).read_bytes())
    m = parse_manifest(index.manifest, source=f"{key} (signed manifest)")
    images = {img.role: img.config_digest for img in index.images}
    missing = [role for role in IMAGE_ROLES if role not in images]
    if missing:  # install refuses such an index; a release on disk may predate that check
        raise BundleError(
            f"the signed index carries no {' or '.join(missing)} image, so {key} cannot be served",
            bundle=str(release_dir),
            member=INDEX_MEMBER,
            hint="Install a bundle built by `airgap build`, which carries both images.",
        )
    return server.start(m, release_dir, key, images, serve, no_gpu)


class Server:
    """Starts (or replaces) and removes the serving containers for one bundle name."""

    def __init__(self, runtime: Runtime, layout: Layout, name: str) -> None:
        self.layout = layout
        self.name = name
        self.containers = Containers(runtime, name, owner=str(layout.prefix.resolve()))

    def remove(self, containers: dict[str, ContainerRef]) -> list[str]:
        return self.containers.remove({r: c.model_dump() for r, c in containers.items()})

    def running(self, containers: dict[str, ContainerRef]) -> dict[str, bool]:
        return self.containers.running({r: c.model_dump() for r, c in containers.items()})

    def start(
        self,
        m: Manifest,
        release_dir: Path,
        release: str,
        images: dict[str, str],
        opts: ServeOptions,
        no_gpu: bool,
    ) -> ServeRecord:
        """Start (or replace) the containers for ``release`` and prove the endpoint works.

        Raises:
            InstallError: a container failed to start or never became healthy (with
                its log tail); the previous containers are running again.
        """
        # New secrets (first start, or --rotate-token) are kept only once the new
        # containers proved healthy: a failed start leaves the old ones in force.
        token = current_secret(self.layout.token_file)
        api_key = current_secret(self.layout.api_key_file)
        fresh: dict[Path, str] = {}
        if token is None or opts.rotate_token:
            token = fresh[self.layout.token_file] = new_secret()
        if api_key is None or opts.rotate_token:
            api_key = fresh[self.layout.api_key_file] = new_secret()
        tls_before: dict[str, bytes] | None = None  # undone if this start fails
        if opts.tls_cert and opts.tls_key:
            tls_dir = self.layout.user_tls_dir
            tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(tls_dir / "server.crt", opts.tls_cert.read_bytes())
            atomic_write_bytes(tls_dir / "server.key", opts.tls_key.read_bytes(), mode=0o600)
            ca = str(opts.tls_cert)
        else:
            tls_before = snapshot(self.layout.tls_dir)
            tls = ensure_tls(self.layout.tls_dir, opts.server_names, opts.ips)
            tls_dir, ca = tls.cert.parent, str(tls.ca_cert)
        # Per start: containers restored after a failed start keep reading their own
        # configuration and auth file, never the new ones.
        start_id = f"{release}-{new_secret()[:8]}"
        serve_dir = self.layout.serve_dir(self.name) / start_id
        serve_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        auth_dir = self.layout.auth_dir(self.name)
        auth_file = auth_dir / f"{start_id}.conf"
        start_tls = auth_dir / f"{start_id}.tls"  # this start's copy of the certificate
        host_net = opts.network == "host"
        vllm_host = "127.0.0.1" if host_net else "0.0.0.0"
        upstream = (
            f"127.0.0.1:{opts.internal_port}"
            if host_net
            else f"{self.containers.container_name('vllm')}:{opts.internal_port}"
        )
        elastic_dir = release_dir / "elastic"
        elser = any((elastic_dir / "elser").glob("*.metadata.json"))
        docs = sorted(  # product docs, OpenAPI specs, Security Labs: one repository
            p for p in (elastic_dir / "product-docs").glob("*.zip") if DOC_FILE_RE.match(p.name)
        )
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
                self.containers.ensure_network(opts.network)
            self.containers.check_nginx(images["nginx"], nginx_binds, opts.network)
            self.containers.check_ours()  # both names, before either container is stopped
            self.containers.stop_previous(stopped)
            vllm_id = self.containers.create(
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
            started["vllm"] = {"id": vllm_id, "name": self.containers.container_name("vllm")}
            nginx_id = self.containers.create(
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
            started["nginx"] = {"id": nginx_id, "name": self.containers.container_name("nginx")}
            prove(
                self.containers,
                opts.port,
                token,
                m.model.served_name,
                ca,
                started,
                opts.health_timeout,
            )
            # Proven: the new secrets become the ones on record (still undone on failure).
            for path, value in fresh.items():
                atomic_write_bytes(path, value.encode() + b"\n", mode=0o600)
        except BaseException:
            for c in started.values():
                with contextlib.suppress(AirgapError):
                    self.containers.remove_one(c["id"])
            with contextlib.suppress(OSError):
                auth_file.unlink()
            shutil.rmtree(start_tls, ignore_errors=True)
            shutil.rmtree(serve_dir, ignore_errors=True)
            if tls_before is not None:  # a CA made for new names goes with the failed start
                restore(self.layout.tls_dir, tls_before)
            if stopped:
                self.containers.restore_previous(stopped)
                wait_healthy(opts.port, ca, opts.health_timeout)
            raise
        # The new release serves: what follows is tidying, and must not undo it.
        for c in stopped.values():
            try:
                self.containers.remove_one(c["id"])
            except AirgapError as e:
                logger.warning("could not remove the replaced container %s: %s", c["name"], e)
        self._prune(auth_dir, start_id, self.layout.serve_dir(self.name), serve_dir)
        base = opts.artifacts_base
        artifacts = {}
        if elser:
            artifacts["elser"] = f"{base}/elser"
        if docs:
            artifacts["product_docs"] = f"{base}/product-docs"
        return ServeRecord(
            url=f"https://{opts.host}:{opts.port}/v1/chat/completions",
            ca_cert=ca,
            port=opts.port,
            model=m.model.served_name,
            containers={role: ContainerRef(**c) for role, c in started.items()},
            artifacts=artifacts,
            internal_port=opts.internal_port,
            artifacts_port=opts.artifacts_port,
            token_file=str(self.layout.token_file),
            options=ServedWith(**opts.model_dump(), no_gpu=no_gpu),
        )

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
            self.layout.legacy_auth_file.unlink()  # the single file of older versions
