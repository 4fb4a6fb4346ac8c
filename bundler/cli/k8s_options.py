"""The options of ``install --target kubernetes`` (one group: ``kubernetes``), and
``--apply`` for status, rollback and uninstall."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from bundler.cli.options import Params, option_group

if TYPE_CHECKING:
    from bundler.k8s.options import K8sOptions


@dataclass(frozen=True)
class K8sRequest:
    """What was asked; :meth:`options` turns it into the core's options for the target."""

    output: str | None
    fields: Params

    def options(self) -> K8sOptions:
        """Raises: click.UsageError: -o is missing, or options that cannot work together."""
        from bundler.errors import UsageError
        from bundler.k8s.options import K8sOptions

        if not self.output:
            raise click.UsageError("--target kubernetes needs -o DIR: where the base is written")
        opts = K8sOptions(output=self.output, **self.fields)
        try:
            opts.check()
        except UsageError as e:
            raise click.UsageError(e.message + (f" ({e.hint})" if e.hint else "")) from e
        return opts


def _k8s_request(kw: Params) -> K8sRequest:
    from bundler.k8s.options import DEFAULT_K8S_VERSION

    fields = {
        "k8s_version": kw.pop("k8s_version") or DEFAULT_K8S_VERSION,
        "model_artifact": kw.pop("model_artifact"),
        "model_volume": kw.pop("model_volume"),
        "model_pvc": kw.pop("model_pvc"),
        "replicas": kw.pop("replicas"),
        "namespace": kw.pop("namespace"),
        "ingress_host": kw.pop("ingress_host"),
        "ingress_class": kw.pop("ingress_class"),
        "openshift": kw.pop("openshift"),
        "runtime_class": kw.pop("runtime_class"),
        "public_url": kw.pop("public_url"),
        "apply": kw.pop("apply"),
    }
    return K8sRequest(kw.pop("output"), fields)


apply_option = click.option(
    "--apply",
    is_flag=True,
    help="Kubernetes: run the kubectl commands (with your kubeconfig) instead of printing them.",
)

k8s_options = option_group(
    "kubernetes",
    _k8s_request,
    click.option(
        "-o",
        "--output",
        default=None,
        metavar="DIR",
        help="--target kubernetes: write the kustomize base into DIR.",
    ),
    click.option(
        "--k8s-version",
        default=None,
        metavar="1.N",
        help="The cluster's Kubernetes version (default: the newest whose schemas are known, "
        "1.37); it picks the model volume's default.",
    ),
    click.option(
        "--model-artifact",
        type=click.Choice(["modelcar", "oci"]),
        default="modelcar",
        show_default=True,
        help="The model in the registry: a modelcar image (its own layer on the vLLM image) "
        "or an OCI artifact (artifactType application/vnd.airgap.model.v1, a layer per file).",
    ),
    click.option(
        "--model-volume",
        type=click.Choice(["image", "init-copy"]),
        default=None,
        help="How pods get the model: an image volume (default from Kubernetes 1.35) or an "
        "init container copying it into an emptyDir or --model-pvc (default before 1.35).",
    ),
    click.option("--model-pvc", default=None, metavar="CLAIM", help="init-copy into this PVC."),
    click.option(
        "--replicas", type=click.IntRange(1, 1000), default=1, show_default=True, help="Pods."
    ),
    click.option("--namespace", default=None, help="Namespace (default airgap-<bundle>)."),
    click.option(
        "--ingress-host", default=None, help="Add an Ingress (and Route host) for this name."
    ),
    click.option("--ingress-class", default=None, help="The Ingress's ingressClassName."),
    click.option("--openshift", is_flag=True, help="Add an OpenShift Route (TLS passthrough)."),
    click.option(
        "--runtime-class",
        default=None,
        help="runtimeClassName for the pods (e.g. nvidia, where that runtime is not the default).",
    ),
    click.option(
        "--public-url",
        default=None,
        metavar="https://HOST[:PORT]",
        help="How Kibana and Elasticsearch reach the model (the Ingress, Route or Service "
        "address): the Elastic wiring's URL, and a name in the certificate.",
    ),
    apply_option,
)
