"""``--target kubernetes``: images and the model into a registry, a kustomize base for a cluster.

:class:`KubernetesTarget` is a :class:`~bundler.install.targets.RegistryTarget` (the
images are pushed the same way, tags refused when they name another manifest) that
also pushes the model, in the one form asked for, as it streams out of the verified
bundle (:mod:`bundler.k8s.artifact`). Its manifest goes last, after the images'.

After the pass, :func:`deploy` writes the secrets (the existing token, key and CA code,
under ``<prefix>/secrets`` as for a single host), renders the base
(:mod:`bundler.k8s.render`) into the release (``releases/<key>/kubernetes``, which
rollback applies) and into ``-o DIR``, and returns what the receipt records.
:func:`apply` runs ``kubectl`` when ``--apply`` asks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bundler.bundle.index import ImageEntry, Index
from bundler.errors import InstallError
from bundler.fsutil import atomic_write_bytes
from bundler.install.feeds import ArchiveFeed, RegistryFeed
from bundler.install.layout import Layout
from bundler.install.options import InstallResult
from bundler.install.records import (
    ImageRecord,
    KubernetesRecord,
    KubernetesSpec,
    ServeOptions,
    ServeRecord,
)
from bundler.install.serveconf import auth_conf, nginx_conf, vllm_command
from bundler.install.state import ReceiptFile
from bundler.install.targets import RegistryTarget
from bundler.install.tlsgen import current_secret, ensure_tls, new_secret
from bundler.k8s.apply import Commands
from bundler.k8s.artifact import ArtifactFeed, ModelcarFeed, ModelFeed
from bundler.k8s.options import BASE_MARKER, K8sOptions, check_output_dir, is_ip, k8s_name
from bundler.k8s.render import Deployable, Secrets, write_base
from bundler.manifest import parse_manifest
from bundler.names import model_mount, registry_name
from bundler.oci.media import OCI_MANIFEST
from bundler.oci.registry import Registry


class KubernetesTarget(RegistryTarget):
    kind = "kubernetes"

    def __init__(self, registry: Registry, k8s: K8sOptions, *, replace_tags: bool = False) -> None:
        super().__init__(registry, replace_tags=replace_tags)
        self.k8s = k8s
        self.model_feed: ModelFeed | None = None
        self.model_digest: str | None = None

    def spec(self) -> KubernetesSpec:  # type: ignore[override]
        return KubernetesSpec(
            registry=self.registry.spec,
            insecure=self.registry.scheme == "http",
            base_dir=str(Path(self.k8s.output).resolve()),
        )

    def served_name(self) -> str:
        assert self.index is not None
        return parse_manifest(self.index.manifest, source="the signed manifest").model.served_name

    def open_model_feed(self) -> ModelFeed:
        """The feed for the model's files (the sink routes them here, verified only)."""
        assert self.index is not None
        index = self.index
        served = self.served_name()
        repo, tag = registry_name(self.registry.prefix, index.name, index.version, "model")
        root = f"models/{served}/"
        if self.k8s.model_artifact == "oci":
            self.model_feed = ArtifactFeed(self.registry, repo, tag, list(index.files), root)
        else:
            vllm = _image(index, "vllm")
            base_repo, _ = self.name_for(vllm)
            self.model_feed = ModelcarFeed(
                self.registry,
                repo,
                tag,
                list(index.files),
                root,
                layer_root=model_mount(served).lstrip("/"),
                base=vllm,
                base_repository=base_repo,
                mtime=int(index.created_at.timestamp()),
            )
        self.model_feed.replace_tags = self.replace_tags
        return self.model_feed

    def finish(
        self,
        feed: ArchiveFeed | RegistryFeed | None,
        images: list[ImageEntry],
        manifests: dict[str, bytes],
    ) -> None:
        super().finish(feed, images, manifests)
        assert self.model_feed is not None
        self.model_digest = self.model_feed.finish()  # the model's manifest: last of all

    def model_record(self) -> ImageRecord:
        assert self.model_feed is not None and self.model_digest is not None
        return ImageRecord(
            role="model",
            ref=self.model_feed.ref,
            source_ref=self.model_feed.root.rstrip("/"),
            id=self.model_digest,
            media_type=OCI_MANIFEST,
            created_by_us=True,
        )

    def by_digest(self, record: ImageRecord) -> str:
        name, _ = self._name(record)
        return f"{self.registry.host}/{name}@{record.id}"

    def close(self) -> None:
        if self.model_feed is not None and self.model_digest is None:
            self.model_feed.abort()
        super().close()


def _image(index: Index, role: str) -> ImageEntry:
    for img in index.images:
        if img.role == role:
            return img
    raise InstallError(f"the signed index carries no {role} image; Kubernetes needs it")


def _secrets(layout: Layout, serve: ServeOptions, names: tuple[str, ...]) -> tuple[Secrets, Path]:
    """Token, vLLM key and TLS, made (or kept) under ``<prefix>/secrets``; the CA's path."""
    values = {}
    for path in (layout.token_file, layout.api_key_file):
        value = current_secret(path)
        if value is None or serve.rotate_token:
            value = new_secret()
            layout.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(path, value.encode() + b"\n", mode=0o600)
        values[path] = value
    token, api_key = values[layout.token_file], values[layout.api_key_file]
    if serve.tls_cert and serve.tls_key:
        crt, key, ca = serve.tls_cert, serve.tls_key, serve.tls_cert
    else:
        tls = ensure_tls(layout.tls_dir, names, serve.ips)
        crt, key, ca = tls.cert, tls.key, tls.ca_cert
    secrets = Secrets(
        token=token,
        api_key=api_key,
        auth_conf=auth_conf(token, api_key),
        tls_crt=crt.read_bytes(),
        tls_key=key.read_bytes(),
        ca_crt=ca.read_bytes(),
    )
    return secrets, ca


def deploy(
    target: KubernetesTarget,
    layout: Layout,
    key: str,
    images: list[ImageRecord],
    serve: ServeOptions,
    no_gpu: bool,
) -> tuple[KubernetesRecord, ServeRecord | None]:
    """Write the secrets and the base (into the release and ``-o DIR``).

    Raises:
        InstallError: a record the base needs is missing.
        UsageError: ``-o DIR`` holds files airgap did not write.
    """
    k8s = target.k8s
    release = layout.release(key)
    index_file = layout.index_file(release)
    from bundler.bundle.index import parse_index

    index = parse_index(index_file.read_bytes())
    m = parse_manifest(index.manifest, source=f"{key} (signed manifest)")
    name = f"airgap-{k8s_name(index.name)}"
    namespace = k8s.namespace or name
    by_role = {r.role: r for r in images}
    missing = [r for r in ("vllm", "nginx", "model") if r not in by_role]
    if missing:
        raise InstallError(f"{key}: no {', '.join(missing)} in the registry records")
    service_dns = (f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local")
    hosts = [h for h in (k8s.public_host, k8s.ingress_host) if h and not is_ip(h)]
    names = tuple(dict.fromkeys([*serve.server_names, *hosts, *service_dns]))
    secrets, ca = _secrets(layout, serve, names)
    model_bytes = sum(
        f.size for f in index.files if f.path.startswith(f"models/{m.model.served_name}/")
    )
    s = m.serve
    d = Deployable(
        name=name,
        bundle=index.name,
        version=index.version,
        namespace=namespace,
        served_name=m.model.served_name,
        model_dir_name=model_mount(m.model.served_name).rsplit("/", 1)[1],
        vllm_image=target.by_digest(by_role["vllm"]),
        nginx_image=target.by_digest(by_role["nginx"]),
        model_image=target.by_digest(by_role["model"]),
        model_bytes=model_bytes,
        vllm_args=vllm_command(
            m,
            model_mount(m.model.served_name),
            "0.0.0.0",
            serve.internal_port,
            serve.extra_vllm_args,
        ),
        nginx_conf=nginx_conf(
            serve.port, f"127.0.0.1:{serve.internal_port}", auth="/etc/airgap/auth/auth.conf"
        ),
        secrets=secrets,
        port=serve.port,
        internal_port=serve.internal_port,
        gpus=0 if no_gpu else s.tensor_parallel_size * s.pipeline_parallel_size,
        replicas=k8s.replicas,
        volume=k8s.volume,
        pvc=k8s.model_pvc,
        health_timeout=serve.health_timeout,
        ingress_host=k8s.ingress_host,
        ingress_class=k8s.ingress_class,
        openshift=k8s.openshift,
        runtime_class=k8s.runtime_class,
    )
    release_base = release / "kubernetes"
    files = write_base(d, release_base)
    out = Path(k8s.output)
    check_output_dir(out)
    if out.resolve() != release_base.resolve():
        write_base(d, out)
    record = KubernetesRecord(
        namespace=namespace,
        deployment=name,
        base_dir=str(out.resolve()),
        release_base=str(release_base),
        files=files,
        k8s_version=k8s.k8s_version,
        model_artifact=k8s.model_artifact,
        model_volume=k8s.volume,
        model_ref=d.model_image,
    )
    served = None
    if k8s.public_url:
        served = ServeRecord(
            url=f"{k8s.public_url.rstrip('/')}/v1/chat/completions",
            ca_cert=str(ca),
            port=k8s.public_port,
            model=m.model.served_name,
            token_file=str(layout.token_file),
        )
    return record, served


def commands(record: KubernetesRecord, base: str | None = None, timeout: float = 900) -> Commands:
    return Commands(
        Path(base or record.base_dir), record.namespace, record.deployment, int(timeout)
    )


def apply(record: KubernetesRecord, timeout: float, base: str | None = None) -> KubernetesRecord:
    """``kubectl apply`` the base, then wait for the rollout.

    Raises:
        UsageError: kubectl is not installed.
        InstallError: kubectl failed (the release stays pushed and written).
    """
    from bundler.k8s import apply as kubectl

    cmds = commands(record, base, timeout)
    kubectl.run(cmds.apply())
    kubectl.run(cmds.rollout(), timeout=timeout + 60)
    return record.model_copy(update={"applied": True})


def remove_base(record: KubernetesRecord) -> None:
    """The base airgap wrote at ``-o DIR`` (only when it is still ours)."""
    out = Path(record.base_dir)
    if (out / BASE_MARKER).is_file():
        shutil.rmtree(out, ignore_errors=True)


def after_deploy(
    result: InstallResult,
    layout: Layout,
    store: ReceiptFile,
    k8s: K8sOptions,
    serve: ServeOptions | None,
) -> None:
    """Report the base and its commands; with ``--apply`` run them (recorded once done).

    Raises:
        InstallError: kubectl failed; the release stays pushed and written, and the same
            command applies it again.
    """
    key = f"{result.name}-{result.version}"
    rel = store.receipt.releases[key]
    assert rel.kubernetes is not None
    timeout = (serve or ServeOptions()).health_timeout
    rec = rel.kubernetes
    result.kubernetes = {
        "base": rec.base_dir,
        "namespace": rec.namespace,
        "deployment": rec.deployment,
        "model": rec.model_ref,
        "model_artifact": rec.model_artifact,
        "model_volume": rec.model_volume,
        "k8s_version": rec.k8s_version,
        "commands": commands(rec, timeout=timeout).install_lines(),
        "applied": False,
    }
    if k8s.apply:
        rec = apply(rec, timeout)
        store.save(store.receipt.with_release(key, rel.model_copy(update={"kubernetes": rec})))
        result.kubernetes["applied"] = True
