"""Kibana's side of the model for AI features: advanced settings, the inference plugin's
internal routes and, from 9.4, Feature settings. Mounted on :class:`.kibana.KibanaStandIn`.

Enforced (contract ``ELASTIC-9X.md`` §1.3, §3; Kibana's ``ui_settings_client``,
``inference/server/routes/{connectors,chat_complete}.ts``, ``get_connector_list.ts``,
``search_inference_endpoints`` routes):

* ``GET``/``POST [/s/<space>]/api/kibana/settings`` (per space): ``{"changes": {k: v}}``,
  ``null`` removes a value; the answer is ``{"settings": {k: {"userValue": v}}}`` with
  ``"isOverridden": true`` for a ``uiSettings.overrides`` key from kibana.yml, which
  cannot be written: **400** ``Unable to update "<key>" because it is overridden``.
  ``genAiSettings:defaultAIConnector`` takes a string, ``...DefaultAIConnectorOnly`` a
  boolean (9.2+; a wrong type is 400).
* ``/internal/...`` needs ``x-elastic-internal-origin`` from 9.0 (internal APIs are
  restricted): **400** ``uri [<path>] with method [<m>] exists but is not available with
  the current configuration``.
* ``GET /internal/inference/connectors`` → ``{"connectors": [...]}``: stack connectors of
  supported types and, **from 9.4 only**, Elasticsearch's ``chat_completion`` endpoints
  (read as the calling user), each ``{connectorId: inference_id, type: ".inference",
  isInferenceEndpoint: true, ...}``.
* ``POST /internal/inference/chat_complete`` (``connectorId``, ``messages``; the other
  keys of ``chatCompleteBodySchema`` allowed, no unknown ones): an endpoint (9.4+) is
  called as ``POST _inference/chat_completion/<id>/_stream?timeout=3m`` as the calling
  user and its SSE read; a ``.gen-ai`` connector calls its ``apiUrl``; the answer is
  ``{"content", "toolCalls"}``, an error ``{"type": "error", "code", "message"}`` with
  its status. An unknown id is 400. From 9.4.5, with ``defaultAIConnectorOnly``, any
  other model than the default is refused (400).
* ``GET``/``PUT /internal/search_inference_endpoints/settings`` (9.4+, per space):
  ``{"features": [{"feature_id", "endpoints": [{"id"}]}]}`` (answered under ``data``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import requests

from devkit.standins._http import Request, Response

if TYPE_CHECKING:
    from devkit.standins.kibana import KibanaStandIn

DEFAULT = "genAiSettings:defaultAIConnector"
DEFAULT_ONLY = "genAiSettings:defaultAIConnectorOnly"
TYPES: dict[str, type] = {DEFAULT: str, DEFAULT_ONLY: bool}
CHAT_KEYS = {
    "connectorId", "system", "messages", "toolChoice", "tools", "functionCalling",
    "maxRetries", "modelName", "retryConfiguration", "temperature", "metadata",
}  # fmt: skip
SUPPORTED = {".gen-ai", ".bedrock", ".gemini", ".inference"}


def v3(text: str) -> tuple[int, int, int]:
    nums = [*(int(x) for x in text.split("-")[0].split(".")[:3]), 0, 0, 0]
    return nums[0], nums[1], nums[2]


def _bad(message: str) -> Response:
    return Response(400, {"statusCode": 400, "error": "Bad Request", "message": message})


def _fail(status: int, code: str, message: str) -> Response:
    return Response(status, {"type": "error", "code": code, "message": message})


class KibanaAi:
    def __init__(self, kibana: KibanaStandIn, elasticsearch: str | None) -> None:
        self.k = kibana
        self.elasticsearch = elasticsearch  # the cluster Kibana talks to
        self.settings: dict[str, dict[str, Any]] = {s: {} for s in kibana.spaces}
        self.features: dict[str, list[dict[str, Any]]] = {s: [] for s in kibana.spaces}
        sp = r"(?:/s/(?P<space>[a-z0-9_-]+))?"
        kibana.route("GET", sp + r"/api/kibana/settings", self._get_settings)
        kibana.route("POST", sp + r"/api/kibana/settings", self._set_settings)
        kibana.route("GET", sp + r"/internal/inference/connectors", self._connectors)
        kibana.route("POST", sp + r"/internal/inference/chat_complete", self._chat)
        kibana.route("GET", sp + r"/internal/search_inference_endpoints/settings", self._features)
        kibana.route("PUT", sp + r"/internal/search_inference_endpoints/settings", self._features)

    @property
    def version(self) -> tuple[int, int, int]:
        return v3(self.k.version)

    def internal_denied(self, req: Request) -> Response | None:
        origin = req.headers.get("x-elastic-internal-origin", "").lower()
        if "/internal/" in req.path and self.version >= (9, 0, 0) and origin != "kibana":
            return _bad(
                f"uri [{req.path}] with method [{req.method.lower()}] exists but is not "
                "available with the current configuration"
            )
        return None

    def _space(self, req: Request) -> str | None:
        space = req.params.get("space") or "default"
        return space if space in self.k.spaces else None

    def values(self, space: str) -> dict[str, Any]:
        """The settings in force in ``space``: kibana.yml overrides win."""
        return {**self.settings[space], **self.k.overrides}

    # -- advanced settings --------------------------------------------------------------

    def _user_provided(self, space: str) -> dict[str, Any]:
        out: dict[str, Any] = {k: {"userValue": v} for k, v in self.settings[space].items()}
        for k, v in self.k.overrides.items():
            out[k] = {"userValue": v, "isOverridden": True}
        return {"settings": out}

    def _get_settings(self, req: Request) -> Response:
        space = self._space(req)
        if space is None:
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        return Response(200, self._user_provided(space))

    def _set_settings(self, req: Request) -> Response:
        space = self._space(req)
        if space is None:
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        body = req.json()
        if (
            not isinstance(body, dict)
            or set(body) != {"changes"}
            or not isinstance(body["changes"], dict)
        ):
            return _bad("[request body.changes]: expected value of type [object]")
        changes = body["changes"]
        for key, value in changes.items():
            if key in self.k.overrides:
                return _bad(f'Unable to update "{key}" because it is overridden')
            want = TYPES.get(key) if self.version >= (9, 2, 0) else None
            if want is not None and value is not None and type(value) is not want:
                names = {str: "string", bool: "boolean"}
                got = names.get(type(value), type(value).__name__)
                return _bad(
                    f"[validation [{key}]]: expected value of type [{names[want]}] but got [{got}]"
                )
        for key, value in changes.items():
            if value is None:
                self.settings[space].pop(key, None)
            else:
                self.settings[space][key] = value
        return Response(200, self._user_provided(space))

    # -- the inference plugin -----------------------------------------------------------

    def _es(self, req: Request, method: str, path: str, **kw: Any) -> requests.Response:
        """Kibana's call to Elasticsearch, as the user who called Kibana."""
        assert self.elasticsearch, "this Kibana stand-in was given no Elasticsearch"
        with requests.Session() as s:
            s.trust_env = False
            auth = {"Authorization": req.headers.get("authorization", "")}
            return s.request(method, self.elasticsearch + path, headers=auth, timeout=180, **kw)

    def connector_list(self, req: Request, space: str) -> list[dict[str, Any]]:
        out = []
        for ident, c in self.k.connectors[space].items():
            if c["connector_type_id"] in SUPPORTED:
                out.append(
                    {
                        "connectorId": ident,
                        "name": c["name"],
                        "type": c["connector_type_id"],
                        "config": c["config"],
                        "capabilities": {},
                        "isInferenceEndpoint": False,
                        "isPreconfigured": False,
                    }
                )
        if self.version >= (9, 4, 0) and self.elasticsearch:
            r = self._es(req, "GET", "/_inference/chat_completion/_all")
            r.raise_for_status()
            for ep in r.json().get("endpoints") or []:
                ident = ep["inference_id"]
                out.append(
                    {
                        "connectorId": ident,
                        "name": ident,
                        "type": ".inference",
                        "config": {
                            "inferenceId": ident,
                            "providerConfig": {"model_id": ep["service_settings"].get("model_id")},
                            "taskType": ep["task_type"],
                            "service": ep["service"],
                            "serviceSettings": ep["service_settings"],
                        },
                        "capabilities": {},
                        "isInferenceEndpoint": True,
                        "isPreconfigured": False,
                    }
                )
        return out

    def _connectors(self, req: Request) -> Response:
        space = self._space(req)
        if space is None:
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        try:
            return Response(200, {"connectors": self.connector_list(req, space)})
        except requests.RequestException as e:
            return Response(
                500, {"statusCode": 500, "error": "Internal Server Error", "message": str(e)}
            )

    def _chat(self, req: Request) -> Response:
        space = self._space(req)
        if space is None:
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        body = req.json()
        if not isinstance(body, dict):
            return _bad("[request body]: expected a plain object value, but found [null] instead.")
        for key in body:
            if key not in CHAT_KEYS:
                return _bad(f"[request body.{key}]: definition for this key is missing")
        ident = body.get("connectorId")
        if not isinstance(ident, str) or not isinstance(body.get("messages"), list):
            return _bad("[request body.connectorId]: expected value of type [string]")
        values = self.values(space)
        if self.version >= (9, 4, 5) and values.get(DEFAULT_ONLY) and ident != values.get(DEFAULT):
            return _fail(
                400,
                "requestError",
                f"Only the default AI connector may be used; '{ident}' is not it",
            )
        try:
            found = {c["connectorId"]: c for c in self.connector_list(req, space)}
        except requests.RequestException as e:
            return _fail(500, "internalError", str(e))
        c = found.get(ident)
        if c is None:
            return _fail(
                400, "requestError", f"No connector or inference endpoint found for ID '{ident}'"
            )
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in body["messages"]]
        if body.get("system"):
            messages.insert(0, {"role": "system", "content": body["system"]})
        try:
            if c["isInferenceEndpoint"]:
                content = self._via_endpoint(req, ident, messages)
            else:
                content = self._via_connector(space, ident, messages)
        except RuntimeError as e:
            status, _, text = str(e).partition(" ")
            return _fail(int(status), "providerError", text)
        return Response(200, {"content": content, "toolCalls": []})

    def _via_endpoint(self, req: Request, ident: str, messages: list[dict[str, Any]]) -> str:
        r = self._es(
            req,
            "POST",
            f"/_inference/chat_completion/{ident}/_stream?timeout=3m",
            json={"messages": messages},
            stream=True,
        )
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} Error calling connector: {r.text[:300]}")
        parts = []
        for line in r.iter_lines():
            text = line.decode()
            if text.startswith("data:") and text[5:].strip() != "[DONE]":
                for choice in json.loads(text[5:]).get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
        return "".join(parts)

    def _via_connector(self, space: str, ident: str, messages: list[dict[str, Any]]) -> str:
        c = self.k.connectors[space][ident]
        verify: bool | str = str(self.k.trusted_ca) if self.k.trusted_ca else True
        with requests.Session() as s:
            s.trust_env = False
            try:
                r = s.post(
                    c["config"]["apiUrl"],
                    json={"model": c["config"].get("defaultModel"), "messages": messages},
                    headers={"Authorization": f"Bearer {c['secrets']['apiKey']}"},
                    timeout=120,
                    verify=verify,
                )
            except requests.RequestException as e:
                raise RuntimeError(f"500 {e}") from None
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} Status code: {r.status_code}")
        return str(r.json()["choices"][0]["message"]["content"])

    # -- Feature settings (9.4+) ------------------------------------------------------

    def _features(self, req: Request) -> Response:
        space = self._space(req)
        if space is None or self.version < (9, 4, 0):
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        if req.headers.get("elastic-api-version") != "1":
            return _bad(
                "Please specify a version via elastic-api-version header. Available versions: 1"
            )
        if req.method == "PUT":
            body = req.json() or {}
            self.features[space] = list(body.get("features") or [])
        meta = {"id": "inference-settings"}
        return Response(200, {"_meta": meta, "data": {"features": self.features[space]}})
