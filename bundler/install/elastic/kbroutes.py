"""Kibana's knowledge-base and product-doc internal routes, called and polled.

* **Knowledge base** (Observability AI Assistant; Kibana 9.0+, E5 9.1+):
  ``POST /internal/observability_ai_assistant/kb/setup?inference_id=<id>``, then ``GET
  .../kb/status`` polled until ``kbState`` is ``READY``; ``ERROR`` ends the wait with
  Kibana's message, and a state still held at ``--kb-timeout`` is named.
* **Product docs** (``product_doc_base``): ``POST /internal/product_doc_base/install``
  (``{"inferenceId": <id>}`` from 9.1; before, ELSER only and no body), then ``GET
  /internal/product_doc_base/status`` polled until ``overall`` is ``installed``. Kibana
  downloads the artifacts itself, from ``xpack.productDocBase.artifactRepositoryUrl``
  (a kibana.yml setting: the repository airgap serves or copies, in the settings file).

The routes are internal: every call carries ``kbn-xsrf`` (the client's) and
``x-elastic-internal-origin: Kibana``. What to call, and when, is :mod:`.kb`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bundler.errors import InstallError
from bundler.install.elastic.api import ApiClient, json_object
from bundler.install.elastic.connector import Version
from bundler.install.elastic.embedding import ELSER_ENDPOINT

KB = "/internal/observability_ai_assistant/kb"
DOCS = "/internal/product_doc_base"
INTERNAL = {"x-elastic-internal-origin": "Kibana"}
KB_SINCE: Version = (9, 0, 0)  # kb/setup takes inference_id (8.x: its own endpoint)
E5_SINCE: Version = (9, 1, 0)  # E5 for the knowledge base; inferenceId for product docs
DOCS_SINCE: Version = (8, 16, 0)  # product_doc_base
READY, ERROR = "READY", "ERROR"
STUCK_HINTS = {
    "NOT_INSTALLED": "Kibana did not start the setup: see Kibana's log.",
    "MODEL_PENDING_DEPLOYMENT": "Elasticsearch has not started the model: see "
    "`GET _ml/trained_models/_stats` and the Elasticsearch log.",
    "DEPLOYING_MODEL": "The ML nodes are still loading the model: raise --kb-timeout, or "
    "check ML node memory and `GET _ml/trained_models/_stats`.",
    "MODEL_PENDING_ALLOCATION": "No ML node has room for the model: add ML node memory or "
    "nodes (ELSER needs about 4 GB), then run the same install again.",
}


@dataclass(frozen=True)
class KbOptions:
    """``--kb-inference-id``, ``--kb-timeout``, ``--no-kb``."""

    enabled: bool = True
    inference_id: str = ELSER_ENDPOINT
    timeout: float = 1200.0  # each of: the knowledge base, the product docs
    poll: float = 1.0


def status(api: ApiClient, path: str, what: str) -> dict[str, Any]:
    r = api.request("GET", path, headers=INTERNAL, what=what)
    return json_object(r, "Check --kibana-url.")


def kb_state(st: dict[str, Any]) -> str:
    return str(st.get("kbState") or (READY if st.get("ready") else "unknown"))


def setup_kb(
    api: ApiClient, prefix: str, kb: KbOptions, mine: str | None
) -> tuple[str, str, str | None]:
    """Set up the knowledge base on ``kb.inference_id`` and wait until READY.

    ``mine``: the endpoint this tool set it up on before, if any. A READY knowledge base
    is moved to another endpoint only from that one: one the site chose (before airgap,
    or since) is left as it is. Returns (the state before, what was done, and the
    endpoint of a READY knowledge base left alone, else None).

    Raises:
        InstallError: Kibana refused, the state became ERROR, or it stayed in another
            state than READY past ``kb.timeout`` (named).
    """
    ident = kb.inference_id
    st = status(api, f"{prefix}{KB}/status", "reading the knowledge base's state")
    before, current = kb_state(st), st.get("currentInferenceId")
    if before == READY and current in (None, ident):
        return before, "kept", None
    if before == READY and (mine is None or current != mine):
        return before, "left", str(current)  # the site's own choice: never switched
    r = api.request(
        "POST",
        f"{prefix}{KB}/setup?inference_id={quote(ident, safe='')}",
        headers=INTERNAL,
        allow=(400, 404, 500),
        what="setting up the knowledge base",
    )
    if r.status_code != 200:
        said = json_object(r, "Check --kibana-url.").get("message") or r.text[:200]
        raise InstallError(
            f"Kibana refused to set up the knowledge base on {ident} ({r.status_code}): {said}",
            hint="The endpoint must exist in the Elasticsearch Kibana uses, and the Kibana "
            "credentials need the AI Assistant privilege.",
        )
    deadline = time.monotonic() + kb.timeout
    while True:
        st = status(api, f"{prefix}{KB}/status", "waiting for the knowledge base")
        state = kb_state(st)
        if state == READY and st.get("currentInferenceId") in (None, ident):
            return before, "set up", None
        if state == ERROR:
            raise InstallError(
                f"Kibana's knowledge base on {ident} is in state ERROR: "
                f"{st.get('errorMessage') or 'no message'}",
                hint="Elasticsearch could not run the model: check that every ML node reads "
                "the model repository (xpack.ml.model_repository) and has the memory, then "
                "run the same install again.",
            )
        if time.monotonic() > deadline:
            raise InstallError(
                f"Kibana's knowledge base on {ident} was not READY after {kb.timeout:.0f}s: it "
                f"stayed in state {state}",
                hint=STUCK_HINTS.get(state, "See Kibana's log.") + " Then run the same install "
                "again (--kb-timeout sets the wait).",
            )
        time.sleep(kb.poll)


def docs_path(prefix: str, tail: str, ident: str, with_id: bool) -> str:
    query = f"?inferenceId={quote(ident, safe='')}" if with_id else ""
    return f"{prefix}{DOCS}/{tail}{query}"


def install_docs(
    api: ApiClient, prefix: str, kb: KbOptions, kibana: Version, repo: str
) -> tuple[str, str]:
    """Install the product docs for ``kb.inference_id`` and wait until installed.

    Returns (the overall status before, what was done).

    Raises:
        InstallError: Kibana refused or failed (its reason, and the repository setting to
            check), or the status stayed elsewhere past ``kb.timeout`` (named).
    """
    ident, with_id = kb.inference_id, kibana >= E5_SINCE
    hint = (
        "Kibana downloads the artifacts itself: add `xpack.productDocBase.artifactRepositoryUrl"
        f": {repo}` to kibana.yml (it is in the settings file), restart Kibana, then run the "
        "same install again."
    )
    where = docs_path(prefix, "status", ident, with_id)
    before = str(status(api, where, "reading the product docs' state").get("overall"))
    if before == "installed":
        return before, "kept"
    saved, api.timeout = api.timeout, kb.timeout + 30.0  # Kibana answers once it is done
    try:
        r = api.request(
            "POST",
            f"{prefix}{DOCS}/install",
            json={"inferenceId": ident} if with_id else {},
            headers=INTERNAL,
            allow=(400, 500),
            what="installing the product docs",
        )
    finally:
        api.timeout = saved
    body = json_object(r, "Check --kibana-url.")
    if r.status_code != 200 or (body.get("installed") is False and body.get("failureReason")):
        said = body.get("failureReason") or body.get("message") or r.text[:200]
        raise InstallError(
            f"Kibana could not install the product docs for {ident}: {said}", hint=hint
        )
    deadline = time.monotonic() + kb.timeout
    while True:
        st = status(api, where, "waiting for the product docs")
        overall = str(st.get("overall"))
        if overall == "installed":
            return before, "installed"
        if overall == "error":
            why = "; ".join(
                f"{p}: {s.get('failureReason')}"
                for p, s in (st.get("perProducts") or {}).items()
                if isinstance(s, dict) and s.get("failureReason")
            )
            raise InstallError(
                f"Kibana could not install the product docs for {ident}: {why or 'error'}",
                hint=hint,
            )
        if time.monotonic() > deadline:
            raise InstallError(
                f"the product docs for {ident} were not installed after {kb.timeout:.0f}s: "
                f"Kibana's status stayed {overall}",
                hint="Raise --kb-timeout, or see Kibana's log. " + hint,
            )
        time.sleep(kb.poll)
