"""ELSER on Elasticsearch: the inference endpoint (the files are :mod:`.artifacts`).

With ``--es-url`` the ELSER inference endpoint is created and polled until the
model is deployed; Elasticsearch downloads the model itself from the repository named
by ``xpack.ml.model_repository`` (a static node setting that only the operator can
set), so that setting is checked first and quoted when missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.errors import InstallError, UsageError
from bundler.install.elastic.api import ApiClient, Credentials, json_object

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EsOptions:
    url: str
    credentials: Credentials | None
    ca: Path | None = None
    insecure: bool = False
    endpoint_id: str = "airgap-elser"  # before 8.17 only (then the built-in endpoint)
    endpoint_id_given: bool = False  # --elser-endpoint-id was given
    timeout: float = 1200.0  # model download + deployment
    attempts: int = 6


def _json(r: Any) -> dict[str, Any]:
    return json_object(r, "Check --es-url: it must be Elasticsearch itself, not a proxy page.")


def inference_body(model_id: str) -> dict[str, Any]:
    return {
        "service": "elasticsearch",
        "service_settings": {
            "model_id": model_id,
            "num_threads": 1,
            "adaptive_allocations": {
                "enabled": True,
                "min_number_of_allocations": 1,
                "max_number_of_allocations": 4,
            },
        },
    }


class Elasticsearch:
    def __init__(self, opts: EsOptions) -> None:
        if opts.credentials is None:
            raise UsageError(
                f"no credentials for Elasticsearch at {opts.url}",
                hint="Set AIRGAP_ES_API_KEY, or give --es-api-key-file or --es-credentials-file "
                "(user:password). Never on the command line.",
            )
        self.opts = opts
        self.api = ApiClient(
            "Elasticsearch",
            opts.url,
            opts.credentials,
            ca=opts.ca,
            insecure=opts.insecure,
            attempts=opts.attempts,
        )

    def close(self) -> None:
        self.api.close()

    def version(self) -> str:
        r = self.api.request("GET", "/", what="reading the cluster's version")
        try:
            return str(_json(r)["version"]["number"])
        except (ValueError, KeyError, TypeError) as e:
            raise InstallError(
                f"{self.api.base} does not look like Elasticsearch",
                hint="Check --es-url: Elasticsearch's base URL (port 9200 by default).",
            ) from e

    def model_repository(self) -> dict[str, str | None]:
        """``xpack.ml.model_repository`` of every ML node (name -> value or None)."""
        r = self.api.request(
            "GET", "/_nodes/settings?flat_settings=true", what="reading node settings"
        )
        out: dict[str, str | None] = {}
        for node_id, node in (_json(r).get("nodes") or {}).items():
            roles = node.get("roles") or []
            if roles and "ml" not in roles:
                continue
            value = (node.get("settings") or {}).get("xpack.ml.model_repository")
            out[str(node.get("name") or node_id)] = None if value is None else str(value)
        return out

    def check_repository(self, expected: str) -> str:
        """Refuse (quoting the setting) when an ML node has no model repository."""
        nodes = self.model_repository()
        if not nodes:
            raise InstallError(
                f"Elasticsearch at {self.api.base} has no machine-learning node",
                hint="ELSER needs a node with the ml role (and an ML-capable license).",
            )
        missing = sorted(n for n, v in nodes.items() if not v)
        if missing:
            raise InstallError(
                f"Elasticsearch ML node(s) {', '.join(missing)} have no model repository, so "
                "they would try to download ELSER from the internet",
                hint=f"Add `xpack.ml.model_repository: {expected}` to elasticsearch.yml on "
                "every ML node, restart them, then run the same install again.",
            )
        other = sorted({v for v in nodes.values() if v and v.rstrip("/") != expected})
        if other:
            logger.warning(
                "ML nodes use model repository %s, not %s; they will read ELSER from there",
                ", ".join(other),
                expected,
            )
        return ", ".join(sorted({str(v) for v in nodes.values()}))

    def get_endpoint(self, ident: str) -> dict[str, Any] | None:
        r = self.api.request(
            "GET", f"/_inference/sparse_embedding/{ident}", allow=(404,), what="inference endpoint"
        )
        if r.status_code == 404:
            return None
        eps = _json(r).get("endpoints") or []
        return dict(eps[0]) if eps else None

    def ensure_endpoint(self, ident: str, model_id: str, ours: bool = False) -> bool:
        """Create the endpoint unless one with this id exists; True when created here.

        ``ours``: an earlier run of this tool created it; if its deployment failed, it
        is deleted and created again (a failed deployment does not heal by itself).
        """
        existing = self.get_endpoint(ident)
        if existing is not None:
            have = (existing.get("service_settings") or {}).get("model_id")
            if have != model_id:
                raise InstallError(
                    f"inference endpoint {ident} exists in Elasticsearch with model {have}",
                    hint="Choose another --es-inference-id, or delete that endpoint.",
                )
            if not (ours and self.deployment(ident, model_id).get("state") == "failed"):
                return False
            logger.info("endpoint %s: its deployment failed; creating it again", ident)
            self.delete_endpoint(ident)
        r = self.api.request(
            "PUT",
            f"/_inference/sparse_embedding/{ident}",
            json=inference_body(model_id),
            allow=(400,),
            what="creating the ELSER inference endpoint",
        )
        if r.status_code == 400:
            err = _json(r).get("error") or {}
            if not isinstance(err, dict) or err.get("type") != "resource_already_exists_exception":
                raise self.api._refused("PUT", f"{self.api.base}/_inference", r, "ELSER endpoint")
            # Absent a moment ago: an earlier attempt of this request created it.
        return True

    def deployment(self, ident: str, model_id: str) -> dict[str, Any]:
        """The deployment serving endpoint ``ident`` (Elasticsearch names it after the
        endpoint; a model can have several), or {} when there is none yet."""
        r = self.api.request(
            "GET",
            f"/_ml/trained_models/{model_id}/_stats",
            allow=(404,),
            what="deployment state",
        )
        if r.status_code == 404:
            return {}
        stats = _json(r).get("trained_model_stats") or []
        deps = [dict(s.get("deployment_stats") or {}) for s in stats if isinstance(s, dict)]
        deps = [d for d in deps if d]
        for d in deps:
            if d.get("deployment_id") == ident:
                return d
        unnamed = [d for d in deps if "deployment_id" not in d]
        return unnamed[0] if unnamed else {}

    def wait_deployed(self, ident: str, model_id: str, timeout: float) -> dict[str, Any]:
        """Poll the endpoint's deployment until started (or failed, or timed out)."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while True:
            dep = self.deployment(ident, model_id)
            state = str(dep.get("state") or "downloading")
            if state == "started":
                return dep
            if state == "failed":
                raise InstallError(
                    f"Elasticsearch could not deploy {model_id} for endpoint {ident}: "
                    f"{dep.get('reason', 'failed')}",
                    hint="Check that every ML node reaches the model repository and the "
                    "files' sizes match their metadata (Elasticsearch's log names the file); "
                    "the next install deletes and creates the endpoint again.",
                )
            if time.monotonic() > deadline:
                raise InstallError(
                    f"{model_id} was not deployed after {timeout:.0f}s (state {state})",
                    hint="Raise --es-timeout; check ML node memory and the Elasticsearch log.",
                )
            time.sleep(1)

    def delete_endpoint(self, ident: str) -> bool:
        r = self.api.request(
            "DELETE",
            f"/_inference/sparse_embedding/{ident}",
            allow=(404,),
            what="deleting the inference endpoint",
        )
        return r.status_code != 404


def deploy_elser(
    opts: EsOptions,
    model_file_id: str,
    previous: dict[str, Any] | None = None,
    on_created: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Create (or keep) the ELSER endpoint and wait for the deployment; the receipt record.

    ``on_created`` gets the record as soon as the endpoint exists, before the (long)
    wait, so an endpoint this run created is never left unrecorded.
    """
    model_id = "." + model_file_id
    es = Elasticsearch(opts)
    try:
        version = es.version()
        ours = bool(
            previous
            and previous.get("url") == es.api.base
            and previous.get("endpoint_id") == opts.endpoint_id
            and previous.get("created_by_us")
        )
        created = es.ensure_endpoint(opts.endpoint_id, model_id, ours=ours)
        record: dict[str, Any] = {
            "url": es.api.base,
            "version": version,
            "endpoint_id": opts.endpoint_id,
            "model_id": model_id,
            "created_by_us": created or ours,
            "action": "created" if created else "kept",
            "state": "deploying",
        }
        if on_created is not None:
            on_created(record)
        dep = es.wait_deployed(opts.endpoint_id, model_id, opts.timeout)
    finally:
        es.close()
    record["state"] = dep.get("state")
    return record
