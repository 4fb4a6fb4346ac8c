"""Kibana's knowledge base and product documentation: what to set up, then setting it
up (the routes themselves are :mod:`.kbroutes`'s), and its undoing and live check.

Both use the embedding endpoint ``--kb-inference-id`` (Elasticsearch's built-in
``.elser-2-elasticsearch`` by default), which :mod:`.embedding` deployed first; what runs
is :func:`plan`'s choice from Kibana's and Elasticsearch's versions and what the bundle
carries (the model, and product docs for Kibana's own major.minor).

What uninstall removes, and why (the receipt's records say what install did):

* the **knowledge base** never: its index is Kibana's and holds the users' own entries
  (instructions, documents), which no uninstall may delete; nor does Kibana offer a
  route that would only undo the setup;
* the **product docs** only when this tool installed them, meaning that they were not
  installed for that endpoint before its install call, and only while they still are:
  they are Elastic's documentation, rebuilt from the artifacts, never user data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bundler.errors import AirgapError
from bundler.install.elastic.api import ApiClient
from bundler.install.elastic.connector import Version, parse_version, version_text
from bundler.install.elastic.credentials import credentials_needed
from bundler.install.elastic.embedding import BUILTIN_SINCE, E5_ENDPOINT, carried_for, family
from bundler.install.elastic.kbroutes import (
    DOCS,
    DOCS_SINCE,
    E5_SINCE,
    INTERNAL,
    KB,
    KB_SINCE,
    READY,
    KbOptions,
    docs_path,
    install_docs,
    kb_state,
    setup_kb,
    status,
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
            mine = was.inference_id if was and was.url == api.base and was.set_up_by_us else None
            before, action, theirs = setup_kb(api, prefix, kb, mine)
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
                    set_up_by_us=action == "set up" or (action == "kept" and mine is not None),
                ),
            )
        if p.docs:
            was_docs = previous.product_docs
            docs_ours = bool(
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
                    created_by_us=docs_ours or action == "installed",
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
        raise credentials_needed(
            "installed Kibana's product docs in",
            [f"{r.url} ({r.inference_id})" for r in ours],
            "Kibana",
            "uninstall them",
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
            st = status(api, docs_path("", "status", r.inference_id, with_id), "product docs")
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
            st = status(api, f"{KB}/status", "the knowledge base")
            state, ident = kb_state(st), st.get("currentInferenceId") or kbr.inference_id
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
            st = status(api, docs_path("", "status", docs.inference_id, with_id), "docs")
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
