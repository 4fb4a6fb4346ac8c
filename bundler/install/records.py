"""The install receipt and its parts as frozen, strict models (pydantic, ``extra="forbid"``).

The receipt is what lets status, rollback and uninstall touch only what airgap created,
so it is read the way the signed index is: every key known, every type checked, and a
document of another format refused by name rather than half-read.

Formats:

* ``airgap-receipt/1``: written by airgap up to the typed receipt. Same shape as /2;
  readers accept it (the previous format) and it becomes /2 in memory, every value
  kept, on disk at the next write (a one-time migration).
* ``airgap-receipt/2``: this one. A receipt of a higher number was written by a newer
  airgap and is refused with :class:`~bundler.errors.InstallError`; a newer format
  should carry ``needs`` (the oldest airgap version that reads it) so the refusal can
  name the version to install.

Within a format new fields are optional. A field that an older writer left out stays
out when the record is written again (``omit_unset``): a receipt read and written back
keeps its bytes' meaning exactly.

One image record model serves both targets, with optional target-specific fields:
``tags`` (engine: the tags install created; absent in receipts written before tags were
recorded, which then mean the source ref) and ``source_ref``/``media_type`` (registry:
``ref`` is then the pushed reference). The release's ``target`` says which applies, so a
discriminated pair of models would only repeat that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from bundler.install.elastic.records import (
    EARLIER,
    CopiedFiles,
    Earlier,
    EarlierEndpoint,
    EarlierFiles,
    EarlierKibana,
    ElasticKind,
    ElasticRecord,
    EndpointRecord,
    KibanaRecord,
)
from bundler.install.recordbase import Record

# The Elastic records live in .elastic.records; they are named here too, as before.
__all__ = [
    "EARLIER",
    "CopiedFiles",
    "Earlier",
    "EarlierEndpoint",
    "EarlierFiles",
    "EarlierKibana",
    "ElasticKind",
    "ElasticRecord",
    "EndpointRecord",
    "KibanaRecord",
]

RECEIPT_FORMAT = "airgap-receipt/2"
PREVIOUS_FORMAT = "airgap-receipt/1"
FORMAT_PREFIX = "airgap-receipt/"


# -- where images went ---------------------------------------------------------------


class EngineSpec(Record):
    kind: Literal["engine"] = "engine"
    runtime: str = "docker"
    url: str


class RegistrySpec(Record):
    kind: Literal["registry"] = "registry"
    registry: str
    insecure: bool = False


class KubernetesSpec(Record):
    """Images and the model pushed to ``registry``; a kustomize base written to ``base_dir``
    (what a cluster runs is in the release's :class:`KubernetesRecord`)."""

    kind: Literal["kubernetes"] = "kubernetes"
    registry: str
    insecure: bool = False
    base_dir: str


TargetSpec = Annotated[EngineSpec | RegistrySpec | KubernetesSpec, Field(discriminator="kind")]


class ImageRecord(Record):
    omit_unset = frozenset({"platform", "tags", "source_ref", "media_type"})

    role: str
    ref: str
    id: str
    platform: str | None = None
    created_by_us: bool = True  # what receipts without the key meant
    tags: list[str] | None = None  # engine: tags install created (None: the source ref)
    source_ref: str | None = None  # registry: the signed ref the image came as
    media_type: str | None = None  # registry: the manifest's media type


# -- how a release is served ---------------------------------------------------------


class ServeOptions(Record):
    """How to serve (``airgap install`` options); recorded so rollback serves the same way.

    ``rotate_token`` is an action of one run, never recorded.
    """

    port: int = 8443
    internal_port: int = 8000
    server_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    rotate_token: bool = Field(default=False, exclude=True)
    gpus: str = "all"  # "all", "none", or a list like "0,1"
    health_timeout: float = 900.0
    network: str = "host"  # "host", or the name of a Docker network to create/use
    extra_vllm_args: tuple[str, ...] = ()  # appended after the manifest's (tests use it)
    artifacts_port: int | None = 8081  # plain HTTP for ELSER/product docs; None: TLS port only

    @property
    def host(self) -> str:
        """The name clients use for the endpoint."""
        return (
            self.server_names[0]
            if self.server_names
            else (self.ips[0] if self.ips else "localhost")
        )

    @property
    def artifacts_base(self) -> str:
        """Where the Elastic artifacts are served (plain HTTP port, else the TLS port)."""
        if self.artifacts_port:
            return f"http://{self.host}:{self.artifacts_port}"
        return f"https://{self.host}:{self.port}"


class ServedWith(ServeOptions):
    """The recorded options: :class:`ServeOptions` and whether GPUs were left out."""

    no_gpu: bool = False

    def split(self) -> tuple[ServeOptions, bool]:
        fields = self.model_dump(exclude={"no_gpu"})
        return ServeOptions(**fields), self.no_gpu


class ContainerRef(Record):
    id: str
    name: str


class ServeRecord(Record):
    omit_unset = frozenset({"internal_port", "artifacts_port", "token_file", "options"})

    url: str  # what Kibana's connector calls
    ca_cert: str
    port: int
    model: str
    containers: dict[str, ContainerRef] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)  # "elser"/"product_docs" -> URL
    internal_port: int | None = None
    artifacts_port: int | None = None
    token_file: str | None = None  # the path, never the token
    options: ServedWith | None = None  # None: served by an airgap that did not record how

    def ports(self) -> list[int]:
        """The host ports these containers hold."""
        ports = [self.port, self.artifacts_port]
        if self.options is None or self.options.network == "host":
            ports.append(self.internal_port)
        return [p for p in ports if p]


class KubernetesRecord(Record):
    """What an install wrote for a cluster, and whether it applied it."""

    namespace: str
    deployment: str
    base_dir: str  # -o DIR
    release_base: str  # the copy kept in the release (what rollback applies)
    files: dict[str, str] = Field(default_factory=dict)  # name -> sha256
    k8s_version: str
    model_artifact: str  # modelcar | oci
    model_volume: str  # image | init-copy
    model_ref: str  # by digest
    applied: bool = False


# -- the receipt ---------------------------------------------------------------------


class LicenseAcceptance(Record):
    """The operator's acceptance of the model's licence (``--accept-license``)."""

    license: str  # the id accepted, as given
    spdx: str  # the SPDX id (or LicenseRef-…) of the licence the signed index records
    accepted_at: str
    operator: str  # the user name that ran the install


class Release(Record):
    omit_unset = frozenset({"serve", "elastic", "license_acceptance", "base", "kubernetes"})

    name: str
    version: int
    index_sha256: str
    signers: list[str]
    installed_at: str
    path: str
    target: TargetSpec
    images: list[ImageRecord] = Field(default_factory=list)
    serve: ServeRecord | None = None
    elastic: ElasticRecord | None = None
    license_acceptance: LicenseAcceptance | None = None  # receipts before it: none recorded
    base: str | None = None  # a delta's base: the index sha256 of the release it built on
    kubernetes: KubernetesRecord | None = None


class PendingRun(Record):
    """Written before a run creates anything, cleared after: what a killed run may have left."""

    staging: str
    target: TargetSpec
    # loaded ones may be removed, present ones untagged
    images: list[ImageRecord] = Field(default_factory=list)


class Receipt(Record):
    """What this tool created under a prefix, so status/uninstall/rollback touch only that.

    ``releases`` maps ``<name>-<version>`` to what that release brought; ``history`` is
    the activation order; ``pending`` is written *before* images are loaded and cleared
    after, so a run that was killed can be cleaned up by the next one.
    """

    format: str = RECEIPT_FORMAT
    current: str | None = None
    releases: dict[str, Release] = Field(default_factory=dict)
    history: list[str] = Field(default_factory=list)
    pending: PendingRun | None = None

    def with_pending(self, pending: PendingRun | None) -> Receipt:
        return self.model_copy(update={"pending": pending})

    def with_release(self, key: str, release: Release) -> Receipt:
        return self.model_copy(update={"releases": {**self.releases, key: release}})

    def activated(self, key: str) -> Receipt:
        """``key`` made current (and appended to the history)."""
        return self.model_copy(update={"current": key, "history": [*self.history, key]})

    def our_images(self, exclude: str | None = None) -> set[str]:
        """Image IDs that some release (other than ``exclude``) says this tool loaded."""
        return {
            i.id
            for key, rel in self.releases.items()
            if key != exclude
            for i in rel.images
            if i.created_by_us
        }

    def images_in_use(self, exclude: str | None = None) -> set[str]:
        return {i.id for key, rel in self.releases.items() if key != exclude for i in rel.images}

    def container_ids(self) -> set[str]:
        """The serving containers on record, of every release."""
        return {
            c.id
            for rel in self.releases.values()
            if rel.serve
            for c in rel.serve.containers.values()
        }
