"""Elasticsearch's built-in embedding endpoints (8.17+), mounted on the Elasticsearch
stand-in.

Enforced (contract ``ELASTIC-9X.md`` §4-§5; Elasticsearch's
``ElasticsearchInternalService`` default config ids, ``TransportPutInferenceModelAction``,
Kibana's ``ensureInferenceDeployed``):

* from **8.17** (not before: 404) ``.elser-2-elasticsearch`` (``sparse_embedding``) and
  ``.multilingual-e5-small-elasticsearch`` (``text_embedding``) exist without a PUT,
  each naming the model variant for the ML nodes' architecture
  (``.elser_model_2_linux-x86_64`` on Linux x86, ``.elser_model_2`` elsewhere);
* a PUT of such an id is **400** ``[<id>] is a reserved inference ID. Cannot create a new
  inference endpoint with a reserved ID.``; a DELETE of one is refused too (400; the
  wording is the stand-in's own);
* the first inference call (``POST _inference/[<task>/]<id>`` with ``input``) starts the
  deployment: the model is downloaded from ``xpack.ml.model_repository`` exactly as for
  a PUT (:meth:`.elasticsearch.ElasticsearchStandIn.start_download`); the call answers
  200 with embeddings once started, **408** when its ``timeout`` passes first (the
  deployment goes on), **500** with the reason when it failed;
* ``_ml/trained_models/<model>/_stats`` lists that deployment under the endpoint's id.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from devkit.standins._http import Request, Response
from devkit.standins.inference import error

if TYPE_CHECKING:
    from devkit.standins.elasticsearch import ElasticsearchStandIn

ELSER = ".elser-2-elasticsearch"
E5 = ".multilingual-e5-small-elasticsearch"
TASKS = {ELSER: "sparse_embedding", E5: "text_embedding"}


def _seconds(text: str | None, default: float) -> float:
    m = re.fullmatch(r"([0-9]+)(ms|s|m)?", text or "")
    if not m:
        return default
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m[2]]


class BuiltinEndpoints:
    def __init__(self, es: ElasticsearchStandIn, arch: str = "linux-x86_64") -> None:
        self.es = es
        self.arch = arch  # the ML nodes': "linux-x86_64", or anything else
        self.deployed: set[str] = set()  # ids whose deployment was started
        self.inference_calls: list[str] = []  # ids called, in order
        ids = r"(?P<id>\.[^/]+)"
        task = r"(?:(?P<task>[a-z_]+)/)?"
        es.route("GET", r"/_inference/" + task + ids, self._get)
        es.route("PUT", r"/_inference/" + task + ids, self._put)
        es.route("DELETE", r"/_inference/" + task + ids, self._delete)
        es.route("POST", r"/_inference/" + task + ids, self._infer)

    @property
    def endpoints(self) -> dict[str, dict[str, Any]]:
        """The built-in endpoints this version has (none before 8.17)."""
        if tuple(int(x) for x in self.es.version.split(".")[:2]) < (8, 17):
            return {}
        suffix = "_linux-x86_64" if self.arch == "linux-x86_64" else ""
        models = {ELSER: f".elser_model_2{suffix}", E5: f".multilingual-e5-small{suffix}"}
        return {
            ident: {
                "inference_id": ident,
                "task_type": TASKS[ident],
                "service": "elasticsearch",
                "service_settings": {
                    "num_threads": 1,
                    "model_id": models[ident],
                    "adaptive_allocations": {
                        "enabled": True,
                        "min_number_of_allocations": 0,
                        "max_number_of_allocations": 32,
                    },
                },
                "chunking_settings": {"strategy": "sentence", "max_chunk_size": 250},
            }
            for ident in (ELSER, E5)
        }

    def deployments(self) -> dict[str, dict[str, Any]]:
        """The built-in endpoints whose deployment was started (for ``_stats``)."""
        return {i: ep for i, ep in self.endpoints.items() if i in self.deployed}

    def _find(self, req: Request) -> tuple[str, dict[str, Any] | None, Response | None]:
        ident, task = req.params["id"], req.params.get("task")
        ep = self.endpoints.get(ident)
        if ep is None:
            return (
                ident,
                None,
                error(
                    404, "resource_not_found_exception", f"Inference endpoint not found [{ident}]"
                ),
            )
        if task and task != ep["task_type"]:
            return (
                ident,
                None,
                error(
                    400,
                    "status_exception",
                    f"Incompatible task_type, the requested type [{task}] does not match the "
                    f"inference endpoint type [{ep['task_type']}]",
                ),
            )
        return ident, ep, None

    def _get(self, req: Request) -> Response:
        _, ep, bad = self._find(req)
        return bad or Response(200, {"endpoints": [ep]})

    def _put(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident in self.endpoints:
            return error(
                400,
                "status_exception",
                f"[{ident}] is a reserved inference ID. Cannot create a new inference endpoint "
                "with a reserved ID.",
            )
        return error(400, "action_request_validation_exception", f"Invalid inference_id [{ident}]")

    def _delete(self, req: Request) -> Response:
        ident, _, bad = self._find(req)
        return bad or error(
            400, "status_exception", f"[{ident}] is a default inference endpoint of Elasticsearch"
        )

    def _infer(self, req: Request) -> Response:
        ident, ep, bad = self._find(req)
        if bad or ep is None:
            return bad or Response(500)
        body = req.json()
        if not isinstance(body, dict) or not body.get("input"):
            return error(400, "action_request_validation_exception", "Field [input] cannot be null")
        self.inference_calls.append(ident)
        model_id = ep["service_settings"]["model_id"]
        self.deployed.add(ident)
        m = self.es.start_download(model_id)
        m["done"].wait(_seconds(req.query.get("timeout", [""])[0], self.es.wait))
        if m["state"] == "failed":
            return error(500, "status_exception", str(m["reason"]))
        if m["state"] != "started":
            return error(
                408,
                "status_exception",
                f"Timed out after [{req.query.get('timeout', ['30s'])[0]}] waiting for "
                f"trained model deployment [{ident}] to start",
            )
        if ep["task_type"] == "sparse_embedding":
            return Response(200, {"sparse_embedding": [{"is_truncated": False, "embedding": {}}]})
        return Response(200, {"text_embedding": [{"embedding": [0.0] * 4}]})
