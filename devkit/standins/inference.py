"""Elasticsearch's ``chat_completion`` inference endpoints for the ``openai`` service.

The rules, from the contract (``ELASTIC-9X.md`` §1.2, §3) and Elasticsearch's source
(``ModelRegistry``, ``ServiceUtils``, ``TransportUpdateInferenceModelAction``,
``InferenceLicenceCheck``, ``SimpleChatCompletionServiceIntegrationValidator``):

* ``PUT _inference/chat_completion/<id>``: the task type exists from 8.18; the id must be
  lowercase alphanumerics, ``-``, ``_`` or ``.`` and start and end alphanumeric
  (``action_request_validation_exception``); an id that exists (any task type) is
  **400** ``resource_already_exists_exception``; the ``openai`` service needs an
  Enterprise or trial license (**403** ``security_exception`` "current license is
  non-compliant for [inference]"); service settings per version (``api_key`` required
  up to 9.4, OAuth fields from 9.5, ``task_settings.headers`` from 9.2), an unknown one
  is **400** "Configuration contains settings [{k=v}] unknown to the [openai] service"
  ("Model configuration ..." before 9.0); ``model_id`` is required. Then the
  **validation call**: a real chat request ("how big") to ``url`` with ``Authorization:
  Bearer <api_key>`` over the JVM's TLS (:mod:`.jvmtrust`); if it fails, **400**
  "Could not complete inference endpoint creation as validation call to service threw
  an exception." with the cause nested in ``caused_by``.
* ``GET _inference/<id>``, ``_inference/chat_completion/<id>``, ``.../_all``: the
  endpoint without its ``api_key``.
* ``PUT _inference/chat_completion/<id>/_update``: ``api_key``, ``rate_limit``,
  ``organization_id``, ``max_input_tokens``; ``url`` and ``model_id`` cannot change:
  ignored before 9.5, refused from 9.5 (the update parsers must consume every key); no
  change returns early; a change is validated against the service again.
* ``POST _inference/chat_completion/<id>/_stream``: Server-Sent Events
  (``event: message`` / ``data: {chat.completion.chunk}`` ... ``data: [DONE]``);
  ``chat_completion`` has no non-streaming form (400, with Elasticsearch's words).
  An error from the model's server keeps its status (a 401 from Nginx is a 401 here).
* ``GET _license``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from devkit.standins._http import Request, Response
from devkit.standins.jvmtrust import JavaError

if TYPE_CHECKING:
    from devkit.standins.elasticsearch import ElasticsearchStandIn

ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_\-.]*[a-z0-9])?$")
VALIDATION_FAILED = (
    "Could not complete inference endpoint creation as validation call to service threw an "
    "exception."
)
STREAM_KEYS = {
    "messages", "model", "max_completion_tokens", "reasoning", "stop", "temperature",
    "tool_choice", "tools", "top_p",
}  # fmt: skip


def _v(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def error(status: int, kind: str, reason: str, cause: dict[str, str] | None = None) -> Response:
    err: dict[str, Any] = {"root_cause": [{"type": kind, "reason": reason}], "type": kind}
    err["reason"] = reason
    if cause:
        err["caused_by"] = cause
    return Response(status, {"error": err, "status": status})


def settings_keys(version: str) -> set[str]:
    """The ``service_settings`` the ``openai`` chat completion service reads."""
    keys = {"api_key", "model_id", "organization_id", "rate_limit", "url", "max_input_tokens"}
    if _v(version) >= (9, 5):
        keys |= {"client_id", "client_secret", "scopes", "token_url"}
    return keys


def _java_map(d: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in d.items()) + "}"


class ChatInference:
    """The chat_completion endpoints of one Elasticsearch stand-in."""

    def __init__(self, es: ElasticsearchStandIn) -> None:
        self.es = es
        self.endpoints: dict[str, dict[str, Any]] = {}  # id -> config, api_key included
        es.route("GET", r"/_license", self._license)
        es.route("GET", r"/_inference/_all", self._all)
        es.route("GET", r"/_inference/chat_completion/_all", self._all)
        es.route("PUT", r"/_inference/chat_completion/(?P<id>[^/]+)/_update", self._update)
        es.route("POST", r"/_inference/chat_completion/(?P<id>[^/]+)/_stream", self._stream)
        es.route("POST", r"/_inference/chat_completion/(?P<id>[^/]+)", self._no_plain_infer)
        es.route("PUT", r"/_inference/chat_completion/(?P<id>[^/]+)", self._put)
        es.route("GET", r"/_inference/chat_completion/(?P<id>[^/]+)", self._get)
        es.route("DELETE", r"/_inference/chat_completion/(?P<id>[^/]+)", self._delete)
        es.route("GET", r"/_inference/(?P<id>[a-z0-9][^/]*)", self._get_any)

    # -- helpers --------------------------------------------------------------------

    def _unknown(self, settings: dict[str, Any]) -> Response:
        words = "Configuration" if _v(self.es.version) >= (9, 0) else "Model configuration"
        return error(
            400,
            "status_exception",
            f"{words} contains settings [{_java_map(settings)}] unknown to the [openai] service",
        )

    @staticmethod
    def public(ident: str, ep: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in ep["service_settings"].items() if k != "api_key"}
        out = {
            "inference_id": ident,
            "task_type": "chat_completion",
            "service": "openai",
            "service_settings": settings,
        }
        if ep.get("task_settings"):
            out["task_settings"] = ep["task_settings"]
        return out

    def _not_found(self, ident: str) -> Response:
        return error(404, "resource_not_found_exception", f"Inference endpoint not found [{ident}]")

    def _call(self, ident: str, ep: dict[str, Any], body: dict[str, Any]) -> Any:
        """POST ``body`` to the endpoint's url as Elasticsearch does; the open response.

        Raises:
            JavaError: TLS, name or connection failure, or the service's error status.
        """
        s = ep["service_settings"]
        conn = self.es.trust.connect(s["url"], timeout=30)
        headers = {"Content-Type": "application/json"}
        if s.get("api_key"):
            headers["Authorization"] = f"Bearer {s['api_key']}"
        path = s["url"].split("://", 1)[1]
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        r = conn.getresponse()
        if r.status == 200:
            return r
        text = r.read(4096).decode(errors="replace")
        conn.close()
        detail = ""
        try:
            doc = json.loads(text)
            msg = (
                doc.get("error", {}).get("message") if isinstance(doc.get("error"), dict) else None
            )
            msg = msg or doc.get("message")
            detail = f". Error message: [{msg}]" if msg else ""
        except ValueError:
            pass
        what = (
            "an authentication error"
            if r.status in (401, 403)
            else "a server error"
            if r.status >= 500
            else "a rate limit"
            if r.status == 429
            else "an unsuccessful"
        )
        raise JavaError(
            "status_exception",
            f"Received {what} status code for request from inference entity id [{ident}] "
            f"status [{r.status}]{detail}",
        ) from None

    def _validate(self, ident: str, ep: dict[str, Any]) -> Response | None:
        probe = {
            "messages": [{"role": "user", "content": "how big"}],
            "model": ep["service_settings"]["model_id"],
            "n": 1,
        }
        try:
            r = self._call(ident, ep, probe)
            doc = json.loads(r.read(1 << 20))
            r.close()
            if not doc.get("choices"):
                raise JavaError(
                    "illegal_state_exception", "Failed to find required field [choices]"
                )
        except JavaError as e:
            return error(
                400, "status_exception", VALIDATION_FAILED, {"type": e.kind, "reason": e.reason}
            )
        except ValueError:
            return error(
                400,
                "status_exception",
                VALIDATION_FAILED,
                {"type": "x_content_parse_exception", "reason": "not JSON"},
            )
        return None

    # -- routes ---------------------------------------------------------------------

    def _license(self, req: Request) -> Response:
        lic = {"status": "active", "uid": "standin", "type": self.es.license}
        return Response(200, {"license": lic})

    def _all(self, req: Request) -> Response:
        eps = [self.public(i, ep) for i, ep in sorted(self.endpoints.items())]
        if not req.path.startswith("/_inference/chat_completion"):
            eps += [dict(ep) for _, ep in sorted(self.es.endpoints.items())]
        return Response(200, {"endpoints": eps})

    def _get_any(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident in self.endpoints:
            return Response(200, {"endpoints": [self.public(ident, self.endpoints[ident])]})
        if ident in self.es.endpoints:
            return Response(200, {"endpoints": [self.es.endpoints[ident]]})
        return self._not_found(ident)

    def _get(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident in self.es.endpoints:
            return error(
                400,
                "status_exception",
                f"Requested task type [chat_completion] does not match the inference endpoint's "
                f"task type [{self.es.endpoints[ident]['task_type']}]",
            )
        if ident not in self.endpoints:
            return self._not_found(ident)
        return Response(200, {"endpoints": [self.public(ident, self.endpoints[ident])]})

    def _put(self, req: Request) -> Response:
        ident = req.params["id"]
        if _v(self.es.version) < (8, 18):
            return error(400, "illegal_argument_exception", "Unknown task_type [chat_completion]")
        if not ID_RE.match(ident):
            return error(
                400,
                "action_request_validation_exception",
                f"Validation Failed: 1: Invalid inference_id; '{ident}' can contain lowercase "
                "alphanumeric (a-z and 0-9), hyphens or underscores; must start and end with "
                "alphanumeric;",
            )
        if ident in self.endpoints or ident in self.es.endpoints:
            return error(
                400,
                "resource_already_exists_exception",
                f"Inference endpoint [{ident}] already exists",
            )
        body = req.json() or {}
        if body.get("service") != "openai":
            return error(400, "status_exception", f"Unknown service [{body.get('service')}]")
        if self.es.license not in ("enterprise", "trial"):
            return Response(
                403,
                {
                    "error": {
                        "root_cause": [
                            {
                                "type": "security_exception",
                                "reason": "current license is non-compliant for [inference]",
                                "license.expired.feature": "inference",
                            }
                        ],
                        "type": "security_exception",
                        "reason": "current license is non-compliant for [inference]",
                        "license.expired.feature": "inference",
                    },
                    "status": 403,
                },
            )
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("service", "service_settings", "task_settings")
        }
        settings = dict(body.get("service_settings") or {})
        unknown = {k: v for k, v in settings.items() if k not in settings_keys(self.es.version)}
        if extra or unknown:
            return self._unknown({**unknown, **extra})
        task = dict(body.get("task_settings") or {})
        allowed_task = {"user"} | ({"headers"} if _v(self.es.version) >= (9, 2) else set())
        bad_task = {k: v for k, v in task.items() if k not in allowed_task}
        if bad_task:
            return self._unknown(bad_task)
        required = ["model_id"] + (["api_key"] if _v(self.es.version) < (9, 5) else [])
        for key in required:
            if not settings.get(key):
                return error(
                    400,
                    "validation_exception",
                    f"Validation Failed: 1: [service_settings] does not contain the required "
                    f"setting [{key}];",
                )
        settings.setdefault("url", "https://api.openai.com/v1/chat/completions")
        settings.setdefault("rate_limit", {"requests_per_minute": 500})
        ep = {"service_settings": settings, "task_settings": task}
        bad = self._validate(ident, ep)
        if bad is not None:
            return bad
        self.endpoints[ident] = ep
        return Response(200, self.public(ident, ep))

    def _update(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident not in self.endpoints:
            return self._not_found(ident)
        body = req.json() or {}
        if body.get("task_type") not in (None, "chat_completion"):
            return error(
                400,
                "status_exception",
                "Task type must match the task type of the existing endpoint",
            )
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("service_settings", "task_settings", "task_type", "service")
        }
        if extra:
            return error(
                400,
                "x_content_parse_exception",
                f"[update_inference_request] unknown field [{next(iter(extra))}]",
            )
        new = dict(body.get("service_settings") or {})
        fixed = {k: new.pop(k) for k in ("url", "model_id") if k in new}
        if fixed and _v(self.es.version) >= (9, 5):
            return self._unknown(fixed)  # not consumed by the update parser
        updatable = {"api_key", "rate_limit", "organization_id", "max_input_tokens"}
        unknown = {k: v for k, v in new.items() if k not in updatable}
        if unknown:
            return self._unknown(unknown)
        ep = self.endpoints[ident]
        merged = copy.deepcopy(ep)
        merged["service_settings"].update(new)
        merged["task_settings"].update(body.get("task_settings") or {})
        if merged == ep:
            return Response(200, self.public(ident, ep))  # no change: returns early
        bad = self._validate(ident, merged)
        if bad is not None:
            return bad
        self.endpoints[ident] = merged
        return Response(200, self.public(ident, merged))

    def _delete(self, req: Request) -> Response:
        ident = req.params["id"]
        if self.endpoints.pop(ident, None) is None:
            return self._not_found(ident)
        return Response(200, {"acknowledged": True, "pipelines": [], "indexes": []})

    def _no_plain_infer(self, req: Request) -> Response:
        ident = req.params["id"]
        return error(
            400,
            "status_exception",
            f"Inference entity [{ident}] does not support task type [chat_completion] for "
            "inference, the task type must be one of [text_embedding, completion]. The task "
            f"type for the inference entity is chat_completion, please use the "
            f"_inference/chat_completion/{ident}/_stream URL.",
        )

    def _stream(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident not in self.endpoints:
            return self._not_found(ident)
        body = req.json() or {}
        unknown = [k for k in body if k not in STREAM_KEYS]
        if unknown:
            return error(
                400,
                "x_content_parse_exception",
                f"[chat_completion_request] unknown field [{unknown[0]}]",
            )
        if not body.get("messages"):
            return error(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: Field [messages] cannot be empty;",
            )
        ep = self.endpoints[ident]
        upstream = {
            **body,
            "model": body.get("model") or ep["service_settings"]["model_id"],
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            r = self._call(ident, ep, upstream)
        except JavaError as e:
            m = re.search(r"status \[(\d+)\]", e.reason)
            status = int(m.group(1)) if m and e.kind == "status_exception" else 500
            code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
                status, str(status)
            )
            return Response(status, {"error": {"code": code, "message": e.reason, "type": e.kind}})
        return Response(200, headers={"Content-Type": "text/event-stream"}, stream=self._relay(r))

    @staticmethod
    def _relay(r: Any) -> Iterator[bytes]:
        """The model's SSE chunks in Elasticsearch's unified form, then ``[DONE]``."""
        try:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                out = {
                    k: chunk[k] for k in ("id", "choices", "model", "object", "usage") if k in chunk
                }
                yield f"event: message\ndata: {json.dumps(out)}\n\n".encode()
        finally:
            r.close()
        yield b"event: message\ndata: [DONE]\n\n"
