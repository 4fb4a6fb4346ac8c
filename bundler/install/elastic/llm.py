"""The inference-endpoint wiring, end to end: create, prove, make default, migrate; and
its undoing and live check.

In order (each step recorded in the receipt as soon as it changed something):

1. the ``chat_completion`` endpoint (:mod:`.endpoint`; Elasticsearch calls the model
   while creating it, so a PKIX failure is named with the trust-store step);
2. hop 1 of the proof, Elasticsearch → model (:mod:`.proof`);
3. with Kibana 9.4+: the space's default model (:mod:`.kbsettings`), any Feature
   setting that overrides it (reported), hops 2 and 3 of the proof;
4. migration: this tool's ``.gen-ai`` connector in that Kibana space is deleted
   (unless ``--keep-connector``): the endpoint replaced it and was proven first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bundler.errors import AirgapError
from bundler.install.elastic import kbsettings, proof
from bundler.install.elastic.credentials import credentials_needed
from bundler.install.elastic.elasticsearch import Elasticsearch, EsOptions
from bundler.install.elastic.endpoint import ChatEndpoints, TrustHint, Wanted, fingerprint
from bundler.install.elastic.kibana import Kibana, KibanaOptions, unregister
from bundler.install.elastic.records import (
    AnyElastic,
    ChatEndpointRecord,
    ElasticKind,
    ElasticRecord,
    KibanaRecord,
    KibanaSettingsRecord,
)
from bundler.install.elastic.wiring import LlmOptions, Plan, endpoint_id

if TYPE_CHECKING:
    from bundler.install.elastic.steps import ElasticAccess

Keep = Callable[[ElasticKind, Any], None]
Forget = Callable[[ElasticKind, Callable[[Any], bool]], None]


@dataclass
class Wired:
    """What :func:`wire` did, for the install's report."""

    hops: list[proof.Hop] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    migrated: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "proof": [h.to_json() for h in self.hops],
            "warnings": self.warnings,
            "migrated": self.migrated,
        }


def wire(
    es_opts: EsOptions,
    kibana_opts: KibanaOptions | None,
    llm: LlmOptions,
    plan: Plan,
    bundle_name: str,
    want: Wanted,
    previous: ElasticRecord,
    trust: TrustHint,
    keep: Keep,
    forget: Forget,
    out: Wired,
) -> None:
    """Steps 1-4 above; ``out`` holds the hops proven so far, also when a step fails.

    Raises:
        InstallError: a step failed; its message names the hop or the step.
    """
    ident = endpoint_id(llm, bundle_name)
    es = Elasticsearch(es_opts)
    try:
        last = previous.inference
        same = last is not None and last.url == es.api.base and last.endpoint_id == ident
        ours = bool(same and last and last.created_by_us)
        held = last.key_fingerprint if same and last else None
        version = es.version()
        endpoints = ChatEndpoints(es.api, trust)
        action = endpoints.ensure(ident, want, ours=ours, held=held)
        record = ChatEndpointRecord(
            url=es.api.base,
            version=version,
            endpoint_id=ident,
            service_url=want.url,
            model_id=want.model,
            created_by_us=ours or action in ("created", "replaced"),
            action=action,
            key_fingerprint=fingerprint(want.token),
        )
        keep("inference", record)
        out.hops.append(proof.es_to_model(es.api, ident, want, trust))
    finally:
        es.close()
    if plan.warning:
        out.warnings.append(plan.warning)
    if kibana_opts is None or not plan.kibana_lists_endpoints:
        return
    kibana = Kibana(kibana_opts)
    try:
        api, prefix = kibana.api, kibana.prefix
        was = previous.kibana_settings
        before = was.previous if was and (was.url, was.space) == (api.base, kibana.space) else None
        change = kbsettings.set_default(api, prefix, ident, llm.default_only, before)
        keep(
            "kibana_settings",
            KibanaSettingsRecord(
                url=api.base,
                space=kibana.space,
                endpoint_id=ident,
                kibana_version=".".join(map(str, plan.kibana or ())),
                previous=change.previous,
            ),
        )
        out.warnings += [
            f"Kibana Feature setting overrides the default model: {line}"
            for line in kbsettings.feature_overrides(api, prefix, ident)
        ]
        out.hops += proof.kibana_to_es(api, prefix, ident)
        base, space = api.base, kibana.space
    finally:
        kibana.close()
    if llm.keep_connector:
        return

    def migrated(r: Any) -> bool:
        return (
            isinstance(r, KibanaRecord)
            and r.mode == "api"
            and r.created_by_us
            and (r.url, r.space) == (base, space)
        )

    for rec in [r for r in previous.all_records() if migrated(r)]:
        assert isinstance(rec, KibanaRecord)
        line = unregister(rec.to_json(), kibana_opts)
        out.migrated.append(f"{line}: replaced by inference endpoint {ident}")
    forget("kibana", migrated)


def _kibana(access: ElasticAccess, url: str, space: str) -> Kibana:
    return Kibana(
        KibanaOptions(
            url=url,
            credentials=access.kibana,
            space=space,
            ca=access.kibana_ca,
            insecure=access.kibana_insecure,
        )
    )


def _es(access: ElasticAccess, url: str) -> Elasticsearch:
    return Elasticsearch(EsOptions(url, access.es, ca=access.es_ca, insecure=access.es_insecure))


def check_access(records: list[AnyElastic], access: ElasticAccess) -> None:
    """Refuse, before anything is removed, what cannot be undone without credentials.

    Raises:
        InstallError: Kibana settings or an endpoint to undo, and no credentials.
    """
    settings = [r for r in records if isinstance(r, KibanaSettingsRecord)]
    ours = [r for r in records if isinstance(r, ChatEndpointRecord) and r.created_by_us]
    if settings and access.kibana is None:
        raise credentials_needed(
            "changed Kibana's default AI model in",
            [f"{r.url} space {r.space}" for r in settings],
            "Kibana",
            "put the earlier value back",
            leave="it",
        )
    if ours and access.es is None:
        raise credentials_needed(
            "created inference endpoint(s)",
            [f"{r.endpoint_id} at {r.url}" for r in ours],
            "Elasticsearch",
            "delete them",
        )


def undo(records: list[AnyElastic], access: ElasticAccess) -> list[str]:
    """Kibana's settings first (so it never names a deleted model), then the endpoints."""
    removed = []
    done: set[tuple[str, str]] = set()
    for r in records:
        if isinstance(r, KibanaSettingsRecord) and (r.url, r.space) not in done:
            done.add((r.url, r.space))
            kibana = _kibana(access, r.url, r.space)
            try:
                said = kbsettings.restore(kibana.api, kibana.prefix, r.endpoint_id, r.previous)
            finally:
                kibana.close()
            removed.append(f"Kibana default AI model ({r.url} space {r.space}): {said}")
    gone: set[tuple[str, str]] = set()
    for r in records:
        if isinstance(r, ChatEndpointRecord) and r.created_by_us and r.identity() not in gone:
            gone.add((r.url, r.endpoint_id))
            es = _es(access, r.url)
            try:
                existed = ChatEndpoints(es.api, TrustHint("")).delete(r.endpoint_id)
            finally:
                es.close()
            note = "" if existed else " was already gone"
            removed.append(f"inference endpoint {r.endpoint_id} ({r.url}){note}")
    return removed


def live(elastic: ElasticRecord, access: ElasticAccess) -> dict[str, Any]:
    """The recorded wiring, checked against Kibana and Elasticsearch now (``status``).

    Each entry: ``ok`` True, False (missing or changed), or None (not checked, or a
    choice the site may have made on purpose).
    """
    out: dict[str, Any] = {}

    def check(
        name: str, needs: object, what: str, fn: Callable[[], tuple[bool | None, str]]
    ) -> None:
        if needs is None:
            out[name] = {"ok": None, "detail": f"not checked: no {what} credentials"}
            return
        try:
            ok, detail = fn()
        except AirgapError as e:
            ok, detail = False, e.message
        out[name] = {"ok": ok, "detail": detail}

    ep = elastic.inference
    if ep is not None:

        def endpoint() -> tuple[bool | None, str]:
            assert ep is not None
            es = _es(access, ep.url)
            try:
                have = ChatEndpoints(es.api, TrustHint("")).get(ep.endpoint_id)
            finally:
                es.close()
            if have is None:
                return False, f"inference endpoint {ep.endpoint_id} is gone from {ep.url}"
            s = have.get("service_settings") or {}
            if (s.get("url"), s.get("model_id")) != (ep.service_url, ep.model_id):
                return False, f"{ep.endpoint_id} now calls {s.get('url')} model {s.get('model_id')}"
            return True, f"{ep.endpoint_id} calls {ep.service_url} model {ep.model_id}"

        check("inference", access.es, "Elasticsearch", endpoint)
    ks = elastic.kibana_settings
    if ks is not None:

        def default() -> tuple[bool | None, str]:
            assert ks is not None
            kibana = _kibana(access, ks.url, ks.space)
            try:
                value = kbsettings.read(kibana.api, kibana.prefix).get(kbsettings.DEFAULT)
            finally:
                kibana.close()
            have = value[0] if value else None
            if have == ks.endpoint_id:
                return True, f"space {ks.space}: default AI model is {have}"
            return None, f"space {ks.space}: default AI model is {have!r}, not {ks.endpoint_id}"

        check("kibana_settings", access.kibana, "Kibana", default)
    kc = elastic.kibana
    if kc is not None and kc.mode == "api" and kc.url:

        def connector() -> tuple[bool | None, str]:
            assert kc is not None and kc.url
            kibana = _kibana(access, kc.url, kc.space)
            try:
                found = kibana.get(kc.connector_id) is not None
            finally:
                kibana.close()
            return found, f"connector {kc.connector_id} {'present' if found else 'is gone'}"

        check("kibana", access.kibana, "Kibana", connector)
    return out
