"""What ``airgap install`` is asked to do, and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bundler.boundedio import DEFAULT_STALL_TIMEOUT, DEFAULT_START_TIMEOUT
from bundler.bundle.signing import TrustedKey
from bundler.install.elastic.elasticsearch import EsOptions
from bundler.install.elastic.kbroutes import KbOptions
from bundler.install.elastic.kibana import KibanaOptions
from bundler.install.elastic.wiring import LlmOptions
from bundler.install.layout import DEFAULT_PREFIX
from bundler.install.records import ImageRecord, ServeOptions, ServeRecord
from bundler.k8s.options import K8sOptions

InstallStatus = Literal["installed", "unchanged", "reactivated", "dry-run"]


@dataclass(frozen=True)
class Check:
    """One row of the preflight table. ``ok`` None means a warning or a skipped check."""

    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class InstallOptions:
    bundle: str
    trusted: dict[str, TrustedKey]
    threshold: int = 1
    detached: tuple[tuple[str, bytes], ...] = ()
    prefix: Path = DEFAULT_PREFIX
    runtime: str = "docker"
    runtime_url: str | None = None
    dry_run: bool = False
    allow_downgrade: bool = False
    no_gpu: bool = False
    skip_fit_check: bool = False  # a model that does not fit is a warning, not a refusal
    skip_driver_check: bool = False  # a driver older than the image wants: a warning
    ports: tuple[int, ...] = ()
    serve: ServeOptions | None = None  # None: put files and images in place, start nothing
    registry: str | None = None  # HOST[:PORT][/PREFIX]: push images there instead
    registry_insecure: bool = False
    registry_ca: Path | None = None
    replace_tags: bool = False  # move an existing tag that names another image
    tag_source_refs: bool = False  # also tag the signed source refs (engine)
    kibana: KibanaOptions | None = None  # register the connector (needs serve)
    elasticsearch: EsOptions | None = None  # the chat_completion endpoint, ELSER
    llm: LlmOptions = field(default_factory=LlmOptions)  # how the model is wired into Elastic
    kb: KbOptions = field(default_factory=KbOptions)  # the knowledge base and product docs
    elser_dir: Path | None = None  # copy ELSER into Elasticsearch's config/models
    product_docs_dir: Path | None = None  # copy product docs (+ index.xml) for file://
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # bundle "-": stdin may send nothing this long
    start_timeout: float = DEFAULT_START_TIMEOUT  # ... and take this long to send its first byte
    accept_license: str | None = None  # the model licence id the operator accepts
    base_bundle: str | None = None  # a delta's base bundle (else its installed release)
    kubernetes: K8sOptions | None = None  # --target kubernetes (images and model to registry)


@dataclass
class InstallResult:
    """What a run did: the receipt's image and serving records, and the Elastic steps'
    report (``elastic``: the Kibana and Elasticsearch API answers, as printed)."""

    status: InstallStatus
    name: str
    version: int
    release: Path
    index_sha256: str
    checks: list[Check] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    serving: ServeRecord | None = None
    elastic: dict[str, Any] | None = None  # settings to add, connector, endpoint, files
    kubernetes: dict[str, Any] | None = None  # the base written, its commands, applied

    def to_json(self) -> dict[str, object]:
        """The ``airgap install --json`` document."""
        return {
            "status": self.status,
            "name": self.name,
            "version": self.version,
            "release": str(self.release),
            "index_sha256": self.index_sha256,
            "images": [i.to_json() for i in self.images],
            "serving": self.serving.to_json() if self.serving else None,
            "elastic": self.elastic,
            **({"kubernetes": self.kubernetes} if self.kubernetes is not None else {}),
            "bytes": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }
