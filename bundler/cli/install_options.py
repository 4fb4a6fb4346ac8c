"""The option groups of ``install``: each builds the object the installer takes.

twine's ``register``/``from_args`` pattern: ``serve`` ->
:class:`~bundler.install.serve.ServeOptions` (None: serve nothing), ``images`` ->
:class:`ImageDestination`, ``elastic`` -> :class:`ElasticRequest`, which turns into
Kibana and Elasticsearch options once the credentials (``access``) are loaded.
Kept apart from the command so that ``cli/install.py`` reads as the command alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from bundler import env
from bundler.cli.options import Decorator, Params, dir_option, file_option, option_group

if TYPE_CHECKING:
    from bundler.install.elastic.connector import Verification
    from bundler.install.elastic.elasticsearch import EsOptions
    from bundler.install.elastic.kibana import KibanaOptions
    from bundler.install.elastic.steps import ElasticAccess
    from bundler.install.records import ServeOptions

TargetKind = Literal["engine", "registry", "kubernetes"]


# -- serve: vLLM behind Nginx --------------------------------------------------------------


def _serve_options(kw: Params) -> ServeOptions | None:
    from bundler.install.records import ServeOptions

    tls_cert, tls_key = kw.pop("tls_cert"), kw.pop("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    opts = ServeOptions(
        port=kw.pop("port"),
        internal_port=kw.pop("internal_port"),
        server_names=kw.pop("server_names"),
        ips=kw.pop("ips"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        rotate_token=kw.pop("rotate_token"),
        gpus=kw.pop("gpus") or env.cuda_visible_devices() or "all",
        health_timeout=kw.pop("health_timeout"),
        network=kw.pop("network"),
        extra_vllm_args=kw.pop("vllm_args"),
        artifacts_port=kw.pop("artifacts_port") or None,
    )
    return None if kw.pop("no_serve") else opts


def _port(name: str, default: int, help: str, low: int = 1) -> Decorator:
    return click.option(
        name, type=click.IntRange(low, 65535), default=default, show_default=True, help=help
    )


serve_options = option_group(
    "serve",
    _serve_options,
    _port("--port", 8443, "Nginx's TLS port: the only one published."),
    _port("--internal-port", 8000, "vLLM's port behind Nginx (loopback with host networking)."),
    click.option(
        "--server-name",
        "server_names",
        multiple=True,
        help="DNS name Kibana uses for this host (certificate SAN; repeatable).",
    ),
    click.option("--ip", "ips", multiple=True, help="IP address for the certificate (repeatable)."),
    file_option(
        "--tls-cert", help="Your certificate (PEM, with chain) instead of a generated one."
    ),
    file_option("--tls-key", help="The key of --tls-cert."),
    click.option("--rotate-token", is_flag=True, help="Replace the bearer token and vLLM key."),
    click.option(
        "--gpus",
        default=None,
        help="GPUs for vLLM: all, or indices/GPU-UUIDs like 0,1 (default: CUDA_VISIBLE_DEVICES, "
        "else all; --no-gpu for none).",
    ),
    click.option(
        "--health-timeout",
        type=float,
        default=900.0,
        show_default=True,
        help="Seconds to wait for vLLM to load the model and answer.",
    ),
    click.option(
        "--network",
        default="host",
        show_default=True,
        help="host, or a Docker network to create/use for the two containers.",
    ),
    click.option(
        "--vllm-arg",
        "vllm_args",
        multiple=True,
        help="An extra vLLM flag at install time (repeatable), after the manifest's.",
    ),
    click.option(
        "--no-serve", is_flag=True, help="Put files and images in place but start no container."
    ),
    _port(
        "--artifacts-port",
        8081,
        "Plain-HTTP port where Nginx serves ELSER and product docs (0: TLS port only).",
        low=0,
    ),
)


# -- images: into the engine, or pushed to a registry --------------------------------------


@dataclass(frozen=True)
class ImageDestination:
    kind: TargetKind
    registry: str | None  # HOST[:PORT][/PREFIX] when kind is "registry"
    registry_insecure: bool
    registry_ca: Path | None
    replace_tags: bool
    tag_source_refs: bool


def _image_destination(kw: Params) -> ImageDestination:
    target, registry = kw.pop("target"), kw.pop("registry")
    if target in ("registry", "kubernetes") and not registry:
        raise click.UsageError(
            f"--target {target} needs --registry HOST[:PORT][/PREFIX]: the registry to push to"
        )
    if target == "engine" and registry:
        raise click.UsageError("--registry pushes to a registry: drop it, or use --target registry")
    kind: TargetKind = (
        "kubernetes" if target == "kubernetes" else ("registry" if registry else "engine")
    )
    return ImageDestination(
        kind=kind,
        registry=registry,
        registry_insecure=kw.pop("registry_insecure"),
        registry_ca=kw.pop("registry_ca"),
        replace_tags=kw.pop("replace_tags"),
        tag_source_refs=kw.pop("tag_source_refs"),
    )


image_options = option_group(
    "images",
    _image_destination,
    click.option(
        "--target",
        type=click.Choice(["engine", "registry", "kubernetes"]),
        default=None,
        help="Where the images go: the container engine (default), the OCI registry "
        "named by --registry (which alone means --target registry), or that registry plus "
        "a kustomize base for a Kubernetes cluster (-o DIR).",
    ),
    click.option(
        "--registry",
        default=None,
        metavar="HOST[:PORT][/PREFIX]",
        help="Push the images to this OCI registry instead of loading them.",
    ),
    click.option(
        "--registry-insecure",
        is_flag=True,
        help="Plain HTTP to --registry (always so for loopback registries).",
    ),
    file_option("--registry-ca", help="CA bundle that signs --registry's TLS certificate."),
    click.option(
        "--replace-tags",
        is_flag=True,
        help="Let install move an existing image tag (engine) or registry tag that points at "
        "a different image; refused by default.",
    ),
    click.option(
        "--tag-source-refs",
        is_flag=True,
        help="Also tag loaded images with the references the bundle was built from (e.g. "
        "docker.io/vllm/vllm-openai:v0.9.1), not only localhost/airgap/<bundle>/<role>:<version>.",
    ),
)


# -- elastic: the Kibana connector, the ELSER endpoint, copied artifacts -------------------


@dataclass(frozen=True)
class ElasticRequest:
    """What to set up in Kibana and Elasticsearch; credentials come from ``access``."""

    kibana_url: str | None
    kibana_space: str
    kibana_mode: Literal["api", "preconfigured"]
    kibana_version: str | None
    kibana_verification: Verification
    kibana_test: bool
    es_url: str | None
    elser_endpoint_id: str | None
    es_timeout: float
    elser_dir: Path | None
    product_docs_dir: Path | None

    @property
    def wants_kibana(self) -> bool:
        return bool(self.kibana_url) or self.kibana_mode == "preconfigured"

    def kibana(self, access: ElasticAccess) -> KibanaOptions | None:
        """Raises: UsageError: ``--kibana-version`` is not a version (refused before install)."""
        from bundler.install.elastic.connector import parse_version
        from bundler.install.elastic.kibana import KibanaOptions

        if self.kibana_version:
            parse_version(self.kibana_version)
        if not self.wants_kibana:
            return None
        return KibanaOptions(
            url=self.kibana_url,
            credentials=access.kibana,
            space=self.kibana_space,
            ca=access.kibana_ca,
            insecure=access.kibana_insecure,
            mode=self.kibana_mode,
            version=self.kibana_version,
            verification=self.kibana_verification,
            test=self.kibana_test,
        )

    def elasticsearch(self, access: ElasticAccess) -> EsOptions | None:
        from bundler.install.elastic.elasticsearch import EsOptions

        if not self.es_url:
            return None
        return EsOptions(
            self.es_url,
            access.es,
            ca=access.es_ca,
            insecure=access.es_insecure,
            endpoint_id=self.elser_endpoint_id or "airgap-elser",
            endpoint_id_given=self.elser_endpoint_id is not None,
            timeout=self.es_timeout,
        )


def _elastic_request(kw: Params) -> ElasticRequest:
    return ElasticRequest(
        kibana_url=kw.pop("kibana_url"),
        kibana_space=kw.pop("kibana_space"),
        kibana_mode=kw.pop("kibana_mode"),
        kibana_version=kw.pop("kibana_version"),
        kibana_verification=kw.pop("kibana_verification"),
        kibana_test=not kw.pop("no_kibana_test"),
        es_url=kw.pop("es_url"),
        elser_endpoint_id=kw.pop("elser_endpoint_id"),
        es_timeout=kw.pop("es_timeout"),
        elser_dir=kw.pop("elser_dir"),
        product_docs_dir=kw.pop("product_docs_dir"),
    )


elastic_options = option_group(
    "elastic",
    _elastic_request,
    click.option("--kibana-url", default=None, help="Register the connector in this Kibana."),
    click.option("--kibana-space", default="default", show_default=True, help="Kibana space."),
    click.option(
        "--kibana-mode",
        type=click.Choice(["api", "preconfigured"]),
        default="api",
        show_default=True,
        help="api: create/update through Kibana's API; preconfigured: write a kibana.yml snippet.",
    ),
    click.option(
        "--kibana-version",
        default=None,
        help="preconfigured mode: the Kibana version to write config keys for (default 8.16).",
    ),
    click.option(
        "--kibana-verification",
        type=click.Choice(["full", "certificate", "none"]),
        default="full",
        show_default=True,
        help="How Kibana checks the endpoint's certificate (Kibana 8.19+/9.1+).",
    ),
    click.option("--no-kibana-test", is_flag=True, help="Skip the connector's _execute test."),
    click.option(
        "--es-url",
        default=None,
        help="Elasticsearch: the model's inference endpoint (Kibana 9.4+), and ELSER.",
    ),
    click.option(
        "--elser-endpoint-id",
        "--es-inference-id",
        "elser_endpoint_id",
        default=None,
        help="Id of the ELSER endpoint airgap creates on Elasticsearch before 8.17 (default "
        "airgap-elser; 8.17+ has .elser-2-elasticsearch built in). --es-inference-id is "
        "its older name.",
    ),
    click.option(
        "--es-timeout",
        type=float,
        default=1200.0,
        show_default=True,
        help="Seconds to wait for ELSER to download and deploy.",
    ),
    dir_option(
        "--elser-dir",
        "Copy ELSER into this dir (Elasticsearch's config/models) for a file:// repository.",
    ),
    dir_option(
        "--product-docs-dir",
        "Copy product docs and an index.xml into this dir for a file:// repository.",
    ),
)
