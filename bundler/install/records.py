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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

RECEIPT_FORMAT = "airgap-receipt/2"
PREVIOUS_FORMAT = "airgap-receipt/1"
FORMAT_PREFIX = "airgap-receipt/"


class Record(BaseModel):
    """Frozen and strict; fields in ``omit_unset`` are written only when they were given."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    omit_unset: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.omit_unset - self.model_fields_set:
                data.pop(name, None)
        return data

    def to_json(self) -> dict[str, Any]:
        """The JSON form (as written into the receipt)."""
        out: dict[str, Any] = self.model_dump(mode="json")
        return out


# -- where images went ---------------------------------------------------------------


class EngineSpec(Record):
    kind: Literal["engine"] = "engine"
    runtime: str = "docker"
    url: str


class RegistrySpec(Record):
    kind: Literal["registry"] = "registry"
    registry: str
    insecure: bool = False


TargetSpec = Annotated[EngineSpec | RegistrySpec, Field(discriminator="kind")]


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
    containers: dict[str, ContainerRef] = {}
    artifacts: dict[str, str] = {}  # "elser"/"product_docs" -> URL
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


# -- what install did in Kibana and Elasticsearch -------------------------------------


class KibanaRecord(Record):
    omit_unset = frozenset({"url", "snippet", "action", "test_reply"})

    mode: Literal["api", "preconfigured"]
    connector_id: str
    name: str
    api_url: str
    kibana_version: str
    created_by_us: bool = False
    url: str | None = None
    space: str = "default"
    snippet: str | None = None  # preconfigured mode: the file written
    action: str | None = None  # "created" or "updated"
    test_reply: str | None = None

    def identity(self) -> tuple[object, ...]:
        return (self.mode, self.url, self.space, self.connector_id)


class EndpointRecord(Record):
    url: str
    version: str
    endpoint_id: str
    model_id: str
    created_by_us: bool = False
    action: str
    state: str | None

    def identity(self) -> tuple[object, ...]:
        return (self.url, self.endpoint_id)


class CopiedFiles(Record):
    path: str
    files: list[str] = []

    def identity(self) -> tuple[object, ...]:
        return (self.path,)


class EarlierKibana(KibanaRecord):
    kind: Literal["kibana"]


class EarlierEndpoint(EndpointRecord):
    kind: Literal["elasticsearch"]


class EarlierFiles(CopiedFiles):
    kind: Literal["elser_dir", "product_docs_dir"]


Earlier = Annotated[EarlierKibana | EarlierEndpoint | EarlierFiles, Field(discriminator="kind")]
ElasticKind = Literal["kibana", "elasticsearch", "elser_dir", "product_docs_dir"]


class ElasticRecord(Record):
    """What the Elastic steps created; ``earlier`` keeps objects a rerun replaced, so
    that uninstall still removes them."""

    omit_unset = frozenset(
        {"settings_file", "kibana", "elasticsearch", "elser_dir", "product_docs_dir"}
    )

    earlier: list[Earlier] = []
    settings_file: str | None = None
    kibana: KibanaRecord | None = None
    elasticsearch: EndpointRecord | None = None
    elser_dir: CopiedFiles | None = None
    product_docs_dir: CopiedFiles | None = None

    def all_records(self) -> list[KibanaRecord | EndpointRecord | CopiedFiles]:
        """Current and earlier records alike."""
        now = [self.kibana, self.elasticsearch, self.elser_dir, self.product_docs_dir]
        return [r for r in now if r is not None] + list(self.earlier)


EARLIER: dict[str, Any] = {
    "kibana": EarlierKibana,
    "elasticsearch": EarlierEndpoint,
    "elser_dir": EarlierFiles,
    "product_docs_dir": EarlierFiles,
}


# -- the receipt ---------------------------------------------------------------------


class Release(Record):
    omit_unset = frozenset({"serve", "elastic"})

    name: str
    version: int
    index_sha256: str
    signers: list[str]
    installed_at: str
    path: str
    target: TargetSpec
    images: list[ImageRecord] = []
    serve: ServeRecord | None = None
    elastic: ElasticRecord | None = None


class PendingRun(Record):
    """Written before a run creates anything, cleared after: what a killed run may have left."""

    staging: str
    target: TargetSpec
    images: list[ImageRecord] = []  # loaded ones may be removed, present ones untagged


class Receipt(Record):
    """What this tool created under a prefix, so status/uninstall/rollback touch only that.

    ``releases`` maps ``<name>-<version>`` to what that release brought; ``history`` is
    the activation order; ``pending`` is written *before* images are loaded and cleared
    after, so a run that was killed can be cleaned up by the next one.
    """

    format: str = RECEIPT_FORMAT
    current: str | None = None
    releases: dict[str, Release] = {}
    history: list[str] = []
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
