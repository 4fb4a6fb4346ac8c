"""The Elastic steps of an install, and their undoing at uninstall.

They run after the new release serves, on purpose: Kibana must reach (and trust) the
endpoint before its test can pass. So a failure here is an
:class:`~bundler.errors.ElasticStepError` (the release stays installed and serving), and
the same command, run again, repeats only these steps. What they create is in the
receipt as soon as it exists; a rerun with other options keeps the earlier records
(``earlier``) so that uninstall still removes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import faults
from bundler.bundle.index import parse_index
from bundler.errors import AirgapError, ElasticStepError, InstallError
from bundler.fsutil import atomic_write_bytes
from bundler.install.elastic import artifacts, embedding, kb, llm
from bundler.install.elastic.api import Credentials
from bundler.install.elastic.checks import elser_repository, kb_plan
from bundler.install.elastic.connector import trust_snippet
from bundler.install.elastic.credentials import credentials_needed
from bundler.install.elastic.elasticsearch import Elasticsearch, EsOptions
from bundler.install.elastic.endpoint import TrustHint, Wanted
from bundler.install.elastic.kibana import KibanaOptions, register, unregister
from bundler.install.elastic.records import (
    ChatEndpointRecord,
    KibanaSettingsRecord,
    KnowledgeBaseRecord,
    ProductDocsRecord,
)
from bundler.install.elastic.truststore_script import node_command, write_install_script
from bundler.install.elastic.wiring import Plan
from bundler.install.layout import Layout
from bundler.install.options import InstallOptions, InstallResult
from bundler.install.records import (
    EARLIER,
    CopiedFiles,
    ElasticKind,
    ElasticRecord,
    EndpointRecord,
    KibanaRecord,
    Receipt,
    ServeRecord,
)
from bundler.install.state import ReceiptFile
from bundler.manifest import parse_manifest

ElasticPart = (
    KibanaRecord
    | EndpointRecord
    | CopiedFiles
    | ChatEndpointRecord
    | KibanaSettingsRecord
    | KnowledgeBaseRecord
    | ProductDocsRecord
)


def run(
    result: InstallResult,
    layout: Layout,
    store: ReceiptFile,
    opts: InstallOptions,
    plan: Plan | None = None,
) -> None:
    """After the release serves: Elastic files, settings to add, the model wired as the
    preflight's ``plan`` says (connector, or inference endpoint), the embedding model
    (:mod:`.embedding`), then Kibana's knowledge base and product docs (:mod:`.kb`).

    Raises:
        ElasticStepError: a step failed; the release stays installed and serving.
    """
    key = f"{result.name}-{result.version}"
    rel = store.receipt.releases.get(key)
    if rel is None:
        return
    release = layout.release(key)
    served = rel.serve
    previous = rel.elastic or ElasticRecord()
    earlier = list(previous.earlier)
    record: dict[str, Any] = {}  # what this run recorded: kinds, settings_file, wiring
    settings: list[tuple[str, str]] = []
    notes: list[str] = []  # what the embedding and knowledge-base steps left out, and why
    trust_step: list[str] = []  # the per-node trust command, once the endpoint works
    wired = llm.Wired()
    if plan is not None and plan.wiring != "none":
        record["wiring"] = plan.wiring

    def keep(kind: ElasticKind, new: ElasticPart) -> None:
        """Record ``new``; an earlier, different object of this kind moves to ``earlier``."""
        old = getattr(previous, kind)
        if old is not None and old.identity() != new.identity():
            earlier.append(EARLIER[kind](kind=kind, **old.model_dump()))
        record[kind] = new
        save()

    def forget(kind: ElasticKind, match: Callable[[Any], bool]) -> None:
        """Drop this kind's records (current and earlier) that ``match``: deleted."""
        earlier[:] = [e for e in earlier if not (e.kind == kind and match(e))]
        current = record.get(kind, getattr(previous, kind))
        if current is not None and match(current):
            record[kind] = None
        save()

    def save() -> None:
        now = store.receipt.releases[key]
        elastic = previous.model_copy(update={**record, "earlier": list(earlier)})
        store.save(store.receipt.with_release(key, now.model_copy(update={"elastic": elastic})))

    def as_json() -> dict[str, Any]:
        out = {k: v.to_json() if isinstance(v, ElasticPart) else v for k, v in record.items()}
        if plan is not None:
            out["plan"] = plan.to_json()
        if plan is not None and plan.wiring == "inference-endpoint":
            out.update(wired.to_json())
        if trust_step:
            out["trust_step"] = trust_step[0]
        return {**out, "settings": settings, "notes": notes}

    try:
        index = parse_index(layout.index_file(release).read_bytes())
        if opts.elser_dir is not None:
            files = artifacts.copy_elser(release, index, opts.elser_dir)
            keep("elser_dir", CopiedFiles(path=str(opts.elser_dir), files=[str(f) for f in files]))
        if opts.product_docs_dir is not None:
            files = artifacts.copy_product_docs(release, index, opts.product_docs_dir)
            keep(
                "product_docs_dir",
                CopiedFiles(path=str(opts.product_docs_dir), files=[str(f) for f in files]),
            )
        elser_repo = elser_repository(opts, served) if artifacts.elser_ids(index) else None
        docs_repo = None
        if opts.product_docs_dir is not None:
            docs_repo = f"file://{opts.product_docs_dir.resolve()}"
        elif served:
            docs_repo = served.artifacts.get("product_docs")
        settings = artifacts.settings_lines(elser_repo, docs_repo)
        script = None
        if served:
            ca_pem = Path(served.ca_cert).read_text()
            # Kibana calls the model only through a connector; an endpoint is called by
            # Elasticsearch, whose trust is the per-node trust-store step instead
            if plan is None or plan.wiring != "inference-endpoint":
                settings.append(("kibana.yml", trust_snippet(served.url, ca_pem, "full")))
            script = write_install_script(layout, served)  # es-truststore.sh, each ES node
        if settings:
            settings_file = layout.elastic_settings
            settings_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            text = artifacts.settings_text(settings).encode()
            atomic_write_bytes(settings_file, text, mode=0o644)
            record["settings_file"] = str(settings_file)
        if opts.kibana is not None and (plan is None or plan.wiring == "connector"):
            if not served:
                raise InstallError(
                    "the Kibana connector needs the served endpoint",
                    hint="Drop --no-serve/--registry, or register the connector by hand.",
                )
            reg = register(
                opts.kibana,
                parse_manifest(index.manifest, source=f"{key} (signed manifest)"),
                result.name,
                served.url,
                layout.token_file.read_text().strip(),
                Path(served.ca_cert).read_text(),
                layout.secrets,
                previous.kibana.to_json() if previous.kibana else None,
                on_created=lambda r: keep("kibana", KibanaRecord.model_validate(r.record())),
            )
            keep("kibana", KibanaRecord.model_validate(reg.record()))
            faults.point("install.kibana-done")
            if reg.test_error is not None:
                raise reg.test_error
            if reg.test_reply is not None:
                reply = reg.test_reply[:200]
                record["kibana"] = record["kibana"].model_copy(update={"test_reply": reply})
        if plan is not None and plan.wiring == "inference-endpoint":
            if not served or opts.elasticsearch is None:
                raise InstallError(
                    "the inference endpoint needs the served endpoint and --es-url",
                    hint="Drop --no-serve/--registry, or wire the model by hand.",
                )
            own = bool(served.options and served.options.tls_cert)
            llm.wire(
                opts.elasticsearch,
                opts.kibana,
                opts.llm,
                plan,
                result.name,
                Wanted(served.url, served.model, layout.token_file.read_text().strip()),
                previous,
                TrustHint(str(layout.es_truststore_script), own_cert=own),
                keep,
                forget,
                wired,
            )
            if served and script is not None:  # our CA: every node, again after upgrades
                trust_step.append(node_command(script))
        if opts.elasticsearch is not None and artifacts.elser_ids(index):
            dep = embedding.deploy(
                opts.elasticsearch,
                artifacts.elser_ids(index),
                opts.kb.inference_id,
                previous.elasticsearch.to_json() if previous.elasticsearch else None,
                lambda d: keep("elasticsearch", EndpointRecord.model_validate(d)),
                notes,
            )
            if dep is not None:
                keep("elasticsearch", EndpointRecord.model_validate(dep))
        kbp = kb_plan(opts, plan, index, docs_repo is not None)
        notes += kbp.notes
        if (kbp.kb or kbp.docs) and opts.kibana is not None and plan and plan.kibana:
            kb.run(opts.kibana, kbp, opts.kb, plan.kibana, previous, keep, str(docs_repo), notes)
    except BaseException as e:
        save()
        result.elastic = as_json()
        if not isinstance(e, Exception):
            raise  # Ctrl-C: recorded, then out
        err = e if isinstance(e, AirgapError) else InstallError(f"{type(e).__name__}: {e}")
        where = f" Settings to add: {record['settings_file']}." if "settings_file" in record else ""
        raise ElasticStepError(
            f"{key} is installed and serving, but an Elastic step failed: {err.message}",
            hint=(err.hint + " " if err.hint else "")
            + where
            + " Running the same `airgap install` again repeats only the Elastic steps.",
        ) from e
    save()
    result.elastic = as_json()


@dataclass(frozen=True)
class ElasticAccess:
    """Credentials (never stored) to undo what install did in Kibana and Elasticsearch."""

    kibana: Credentials | None = None
    kibana_ca: Path | None = None
    kibana_insecure: bool = False
    es: Credentials | None = None
    es_ca: Path | None = None
    es_insecure: bool = False
    keep: bool = False  # leave the connector and the endpoint in place


def undo(receipt: Receipt, access: ElasticAccess) -> list[str]:
    """Delete what this tool created in Kibana and Elasticsearch (connectors, endpoints;
    Kibana's default-model setting put back), and the files it copied.

    Raises:
        InstallError: something must be deleted in Kibana/Elasticsearch and no
            credentials were given (nothing was removed yet), or the deletion failed.
    """
    connectors: dict[tuple[str, str, str], KibanaRecord] = {}
    endpoints: dict[tuple[str, str], EndpointRecord] = {}
    files: list[str] = []
    preconfigured: set[str] = set()
    for rel in receipt.releases.values():
        for rec in (rel.elastic or ElasticRecord()).all_records():
            if isinstance(rec, KibanaRecord) and rec.mode == "api" and rec.created_by_us:
                connectors[(str(rec.url), rec.space, rec.connector_id)] = rec
            elif isinstance(rec, EndpointRecord) and rec.created_by_us:
                endpoints[(rec.url, rec.endpoint_id)] = rec
            elif isinstance(rec, CopiedFiles):
                files += rec.files
            if isinstance(rec, KibanaRecord) and rec.mode == "preconfigured":
                preconfigured.add(rec.connector_id)
    everything = [
        rec
        for rel in receipt.releases.values()
        for rec in (rel.elastic or ElasticRecord()).all_records()
    ]
    removed = []
    if not access.keep:
        llm.check_access(everything, access)
        kb.check_access(everything, access)
        if connectors and access.kibana is None:
            raise credentials_needed(
                "created Kibana connector(s)",
                [f"{i} at {u}" for u, _, i in connectors],
                "Kibana",
                "delete them",
            )
        if endpoints and access.es is None:
            raise credentials_needed(
                "created inference endpoint(s)",
                [f"{i} at {u}" for u, i in endpoints],
                "Elasticsearch",
                "delete them",
            )
        removed += llm.undo(everything, access)
        removed += kb.undo(everything, access)
        for (url, space, _), record in connectors.items():
            opts = KibanaOptions(
                url=url,
                credentials=access.kibana,
                space=space,
                ca=access.kibana_ca,
                insecure=access.kibana_insecure,
            )
            if line := unregister(record.to_json(), opts):
                removed.append(line)
        for url, ident in endpoints:
            es = Elasticsearch(
                EsOptions(url, access.es, ca=access.es_ca, insecure=access.es_insecure)
            )
            try:
                gone = es.delete_endpoint(ident)
            finally:
                es.close()
            removed.append(f"inference endpoint {ident} ({url}){'' if gone else ' was gone'}")
    removed += artifacts.remove_dir_files(files)
    removed += [
        f"note: remove the preconfigured connector {ident} from kibana.yml (airgap never "
        "edits kibana.yml)"
        for ident in sorted(preconfigured)
    ]
    return removed


def connector_note(receipt: Receipt, key: str, served: ServeRecord) -> list[str]:
    """What the operator must do about Kibana after a rollback, from the recorded connector
    or inference endpoint."""
    endpoints = [
        r.elastic.inference for r in receipt.releases.values() if r.elastic and r.elastic.inference
    ]
    if any(e.model_id != served.model for e in endpoints):
        return [
            f"the inference endpoint still names the newer release's model: run `airgap "
            f"install` of {key}'s bundle with --allow-downgrade and the same --es-url/--kibana-* "
            f"options to point it at {served.model} (it is deleted and created again)"
        ]
    records = [
        r.elastic.kibana for r in receipt.releases.values() if r.elastic and r.elastic.kibana
    ]
    if not records:
        return []
    if any(r.mode == "api" for r in records):
        return [
            f"the Kibana connector still names the newer release's model: run `airgap install` "
            f"of {key}'s bundle with --allow-downgrade and the same --kibana-* options to "
            f"point it at {served.model}"
        ]
    return [
        f"the preconfigured connector in kibana.yml still names the newer release's model: "
        f"set its defaultModel to {served.model} and restart Kibana"
    ]
