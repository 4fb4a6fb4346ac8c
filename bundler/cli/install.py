"""The air-gapped side: ``install`` (its option groups are in ``cli/install_options.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from bundler.cli.install_options import elastic_options, image_options, serve_options
from bundler.cli.k8s_options import k8s_options
from bundler.cli.kb_options import kb_options
from bundler.cli.llm_options import llm_options
from bundler.cli.options import (
    elastic_access_options,
    host_options,
    json_option,
    reporter,
    state,
    trust_options,
)
from bundler.cli.output import note, print_json, render_checks, show_install
from bundler.cli.streamopts import stall_timeout_option

if TYPE_CHECKING:
    from bundler.cli.install_options import ElasticRequest, ImageDestination
    from bundler.cli.k8s_options import K8sRequest
    from bundler.cli.options import HostInputs, TrustInputs
    from bundler.install.elastic.kbroutes import KbOptions
    from bundler.install.elastic.steps import ElasticAccess
    from bundler.install.elastic.wiring import LlmOptions
    from bundler.install.options import Check
    from bundler.install.records import ServeOptions


@click.command()
@click.argument("bundle", type=str)
@trust_options
@host_options
@click.option("--dry-run", is_flag=True, help="Verify trust and run the preflight; change nothing.")
@click.option("--allow-downgrade", is_flag=True, help="Install a lower version on purpose.")
@click.option("--no-gpu", is_flag=True, help="Do not expect a GPU (CPU images, tests).")
@click.option(
    "--skip-fit-check",
    is_flag=True,
    help="Warn instead of refusing when the model does not fit the GPUs' memory.",
)
@click.option(
    "--skip-driver-check",
    is_flag=True,
    help="Warn instead of refusing when the driver is older than the image's CUDA needs.",
)
@click.option(
    "--accept-license",
    metavar="ID",
    help="Accept the model's licence (the id the preflight shows): needed for a gated "
    "model or a licence that is not OSI-approved, unknown, `other` or missing.",
)
@serve_options
@image_options
@k8s_options
@elastic_options
@llm_options
@kb_options
@elastic_access_options
@click.option(
    "--base-bundle",
    type=str,
    default=None,
    help="A delta's base bundle (file or first part): what the delta reuses is taken from "
    "it, verified, instead of from the installed base release.",
)
@stall_timeout_option
@json_option
def install(
    bundle: str,
    trust: TrustInputs,
    host: HostInputs,
    dry_run: bool,
    allow_downgrade: bool,
    no_gpu: bool,
    skip_fit_check: bool,
    skip_driver_check: bool,
    accept_license: str | None,
    serve: ServeOptions | None,
    images: ImageDestination,
    kubernetes: K8sRequest,
    elastic: ElasticRequest,
    llm: LlmOptions,
    kb: KbOptions,
    access: ElasticAccess,
    base_bundle: str | None,
    stall_timeout: float,
    start_timeout: float,
    as_json: bool,
) -> None:
    """Verify BUNDLE and install it: files into a release, images into the engine, then
    serve the model and wire it into Elastic (an Elasticsearch inference endpoint made
    Kibana's default model, or a Kibana connector), ELSER into Elasticsearch, and Kibana's
    knowledge base and product docs on it."""
    from bundler.bundle.detached import collect_signatures
    from bundler.bundle.parts import locate_bundle
    from bundler.install.elastic.wiring import check_request
    from bundler.install.installer import install as run_install
    from bundler.install.options import InstallOptions

    k8s = kubernetes.options() if images.kind == "kubernetes" else None
    if k8s is None and kubernetes.output:
        raise click.UsageError("-o DIR is where --target kubernetes writes its base: add it")
    if images.kind == "registry":
        serve = None  # the images are only pushed: nothing runs here
    if k8s is not None and (elastic.wants_kibana or elastic.es_url) and not k8s.public_url:
        raise click.UsageError(
            "--target kubernetes with Kibana/Elasticsearch needs --public-url: the address "
            "they call the model at (the Ingress, Route or Service)"
        )
    if elastic.wants_kibana and serve is None:
        raise click.UsageError(
            "the Kibana connector needs the served endpoint: drop --no-serve/--registry"
        )
    check_request(
        llm, es_url=elastic.es_url, kibana_url=elastic.kibana_url, kibana_mode=elastic.kibana_mode
    )
    kibana = elastic.kibana(access)
    es = elastic.elasticsearch(access)
    trusted = trust.load()
    loc = locate_bundle(bundle)
    opts = InstallOptions(
        bundle=bundle,
        trusted=trusted,
        threshold=trust.threshold,
        detached=tuple(collect_signatures(loc, trust.signatures)),
        prefix=host.prefix,
        runtime=host.runtime,
        runtime_url=host.runtime_url,
        dry_run=dry_run,
        allow_downgrade=allow_downgrade,
        registry=images.registry,
        registry_insecure=images.registry_insecure,
        registry_ca=images.registry_ca,
        replace_tags=images.replace_tags,
        tag_source_refs=images.tag_source_refs,
        no_gpu=no_gpu,
        skip_fit_check=skip_fit_check,
        skip_driver_check=skip_driver_check,
        ports=() if serve is None or k8s is not None else (serve.port,),
        serve=serve,
        kibana=kibana,
        elasticsearch=es,
        llm=llm,
        kb=kb,
        elser_dir=elastic.elser_dir,
        product_docs_dir=elastic.product_docs_dir,
        stall_timeout=stall_timeout,
        start_timeout=start_timeout,
        accept_license=accept_license,
        base_bundle=base_bundle,
        kubernetes=k8s,
    )
    with reporter(as_json) as r:

        def on_preflight(checks: list[Check]) -> None:
            if not as_json and not state().quiet:
                render_checks(checks)
            r.stage("installing", sum(p.size for p in loc.parts) or None)

        result = run_install(opts, on_preflight=on_preflight, progress=r.advance, notes=note)
    if as_json:
        print_json(result.to_json())
    else:
        show_install(result)
