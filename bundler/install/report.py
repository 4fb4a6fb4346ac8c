"""What ``airgap status`` found: per release, the receipt's records beside what is
really there (files, images, containers, the health answer through Nginx)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.install.records import ElasticRecord, ImageRecord


@dataclass(frozen=True)
class ImageStatus:
    record: ImageRecord
    present: bool

    def to_json(self) -> dict[str, object]:
        return {**self.record.to_json(), "present": self.present}


@dataclass(frozen=True)
class ServingProbe:
    """Are the containers running, and what did ``/health`` answer through Nginx?"""

    url: str
    ca_cert: str
    containers: dict[str, bool]
    health: int | str | None  # the HTTP status, or why there was none

    @property
    def ok(self) -> bool:
        return all(self.containers.values()) and self.health == 200

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "ca_cert": self.ca_cert,
            "containers": self.containers,
            "health": self.health,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class ReleaseStatus:
    release: str
    version: int
    active: bool
    path: Path
    index_ok: bool
    files_ok: bool | None  # None: not checked (without --deep)
    images: list[ImageStatus]
    serving: ServingProbe | None  # only for the active release served on an engine
    elastic: ElasticRecord | None
    installed_at: str
    # the recorded Elastic objects checked live (kind -> {"ok": bool | None, ...}), for
    # the active release when credentials were given
    elastic_live: dict[str, Any] | None = None
    # a delta's base, its base's base...: release keys (an index sha256 if not installed)
    base_chain: tuple[str, ...] = ()
    # Kubernetes: the base against the receipt, and (with --apply) the Deployment
    cluster: dict[str, Any] | None = None

    @property
    def healthy(self) -> bool:
        return (
            self.index_ok
            and self.files_ok is not False
            and all(i.present for i in self.images)
            and (self.serving is None or self.serving.ok)
            and all(v.get("ok") is not False for v in (self.elastic_live or {}).values())
            and (self.cluster is None or self.cluster.get("ok") is not False)
        )

    def to_json(self) -> dict[str, object]:
        return {
            "release": self.release,
            "version": self.version,
            "active": self.active,
            "path": str(self.path),
            "index_ok": self.index_ok,
            "files_ok": self.files_ok,
            "images": [i.to_json() for i in self.images],
            "serving": self.serving.to_json() if self.serving else None,
            "elastic": self.elastic.to_json() if self.elastic else None,
            "elastic_live": self.elastic_live,
            **({"kubernetes": self.cluster} if self.cluster is not None else {}),
            "healthy": self.healthy,
            "installed_at": self.installed_at,
            "base_chain": list(self.base_chain),
        }


@dataclass(frozen=True)
class StatusReport:
    prefix: Path
    current: str | None
    ok: bool
    releases: list[ReleaseStatus]
    # Elasticsearch trust stores built from this host, as truststore_state reports them
    es_truststores: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The ``airgap status --json`` document."""
        return {
            "prefix": str(self.prefix),
            "current": self.current,
            "ok": self.ok,
            "releases": [r.to_json() for r in self.releases],
            "es_truststores": self.es_truststores,
        }
