"""What install did in Kibana and Elasticsearch, as receipt records (see :mod:`..records`).

Every model here is part of ``airgap-receipt/2``; fields added later are optional and
left out when unset, so receipts written before them read and write back unchanged.

* :class:`KibanaRecord`: the ``.gen-ai`` connector (the connector wiring).
* :class:`EndpointRecord`: the ELSER ``sparse_embedding`` endpoint.
* :class:`ChatEndpointRecord`: the ``chat_completion`` endpoint (the inference-endpoint
  wiring, Kibana 9.4+); it holds a fingerprint of the bearer token it was given, never
  the token, so a rerun knows whether the key must be updated.
* :class:`KibanaSettingsRecord`: the Kibana settings changed in one space, with their
  values before, which uninstall puts back.
* :class:`CopiedFiles`: artifacts copied into a directory.
* :class:`KnowledgeBaseRecord`: the Observability AI Assistant's knowledge base as
  install left it. It is Kibana's, and holds the users' own entries: uninstall never
  removes it.
* :class:`ProductDocsRecord`: the product documentation installed for one embedding
  endpoint; ``created_by_us`` when it was not installed before this tool installed it,
  and only then does uninstall remove it again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from bundler.install.recordbase import Record

JsonScalar = str | bool | int | float | None


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
    files: list[str] = Field(default_factory=list)

    def identity(self) -> tuple[object, ...]:
        return (self.path,)


class ChatEndpointRecord(Record):
    omit_unset = frozenset({"key_fingerprint"})

    url: str  # Elasticsearch
    version: str  # Elasticsearch's version
    endpoint_id: str
    service_url: str  # what Elasticsearch calls: Nginx's /v1/chat/completions
    model_id: str
    created_by_us: bool = False
    action: str  # "created", "replaced", "key updated" or "kept"
    key_fingerprint: str | None = None  # of the bearer token it holds (never the token)

    def identity(self) -> tuple[object, ...]:
        return (self.url, self.endpoint_id)


class KibanaSettingsRecord(Record):
    url: str
    space: str = "default"
    endpoint_id: str
    kibana_version: str
    # setting -> its value before (None: it was not set)
    previous: dict[str, JsonScalar] = Field(default_factory=dict)

    def identity(self) -> tuple[object, ...]:
        return (self.url, self.space)


class KnowledgeBaseRecord(Record):
    url: str  # Kibana
    space: str = "default"
    inference_id: str  # the embedding endpoint it uses
    kibana_version: str
    state_before: str | None = None  # kbState before this tool's setup call
    action: str  # "set up", "kept", or "left" (the site's own, on another endpoint)
    state: str  # kbState at the end ("READY")
    # this tool's setup call made it READY on this endpoint (so a rerun may move it to
    # another); uninstall leaves it all the same
    set_up_by_us: bool = False

    def identity(self) -> tuple[object, ...]:
        return (self.url,)


class ProductDocsRecord(Record):
    url: str  # Kibana
    inference_id: str
    kibana_version: str
    created_by_us: bool = False  # not installed for this endpoint before this tool
    action: str  # "installed" or "kept"
    state: str  # the overall status at the end ("installed")
    artifacts: list[str] = Field(default_factory=list)  # the bundle's files Kibana reads

    def identity(self) -> tuple[object, ...]:
        return (self.url, self.inference_id)


class EarlierKibana(KibanaRecord):
    kind: Literal["kibana"]


class EarlierEndpoint(EndpointRecord):
    kind: Literal["elasticsearch"]


class EarlierFiles(CopiedFiles):
    kind: Literal["elser_dir", "product_docs_dir"]


class EarlierChatEndpoint(ChatEndpointRecord):
    kind: Literal["inference"]


class EarlierSettings(KibanaSettingsRecord):
    kind: Literal["kibana_settings"]


class EarlierKnowledgeBase(KnowledgeBaseRecord):
    kind: Literal["knowledge_base"]


class EarlierProductDocs(ProductDocsRecord):
    kind: Literal["product_docs"]


Earlier = Annotated[
    EarlierKibana
    | EarlierEndpoint
    | EarlierFiles
    | EarlierChatEndpoint
    | EarlierSettings
    | EarlierKnowledgeBase
    | EarlierProductDocs,
    Field(discriminator="kind"),
]
ElasticKind = Literal[
    "kibana",
    "elasticsearch",
    "elser_dir",
    "product_docs_dir",
    "inference",
    "kibana_settings",
    "knowledge_base",
    "product_docs",
]
AnyElastic = (
    KibanaRecord
    | EndpointRecord
    | CopiedFiles
    | ChatEndpointRecord
    | KibanaSettingsRecord
    | KnowledgeBaseRecord
    | ProductDocsRecord
)


class ElasticRecord(Record):
    """What the Elastic steps created; ``earlier`` keeps objects a rerun replaced, so
    that uninstall still removes them."""

    omit_unset = frozenset(
        {
            "settings_file",
            "kibana",
            "elasticsearch",
            "elser_dir",
            "product_docs_dir",
            "wiring",
            "inference",
            "kibana_settings",
            "knowledge_base",
            "product_docs",
        }
    )

    earlier: list[Earlier] = Field(default_factory=list)
    settings_file: str | None = None
    kibana: KibanaRecord | None = None
    elasticsearch: EndpointRecord | None = None
    elser_dir: CopiedFiles | None = None
    product_docs_dir: CopiedFiles | None = None
    wiring: str | None = None  # "connector" or "inference-endpoint": how the last run wired it
    inference: ChatEndpointRecord | None = None
    kibana_settings: KibanaSettingsRecord | None = None
    knowledge_base: KnowledgeBaseRecord | None = None
    product_docs: ProductDocsRecord | None = None

    def all_records(self) -> list[AnyElastic]:
        """Current and earlier records alike."""
        now: list[AnyElastic | None] = [
            self.kibana,
            self.elasticsearch,
            self.elser_dir,
            self.product_docs_dir,
            self.inference,
            self.kibana_settings,
            self.knowledge_base,
            self.product_docs,
        ]
        return [r for r in now if r is not None] + list(self.earlier)


EARLIER: dict[str, Any] = {
    "kibana": EarlierKibana,
    "elasticsearch": EarlierEndpoint,
    "elser_dir": EarlierFiles,
    "product_docs_dir": EarlierFiles,
    "inference": EarlierChatEndpoint,
    "kibana_settings": EarlierSettings,
    "knowledge_base": EarlierKnowledgeBase,
    "product_docs": EarlierProductDocs,
}
