"""Proof that the inference-endpoint wiring works, hop by hop, in order, each timed.

1. **Elasticsearch → model**: ``POST _inference/chat_completion/<id>/_stream``; the
   Server-Sent Events are parsed and at least one content delta must arrive.
2. **Kibana → Elasticsearch**: ``GET /internal/inference/connectors`` lists the id with
   ``isInferenceEndpoint: true`` (Kibana 9.4+).
3. **Kibana → Elasticsearch → model**: ``POST /internal/inference/chat_complete`` with
   ``{"connectorId": <id>}`` answers with content.

The Kibana routes are internal: they get ``kbn-xsrf`` and ``x-elastic-internal-origin:
Kibana``. A failure is an :class:`~bundler.errors.InstallError` whose message starts with
the hop that failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import requests

from bundler.errors import InstallError
from bundler.install.elastic.api import ApiClient
from bundler.install.elastic.endpoint import TrustHint, Wanted, causes, explain

PROMPT = [{"role": "user", "content": "Reply with the single word: ready"}]
MAX_STREAM = 1 << 20  # bytes of SSE read at most: a short answer is asked for
INTERNAL = {"x-elastic-internal-origin": "Kibana"}
ES_HOP = "Elasticsearch → model"
KIBANA_LIST_HOP = "Kibana → Elasticsearch"
KIBANA_CHAT_HOP = "Kibana → Elasticsearch → model"


@dataclass(frozen=True)
class Hop:
    hop: str
    call: str
    seconds: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "call": self.call,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


def read_sse(r: requests.Response, limit: int = MAX_STREAM) -> tuple[str, int, str | None]:
    """The content of a chat completion stream: (text, content deltas, error or None).

    Reads at most ``limit`` bytes; ``event: error`` ends it with the error's text.
    """
    text: list[str] = []
    deltas = 0
    event = "message"
    seen = 0
    for raw in r.iter_lines(decode_unicode=False):
        seen += len(raw) + 1
        if seen > limit:
            return "".join(text), deltas, f"the stream exceeded {limit} bytes"
        line = raw.decode("utf-8", "replace")
        if line.startswith("event:"):
            event = line[6:].strip()
            continue
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            return "".join(text), deltas, f"not JSON in the stream: {data[:120]}"
        if event == "error" or (isinstance(chunk, dict) and "error" in chunk):
            return "".join(text), deltas, json.dumps(chunk)[:300]
        for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                deltas += 1
                text.append(str(content))
    return "".join(text), deltas, None


def es_to_model(api: ApiClient, ident: str, w: Wanted, trust: TrustHint) -> Hop:
    """Hop 1. Raises: InstallError: named ``Elasticsearch → model``."""
    call = f"POST _inference/chat_completion/{ident}/_stream"
    started = time.monotonic()
    r = api.request(
        "POST",
        f"/_inference/chat_completion/{ident}/_stream",
        json={"messages": PROMPT, "max_completion_tokens": 16},
        allow=(400, 401, 403, 404, 500, 502, 503),
        what="proving the endpoint",
        stream=True,
    )
    try:
        if r.status_code != 200:
            text = causes(r)
            if r.status_code in (401, 403) and "inference entity id" not in text:
                raise api._refused("POST", api.base + call.split(" ", 1)[1], r, "proof")
            e = explain(r, f"hop {ES_HOP} failed: {call}", w, trust)
            raise InstallError(e.message, hint=e.hint)
        content, deltas, error = read_sse(r)
    finally:
        r.close()
    took = time.monotonic() - started
    if error or not deltas:
        raise InstallError(
            f"hop {ES_HOP} failed: {call} answered 200 but "
            + (f"the stream carried an error: {error}" if error else "with no content delta"),
            hint="Elasticsearch reached the model but got no answer from it: see vLLM's log "
            "(`airgap status`) and that the served model can chat.",
        )
    return Hop(ES_HOP, call, took, f"{deltas} content deltas: {content[:80]!r}")


def kibana_to_es(api: ApiClient, prefix: str, ident: str) -> list[Hop]:
    """Hops 2 and 3 (``prefix`` is the space's ``/s/<id>`` or empty).

    Raises:
        InstallError: named ``Kibana → Elasticsearch`` (the listing) or
            ``Kibana → Elasticsearch → model`` (the chat call).
    """
    hops = []
    call = f"GET {prefix}/internal/inference/connectors"
    started = time.monotonic()
    r = api.request(
        "GET",
        f"{prefix}/internal/inference/connectors",
        headers=INTERNAL,
        allow=(400, 401, 403, 404, 500),
        what="listing Kibana's models",
    )
    if r.status_code != 200:
        raise _refused(KIBANA_LIST_HOP, call, r)
    try:
        found = [c for c in r.json().get("connectors") or [] if c.get("connectorId") == ident]
    except (ValueError, AttributeError):
        found = []
    if not found or not found[0].get("isInferenceEndpoint"):
        raise InstallError(
            f"hop {KIBANA_LIST_HOP} failed: {call} does not list {ident} as an inference endpoint",
            hint="Kibana lists the endpoints it can read as the calling user: the Kibana "
            "credentials need the monitor_inference cluster privilege in Elasticsearch, and "
            "Kibana must be 9.4 or later and connected to the same cluster as --es-url.",
        )
    hops.append(
        Hop(KIBANA_LIST_HOP, call, time.monotonic() - started, "listed as an inference endpoint")
    )
    call = f"POST {prefix}/internal/inference/chat_complete"
    started = time.monotonic()
    r = api.request(
        "POST",
        f"{prefix}/internal/inference/chat_complete",
        json={"connectorId": ident, "messages": PROMPT},
        headers=INTERNAL,
        allow=(400, 404, 500, 502),
        what="Kibana's chat call",
    )
    try:
        body = r.json()
    except ValueError:
        body = {}
    content = body.get("content") if isinstance(body, dict) else None
    if r.status_code == 401:
        raise _refused(KIBANA_CHAT_HOP, call, r)
    if r.status_code != 200 or not content:
        said = body.get("message") if isinstance(body, dict) else None
        raise InstallError(
            f"hop {KIBANA_CHAT_HOP} failed: {call} with connectorId {ident} answered "
            f"{r.status_code}: {said or r.text[:200]}",
            hint="Elasticsearch's own call to the model worked, so look at Kibana's side: "
            "its log, genAiSettings:defaultAIConnectorOnly, and the privileges of the Kibana "
            "credentials (monitor_inference).",
        )
    hops.append(
        Hop(KIBANA_CHAT_HOP, call, time.monotonic() - started, f"answered {str(content)[:80]!r}")
    )
    return hops


def _refused(hop: str, call: str, r: requests.Response) -> InstallError:
    try:
        body = r.json()
        said = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        said = None
    hint = (
        "Kibana did not accept the credentials (AIRGAP_KIBANA_API_KEY, --kibana-api-key-file)."
        if r.status_code == 401
        else "Kibana refused its own internal route: the request carried kbn-xsrf and "
        "x-elastic-internal-origin: Kibana, so see Kibana's log; the credentials need "
        "the monitor_inference cluster privilege to see Elasticsearch's endpoints."
    )
    return InstallError(
        f"hop {hop} failed: {call} answered {r.status_code}: {said or r.text[:200]}", hint=hint
    )
