"""Kibana and Elasticsearch before an install, checked before a byte of payload is read
(the preflight's Elastic rows): reachable, credentials accepted, both versions read, the
wiring chosen from them (:mod:`.wiring`) and said why, then what that wiring needs (the
license for an inference endpoint, the model repository for ELSER)."""

from __future__ import annotations

from bundler.bundle.index import Index
from bundler.errors import AirgapError, InstallError
from bundler.install.elastic import kb, kbsettings
from bundler.install.elastic.api import json_object
from bundler.install.elastic.artifacts import DOCS_DIR, elser_ids
from bundler.install.elastic.connector import Version, parse_version, version_text
from bundler.install.elastic.elasticsearch import Elasticsearch
from bundler.install.elastic.kibana import Kibana
from bundler.install.elastic.wiring import Plan, check_license, choose
from bundler.install.options import Check, InstallOptions
from bundler.install.records import ServeRecord


def elastic_preflight(
    opts: InstallOptions, index: Index, errors: dict[str, AirgapError], will_serve: bool
) -> tuple[list[Check], Plan | None]:
    """The Elastic rows of the preflight table and the wiring chosen; a failed row's error
    goes into ``errors`` under the row's name, so the caller raises the error itself."""
    rows: dict[str, Check] = {}
    notes: list[Check] = []
    kibana_v: Version | None = None
    ko = opts.kibana
    if ko is not None and ko.mode == "api":
        try:
            kibana = Kibana(ko)
            try:
                kibana_v = kibana.version()
                kibana.api.request(
                    "GET", kibana._path("connectors"), what=f"listing space {kibana.space}"
                )
            finally:
                kibana.close()
            detail = f"{version_text(kibana_v)} at {kibana.api.base}, space {kibana.space}"
            rows["kibana"] = Check("kibana", True, detail)
        except AirgapError as e:
            errors["kibana"] = e
            rows["kibana"] = Check("kibana", False, e.message)
        serve = opts.serve
        if serve is not None and not (serve.server_names or serve.ips):
            who = "Kibana and Elasticsearch run" if opts.elasticsearch else "Kibana runs"
            notes.append(
                Check(
                    "kibana calls",
                    None,
                    f"https://localhost:{serve.port}: right only when {who} on this "
                    "host; else give --server-name",
                )
            )
    elif ko is not None and ko.version:
        kibana_v = parse_version(ko.version)
    es_v: Version | None = None
    es: Elasticsearch | None = None
    if opts.elasticsearch is not None:
        try:
            es = Elasticsearch(opts.elasticsearch)
            es_v = parse_version(es.version())
        except AirgapError as e:
            errors["elasticsearch"] = e
            rows["elasticsearch"] = Check("elasticsearch", False, e.message)
    plan = None
    if (ko is not None or es is not None) and not errors:
        try:
            if ko is not None and ko.mode == "preconfigured":
                why = "--kibana-mode preconfigured writes the connector into kibana.yml"
                plan = Plan("connector", why, kibana_v, es_v)
            else:
                plan = choose(opts.llm, kibana_v, es_v, serving=will_serve)
            rows["wiring"] = Check("wiring", None if plan.warning else True, plan.detail())
        except AirgapError as e:
            errors["wiring"] = e
            rows["wiring"] = Check("wiring", False, e.message)
    endpoint = plan is not None and plan.wiring == "inference-endpoint"
    if endpoint and ko is not None and ko.mode == "api" and plan and plan.kibana_lists_endpoints:
        try:
            kibana = Kibana(ko)
            try:
                kbsettings.read(kibana.api, kibana.prefix)  # the settings it will change
            finally:
                kibana.close()
        except AirgapError as e:
            errors["kibana"] = e
            rows["kibana"] = Check("kibana", False, e.message)
    if es is not None and es_v is not None:
        try:
            parts = [version_text(es_v)]
            if endpoint:
                r = es.api.request("GET", "/_license", what="reading the license")
                parts.append(check_license(json_object(r, "Check --es-url."), es.api.base))
            if elser_ids(index):
                expected = elser_repository(opts, will_serve=will_serve)
                if expected is None:
                    raise InstallError(
                        "--es-url: nothing will serve ELSER to Elasticsearch (--no-serve or "
                        "--registry)",
                        hint="Give --elser-dir with Elasticsearch's config/models directory, "
                        "or let airgap serve the release.",
                    )
                parts.append(f"model repository {es.check_repository(expected)}")
            elif not endpoint:
                raise InstallError(
                    "--es-url: this bundle carries no ELSER model to deploy, and the model "
                    f"is not wired through Elasticsearch ({plan.detail() if plan else ''})",
                    hint="Drop --es-url, or build a bundle with elastic.elser in its manifest.",
                )
            rows["elasticsearch"] = Check("elasticsearch", True, ", ".join(parts))
        except AirgapError as e:
            errors["elasticsearch"] = e
            rows["elasticsearch"] = Check("elasticsearch", False, e.message)
    if es is not None:
        es.close()
    docs_repo = opts.product_docs_dir is not None or will_serve
    kbp = kb_plan(opts, plan, index, docs_repo)
    if opts.kb.enabled and plan is not None and plan.kibana and ko and ko.mode == "api":
        ok = None if kbp.notes else True
        rows["knowledge base"] = Check("knowledge base", ok, kbp.detail(opts.kb.inference_id))
    order = ("kibana", "elasticsearch", "wiring", "knowledge base")
    return [rows[k] for k in order if k in rows] + notes, plan


def kb_plan(opts: InstallOptions, plan: Plan | None, index: Index, docs_repo: bool) -> kb.KbPlan:
    """What the Kibana knowledge-base step will do with this bundle and these versions."""
    if plan is None or opts.kibana is None or opts.kibana.mode != "api":
        return kb.KbPlan()
    docs = [f.path.rsplit("/", 1)[1] for f in index.files if f.path.startswith(DOCS_DIR + "/")]
    es = plan.es if opts.elasticsearch is not None else None
    return kb.plan(opts.kb, plan.kibana, es, elser_ids(index), docs, docs_repo)


def elser_repository(
    opts: InstallOptions, served: ServeRecord | None = None, *, will_serve: bool = False
) -> str | None:
    """Where Elasticsearch reads ELSER from: ``--elser-dir`` or the Nginx artifact server
    (the one that serves, or, before serving, the one this run will start)."""
    if opts.elser_dir is not None:
        return f"file://{opts.elser_dir.resolve()}"
    if opts.kubernetes is not None:
        return None  # the pod serves the model only, not the Elastic artifacts
    if served is not None:
        return served.artifacts.get("elser") or None
    if opts.serve is None or not will_serve:
        return None
    return f"{opts.serve.artifacts_base}/elser"
