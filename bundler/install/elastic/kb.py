"""Kibana's knowledge base and product documentation, set up through its internal APIs.

* **Knowledge base** (Observability AI Assistant; Kibana 9.0+, E5 9.1+):
  ``POST /internal/observability_ai_assistant/kb/setup?inference_id=<id>``, then ``GET
  .../kb/status`` polled until ``kbState`` is ``READY``; ``ERROR`` ends the wait with
  Kibana's message, and a state still held at ``--kb-timeout`` is named.
* **Product docs** (``product_doc_base``): ``POST /internal/product_doc_base/install``
  (``{"inferenceId": <id>}`` from 9.1; before, ELSER only and no body), then ``GET
  /internal/product_doc_base/status`` polled until ``overall`` is ``installed``. Kibana
  downloads the artifacts itself, from ``xpack.productDocBase.artifactRepositoryUrl``
  (a kibana.yml setting: the repository airgap serves or copies, in the settings file).

The routes are internal: every call carries ``kbn-xsrf`` and ``x-elastic-internal-origin:
Kibana``. Both use the embedding endpoint ``--kb-inference-id`` (Elasticsearch's built-in
``.elser-2-elasticsearch`` by default), which :mod:`.embedding` deployed first.

What uninstall removes, and why (the receipt's records say what install did):

* the **knowledge base** never: its index is Kibana's and holds the users' own entries
  (instructions, documents), which no uninstall may delete; nor does Kibana offer a
  route that would only undo the setup;
* the **product docs** only when this tool installed them, meaning that they were not
  installed for that endpoint before its install call, and only while they still are:
  they are Elastic's documentation, rebuilt from the artifacts, never user data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bundler.errors import AirgapError, InstallError
from bundler.install.elastic.api import ApiClient, json_object
from bundler.install.elastic.connector import Version, parse_version, version_text
from bundler.install.elastic.embedding import (
    BUILTIN_SINCE,
    E5_ENDPOINT,
    ELSER_ENDPOINT,
    carried_for,
    family,
)
from bundler.install.elastic.kibana import Kibana, KibanaOptions
from bundler.install.elastic.records import (
    AnyElastic,
    ElasticRecord,
    KnowledgeBaseRecord,
    ProductDocsRecord,
)
from bundler.manifest import PRODUCTS
from bundler.names import DOC_FILE_RE, doc_suffix

if TYPE_CHECKING:
    from bundler.install.elastic.steps import ElasticAccess

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


@dataclass(frozen=True)
class KbPlan:
    """What the Kibana step will do (and, in ``notes``, what it will not, and why)."""

    kb: bool = False
    docs: tuple[str, ...] = ()  # the bundle's artifacts Kibana reads for this version
    notes: tuple[str, ...] = ()

    def detail(self, ident: str) -> str:
        did = []
        if self.kb:
            did.append(f"knowledge base on {ident}")
        if self.docs:
            did.append("product docs " + ", ".join(self.docs))
        return "; ".join([*did, *self.notes]) or "nothing to set up"


def plan(
    kb: KbOptions,
    kibana: Version | None,
    es: Version | None,
    carried: list[str],
    doc_files: list[str],
    docs_repo: bool,
) -> KbPlan:
    """What to set up in Kibana: a pure function of the versions and the bundle.

    ``carried``: the model ids the bundle carries; ``doc_files``: its knowledge-base
    artifacts; ``docs_repo``: a repository serves them to Kibana.
    """
    ident = kb.inference_id
    if not kb.enabled or kibana is None:
        return KbPlan()
    if family(ident) is not None and not carried_for(ident, carried) and not doc_files:
        return KbPlan()  # a bundle without any of it: nothing to say
    if es is None:
        return KbPlan(notes=("add --es-url to set up the knowledge base and product docs",))
    if family(ident) is not None and es < BUILTIN_SINCE:
        return KbPlan(notes=(f"Elasticsearch {version_text(es)} has no built-in {ident}",))
    if family(ident) is not None and not carried_for(ident, carried):
        return KbPlan(notes=(f"the bundle carries no model for {ident}",))
    notes = []
    set_up = kibana >= KB_SINCE and (ident != E5_ENDPOINT or kibana >= E5_SINCE)
    if not set_up:
        notes.append(
            f"knowledge base: Kibana {version_text(kibana)} is too old for "
            f"{ident} (set it up in the AI Assistant's settings)"
        )
    wanted = f"{kibana[0]}.{kibana[1]}{doc_suffix(ident)}.zip"
    docs = tuple(
        n
        for n in sorted(doc_files)
        if (d := DOC_FILE_RE.match(n)) and d["product"] and n.endswith(f"-{wanted}")
    )
    ours = [n for n in docs if (d := DOC_FILE_RE.match(n)) and d["product"] in PRODUCTS]
    if kibana < DOCS_SINCE or (doc_suffix(ident) and kibana < E5_SINCE):
        notes.append(f"product docs: Kibana {version_text(kibana)} cannot install them for {ident}")
        docs = ()
    elif not ours:
        have = sorted(
            {f"{d['ver']}" for n in doc_files if (d := DOC_FILE_RE.match(n)) and d["ver"]}
        )
        notes.append(
            f"product docs: none in the bundle for Kibana {kibana[0]}.{kibana[1]} and {ident}"
            + (f" (it carries {', '.join(have)})" if have else "")
        )
        docs = ()
    elif not docs_repo:
        notes.append("product docs: nothing serves them to Kibana (--no-serve)")
        docs = ()
    return KbPlan(kb=set_up, docs=docs, notes=tuple(notes))


def _status(api: ApiClient, path: str, what: str) -> dict[str, Any]:
    r = api.request("GET", path, headers=INTERNAL, what=what)
    return json_object(r, "Check --kibana-url.")


def _kb_state(st: dict[str, Any]) -> str:
    return str(st.get("kbState") or (READY if st.get("ready") else "unknown"))


def setup_kb(api: ApiClient, prefix: str, kb: KbOptions, ours: bool) -> tuple[str, str, str | None]:
    """Set up the knowledge base on ``kb.inference_id`` and wait until READY.

    ``ours``: this tool set it up before (so it may move it to another endpoint).
    Returns (the state before, what was done, the endpoint a site's own READY knowledge
    base uses when it was left alone).

    Raises:
        InstallError: Kibana refused, the state became ERROR, or it stayed in another
            state than READY past ``kb.timeout`` (named).
    """
    ident = kb.inference_id
    st = _status(api, f"{prefix}{KB}/status", "reading the knowledge base's state")
    before, current = _kb_state(st), st.get("currentInferenceId")
    if before == READY and current in (None, ident):
        return before, "kept", None
    if before == READY and not ours:
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
        st = _status(api, f"{prefix}{KB}/status", "waiting for the knowledge base")
        state = _kb_state(st)
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


def _docs_path(prefix: str, tail: str, ident: str, with_id: bool) -> str:
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
    status = _docs_path(prefix, "status", ident, with_id)
    before = str(_status(api, status, "reading the product docs' state").get("overall"))
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
        st = _status(api, status, "waiting for the product docs")
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


def run(
    kopts: KibanaOptions,
    p: KbPlan,
    kb: KbOptions,
    kibana_v: Version,
    previous: ElasticRecord,
    keep: Callable[[Any, Any], None],
    repo: str,
    notes: list[str],
) -> None:
    """The knowledge base, then the product docs, each recorded as soon as it is done.

    Raises:
        InstallError: as :func:`setup_kb` and :func:`install_docs`.
    """
    kibana = Kibana(kopts)
    version = version_text(kibana_v)
    try:
        api, prefix = kibana.api, kibana.prefix
        if p.kb:
            was = previous.knowledge_base
            ours = bool(was and was.url == api.base and was.action == "set up")
            before, action, theirs = setup_kb(api, prefix, kb, ours)
            if theirs:
                notes.append(
                    f"knowledge base: left on {theirs}, the endpoint this site chose (airgap "
                    f"switches only one it set up; or pass --kb-inference-id {theirs})"
                )
            keep(
                "knowledge_base",
                KnowledgeBaseRecord(
                    url=api.base,
                    space=kibana.space,
                    inference_id=theirs or kb.inference_id,
                    kibana_version=version,
                    state_before=before,
                    action=action,
                    state=READY,
                ),
            )
        if p.docs:
            was_docs = previous.product_docs
            mine = bool(
                was_docs
                and was_docs.identity() == (api.base, kb.inference_id)
                and was_docs.created_by_us
            )
            before, action = install_docs(api, prefix, kb, kibana_v, repo)
            keep(
                "product_docs",
                ProductDocsRecord(
                    url=api.base,
                    inference_id=kb.inference_id,
                    kibana_version=version,
                    created_by_us=mine or action == "installed",
                    action=action,
                    state="installed",
                    artifacts=list(p.docs),
                ),
            )
    finally:
        kibana.close()


def _kibana(access: ElasticAccess, url: str, space: str = "default") -> Kibana:
    return Kibana(
        KibanaOptions(
            url=url,
            credentials=access.kibana,
            space=space,
            ca=access.kibana_ca,
            insecure=access.kibana_insecure,
        )
    )


def check_access(records: list[AnyElastic], access: ElasticAccess) -> None:
    """Raises: InstallError: product docs to uninstall, and no Kibana credentials."""
    ours = [r for r in records if isinstance(r, ProductDocsRecord) and r.created_by_us]
    if ours and access.kibana is None:
        raise InstallError(
            "airgap installed Kibana's product docs in "
            + ", ".join(f"{r.url} ({r.inference_id})" for r in ours)
            + " and needs Kibana credentials to uninstall them",
            hint="Set AIRGAP_KIBANA_API_KEY (or --kibana-api-key-file / "
            "--kibana-credentials-file), or pass --keep-elastic to leave them.",
        )


def undo(records: list[AnyElastic], access: ElasticAccess) -> list[str]:
    """Uninstall the product docs this tool installed; the knowledge base stays (a note)."""
    out: list[str] = []
    seen: set[tuple[object, ...]] = set()
    for r in records:
        if not isinstance(r, ProductDocsRecord) or not r.created_by_us or r.identity() in seen:
            continue
        seen.add(r.identity())
        with_id = parse_version(r.kibana_version) >= E5_SINCE
        kibana = _kibana(access, r.url)
        try:
            api = kibana.api
            st = _status(api, _docs_path("", "status", r.inference_id, with_id), "product docs")
            if st.get("overall") in ("installed", "error"):
                api.request(
                    "POST",
                    f"{DOCS}/uninstall",
                    json={"inferenceId": r.inference_id} if with_id else {},
                    headers=INTERNAL,
                    what="uninstalling the product docs",
                )
                out.append(f"Kibana product docs for {r.inference_id} ({r.url})")
            else:
                out.append(f"Kibana product docs for {r.inference_id} ({r.url}) were gone")
        finally:
            kibana.close()
    for url in sorted({r.url for r in records if isinstance(r, KnowledgeBaseRecord)}):
        out.append(
            f"note: Kibana's knowledge base at {url} stays: it holds the users' entries "
            "(airgap never removes it)"
        )
    return out


def live(elastic: ElasticRecord, access: ElasticAccess) -> dict[str, Any]:
    """The knowledge base and product docs on record, checked in Kibana now (``status``)."""
    out: dict[str, Any] = {}
    checks: list[tuple[str, Any, Callable[[ApiClient], tuple[bool | None, str]]]] = []
    kbr, docs = elastic.knowledge_base, elastic.product_docs
    if kbr is not None:

        def kb_now(api: ApiClient) -> tuple[bool | None, str]:
            assert kbr is not None
            st = _status(api, f"{KB}/status", "the knowledge base")
            state, ident = _kb_state(st), st.get("currentInferenceId") or kbr.inference_id
            if state != READY:
                return False, f"knowledge base is {state}"
            if ident != kbr.inference_id:
                return None, f"knowledge base READY on {ident}, not {kbr.inference_id}"
            return True, f"knowledge base READY on {ident}"

        checks.append(("knowledge_base", kbr.url, kb_now))
    if docs is not None:

        def docs_now(api: ApiClient) -> tuple[bool | None, str]:
            assert docs is not None
            with_id = parse_version(docs.kibana_version) >= E5_SINCE
            st = _status(api, _docs_path("", "status", docs.inference_id, with_id), "docs")
            overall = st.get("overall")
            return overall == "installed", f"product docs for {docs.inference_id}: {overall}"

        checks.append(("product_docs", docs.url, docs_now))
    for name, url, fn in checks:
        if access.kibana is None:
            out[name] = {"ok": None, "detail": "not checked: no Kibana credentials"}
            continue
        try:
            kibana = _kibana(access, url)
            try:
                ok, detail = fn(kibana.api)
            finally:
                kibana.close()
        except AirgapError as e:
            ok, detail = False, e.message
        out[name] = {"ok": ok, "detail": detail}
    return out
