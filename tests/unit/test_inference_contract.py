"""The inference-endpoint wiring (Kibana 9.4+) against the Elasticsearch and Kibana
stand-ins and an HTTPS model stand-in (TLS from the installer's own CA code).

The stand-ins' rules come first, each with its negative control (a stand-in that took
anything would fail them); then the client: the endpoint's idempotence, the causes it
names, the proof hop by hop, Kibana's default model, and the choice of wiring."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bundler.errors import InstallError, UsageError
from bundler.install.elastic import kbsettings, proof
from bundler.install.elastic.api import ApiClient, Credentials
from bundler.install.elastic.endpoint import ChatEndpoints, TrustHint, Wanted, explain, fingerprint
from bundler.install.elastic.wiring import LlmOptions, check_license, check_request, choose
from bundler.install.tlsgen import ensure_tls
from devkit.standins.elasticsearch import ElasticsearchStandIn
from devkit.standins.jvmtrust import write_truststore
from devkit.standins.kibana import KibanaStandIn
from devkit.standins.model import ModelStandIn

KEY = "aW5mZXJlbmNlOmtleQ=="  # accepted by both stand-ins, as one API key is by Kibana and ES
H = {"Authorization": f"ApiKey {KEY}"}
INTERNAL = {**H, "x-elastic-internal-origin": "Kibana", "kbn-xsrf": "t"}
TOKEN = "t" * 43
TRUST = TrustHint("/opt/airgap/elastic/es-truststore.sh")


@dataclass
class Stack:
    model: ModelStandIn
    es: ElasticsearchStandIn
    kibana: KibanaStandIn
    ca: Path
    store: Path

    def want(self, token: str = TOKEN) -> Wanted:
        return Wanted(self.model.chat_url, "tiny", token)


def client(url: str, product: str = "Elasticsearch") -> ApiClient:
    headers = {"kbn-xsrf": "airgap"} if product == "Kibana" else None
    return ApiClient(product, url, Credentials("ApiKey", KEY, "test"), attempts=2, headers=headers)


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    es_version, kibana_version = getattr(request, "param", ("9.5.0", "9.5.0"))
    tls = ensure_tls(tmp_path / "tls", (), ())  # the installer's CA and server certificate
    store = write_truststore(tls.ca_cert.read_bytes(), tmp_path / "inference-truststore.p12", "pw")
    model = ModelStandIn(tls.cert, tls.key, TOKEN)
    es = ElasticsearchStandIn(
        es_version, api_keys={KEY}, license="trial", truststore=store, truststore_password="pw"
    )
    with model.running(), es.running():
        kibana = KibanaStandIn(kibana_version, api_keys={KEY}, elasticsearch=es.url)
        with kibana.running():
            yield Stack(model, es, kibana, tls.ca_cert, store)


def put(es: ElasticsearchStandIn, ident: str, body: dict) -> requests.Response:
    return requests.put(
        f"{es.url}/_inference/chat_completion/{ident}", json=body, headers=H, timeout=10
    )


def body(url: str, **settings: object) -> dict:
    return {
        "service": "openai",
        "service_settings": {"api_key": TOKEN, "model_id": "tiny", "url": url, **settings},
    }


# -- the Elasticsearch stand-in's rules ------------------------------------------------


def test_es_standin_refuses_what_elasticsearch_refuses(stack: Stack) -> None:
    es, url = stack.es, stack.model.chat_url
    assert put(es, "ok-1", body(url)).status_code == 200
    again = put(es, "ok-1", body(url))  # never PUT blindly
    assert again.status_code == 400
    assert again.json()["error"]["type"] == "resource_already_exists_exception"
    assert "Inference endpoint [ok-1] already exists" in again.text
    r = put(es, "Bad_Id", body(url))
    assert r.status_code == 400 and "Invalid inference_id" in r.text
    r = put(es, "x2", body(url, temperature=0.2))
    assert r.status_code == 400
    assert "Configuration contains settings [{temperature=0.2}] unknown to the [openai]" in r.text
    r = put(es, "x3", {"service": "openai", "service_settings": {"api_key": TOKEN, "url": url}})
    assert r.status_code == 400 and "required setting [model_id]" in r.text
    r = requests.post(f"{es.url}/_inference/chat_completion/ok-1", json={}, headers=H, timeout=5)
    assert r.status_code == 400 and "_stream URL" in r.text  # chat_completion streams only
    # _update: the key may change (validated again), url and model_id may not (9.5)
    upd = f"{es.url}/_inference/chat_completion/ok-1/_update"
    r = requests.put(upd, json={"service_settings": {"url": "https://x/v1"}}, headers=H, timeout=5)
    assert r.status_code == 400 and "unknown to the [openai] service" in r.text
    r = requests.put(upd, json={"service_settings": {"api_key": "wrong"}}, headers=H, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["caused_by"]["reason"].startswith(
        "Received an authentication error status code for request from inference entity id [ok-1]"
    )
    assert es.chat.endpoints["ok-1"]["service_settings"]["api_key"] == TOKEN  # unchanged
    # the license: openai needs Enterprise or trial
    es.license = "basic"
    r = put(es, "x4", body(url))
    assert r.status_code == 403 and "non-compliant for [inference]" in r.text
    assert "x4" not in es.chat.endpoints


def test_es_standin_update_ignored_url_before_95_and_task_type_gate(tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path / "tls", (), ())
    store = write_truststore(tls.ca_cert.read_bytes(), tmp_path / "t.p12", "pw")
    model = ModelStandIn(tls.cert, tls.key, TOKEN)
    old = ElasticsearchStandIn(
        "8.17.2", api_keys={KEY}, license="trial", truststore=store, truststore_password="pw"
    )
    es92 = ElasticsearchStandIn(
        "9.2.0", api_keys={KEY}, license="trial", truststore=store, truststore_password="pw"
    )
    with model.running(), old.running(), es92.running():
        r = put(old, "x", body(model.chat_url))
        assert r.status_code == 400 and "Unknown task_type [chat_completion]" in r.text
        assert put(es92, "x", body(model.chat_url)).status_code == 200
        upd = f"{es92.url}/_inference/chat_completion/x/_update"
        r = requests.put(
            upd, json={"service_settings": {"url": "https://elsewhere/v1"}}, headers=H, timeout=5
        )
        assert r.status_code == 200  # silently ignored before 9.5 ...
        assert es92.chat.endpoints["x"]["service_settings"]["url"] == model.chat_url  # ... kept


def test_es_standin_verifies_tls_against_its_trust_store_read_at_start(
    stack: Stack, tmp_path: Path
) -> None:
    es, url = stack.es, stack.model.chat_url
    es.use_truststore(None)  # the bundled public CAs only
    r = put(es, "t1", body(url))
    assert r.status_code == 400
    assert "validation call to service threw an exception" in r.json()["error"]["reason"]
    assert r.json()["error"]["caused_by"] == {
        "type": "s_s_l_handshake_exception",
        "reason": "PKIX path building failed: sun.security.provider.certpath."
        "SunCertPathBuilderException: unable to find valid certification path to requested target",
    }
    # a node reads jvm.options.d at start: the store takes effect after a restart only
    conf = tmp_path / "es-conf"
    (conf / "jvm.options.d").mkdir(parents=True)
    es.path_conf = conf
    es.restart()
    assert put(es, "t1", body(url)).status_code == 400
    (conf / "jvm.options.d" / "airgap-inference-truststore.options").write_text(
        f"-Djavax.net.ssl.trustStore={stack.store}\n-Djavax.net.ssl.trustStorePassword=pw\n"
        "-Djavax.net.ssl.trustStoreType=PKCS12\n"
    )
    assert put(es, "t1", body(url)).status_code == 400  # not restarted yet
    es.restart()
    assert put(es, "t1", body(url)).status_code == 200


def test_es_standin_checks_the_host_name(stack: Stack, tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path / "tls", (), ())  # SANs: localhost, 127.0.0.1
    other = ModelStandIn(tls.cert, tls.key, TOKEN, host="127.0.0.2")
    stack.es.use_truststore(
        write_truststore(tls.ca_cert.read_bytes(), tmp_path / "s.p12", "pw"), "pw"
    )
    with other.running():
        r = put(stack.es, "h1", body(other.chat_url))
    cause = r.json()["error"]["caused_by"]
    assert r.status_code == 400 and cause["type"] == "s_s_l_peer_unverified_exception"
    assert (
        "Certificate for <127.0.0.2> doesn't match any of the subject alternative names"
        in cause["reason"]
    )


def test_es_standin_streams_sse(stack: Stack) -> None:
    assert put(stack.es, "s1", body(stack.model.chat_url)).status_code == 200
    r = requests.post(
        f"{stack.es.url}/_inference/chat_completion/s1/_stream",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=H,
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
    assert r.text.startswith("event: message\ndata: {") and r.text.endswith("data: [DONE]\n\n")
    upstream = stack.model.requests[-1]
    assert upstream["stream"] is True and upstream["stream_options"] == {"include_usage": True}
    r = requests.post(
        f"{stack.es.url}/_inference/chat_completion/s1/_stream",
        json={"prompt": "x"},
        headers=H,
        timeout=5,
    )
    assert r.status_code == 400 and "unknown field [prompt]" in r.text


# -- the Kibana stand-in's rules -------------------------------------------------------


def test_kibana_standin_refuses_what_kibana_refuses(stack: Stack) -> None:
    k = stack.kibana
    assert put(stack.es, "k1", body(stack.model.chat_url)).status_code == 200
    r = requests.get(f"{k.url}/internal/inference/connectors", headers=H, timeout=5)
    assert r.status_code == 400
    assert "exists but is not available with the current configuration" in r.json()["message"]
    r = requests.get(f"{k.url}/internal/inference/connectors", headers=INTERNAL, timeout=10)
    listed = {c["connectorId"]: c for c in r.json()["connectors"]}
    assert listed["k1"]["isInferenceEndpoint"] is True and listed["k1"]["type"] == ".inference"
    r = requests.post(
        f"{k.url}/internal/inference/chat_complete",
        json={"connectorId": "k1", "messages": [{"role": "user", "content": "hi"}], "extra": 1},
        headers=INTERNAL,
        timeout=10,
    )
    assert r.status_code == 400 and "[request body.extra]" in r.text
    r = requests.post(
        f"{k.url}/internal/inference/chat_complete",
        json={"connectorId": "nope", "messages": [{"role": "user", "content": "hi"}]},
        headers=INTERNAL,
        timeout=10,
    )
    assert (
        r.status_code == 400 and "No connector or inference endpoint found for ID 'nope'" in r.text
    )
    settings = f"{k.url}/api/kibana/settings"
    r = requests.post(
        settings, json={"changes": {kbsettings.DEFAULT_ONLY: "yes"}}, headers=INTERNAL, timeout=5
    )
    assert r.status_code == 400 and "expected value of type [boolean]" in r.text
    k.overrides[kbsettings.DEFAULT] = "pinned"
    r = requests.post(
        settings, json={"changes": {kbsettings.DEFAULT: "k1"}}, headers=INTERNAL, timeout=5
    )
    assert r.status_code == 400
    assert (
        r.json()["message"]
        == 'Unable to update "genAiSettings:defaultAIConnector" because it is overridden'
    )
    got = requests.get(settings, headers=H, timeout=5).json()["settings"][kbsettings.DEFAULT]
    assert got == {"userValue": "pinned", "isOverridden": True}


@pytest.mark.parametrize("stack", [("9.5.0", "9.3.2")], indirect=True)
def test_kibana_before_94_lists_no_endpoints(stack: Stack) -> None:
    assert put(stack.es, "k1", body(stack.model.chat_url)).status_code == 200
    r = requests.get(
        f"{stack.kibana.url}/internal/inference/connectors", headers=INTERNAL, timeout=5
    )
    assert r.status_code == 200 and r.json()["connectors"] == []
    with pytest.raises(InstallError) as e:
        proof.kibana_to_es(client(stack.kibana.url, "Kibana"), "", "k1")
    assert e.value.message.startswith("hop Kibana → Elasticsearch failed")
    r = requests.get(
        f"{stack.kibana.url}/internal/search_inference_endpoints/settings",
        headers={**INTERNAL, "elastic-api-version": "1"},
        timeout=5,
    )
    assert r.status_code == 404  # Feature settings are 9.4+


# -- the endpoint: idempotent, replaced only when ours ----------------------------------


def test_three_ensures_leave_one_endpoint_and_a_new_token_uses_update(stack: Stack) -> None:
    eps = ChatEndpoints(client(stack.es.url), TRUST)
    assert eps.ensure("airgap-demo", stack.want(), ours=False, held=None) == "created"
    held = fingerprint(TOKEN)
    for _ in range(2):
        assert eps.ensure("airgap-demo", stack.want(), ours=True, held=held) == "kept"
    assert list(stack.es.chat.endpoints) == ["airgap-demo"]
    calls = [(m, p) for m, p, _ in stack.es.log if "airgap-demo" in p and m != "GET"]
    assert calls == [("PUT", "/_inference/chat_completion/airgap-demo?timeout=120s")]
    # the token was rotated: only the key changes, through _update (validated by ES again)
    stack.model.token = "n" * 43
    assert eps.ensure("airgap-demo", stack.want("n" * 43), ours=True, held=held) == "key updated"
    assert stack.es.log[-1][:2] == ("PUT", "/_inference/chat_completion/airgap-demo/_update")
    assert stack.es.chat.endpoints["airgap-demo"]["service_settings"]["api_key"] == "n" * 43
    assert TOKEN not in fingerprint(TOKEN) and fingerprint(TOKEN) != fingerprint("n" * 43)


def test_changed_url_means_delete_and_put_only_when_ours(stack: Stack) -> None:
    eps = ChatEndpoints(client(stack.es.url), TRUST)
    eps.ensure("airgap-demo", stack.want(), ours=False, held=None)
    stack.es.chat.endpoints["airgap-demo"]["service_settings"]["url"] = (
        "https://old-host:1/v1/chat/completions"
    )
    before = len(stack.es.log)
    with pytest.raises(InstallError) as e:  # not on record as ours: refused, nothing deleted
        eps.ensure("airgap-demo", stack.want(), ours=False, held=None)
    assert "airgap did not create it" in e.value.message and "--llm-endpoint-id" in e.value.hint
    assert all(m == "GET" for m, _, _ in stack.es.log[before:])
    assert eps.ensure("airgap-demo", stack.want(), ours=True, held=None) == "replaced"
    assert [m for m, p, _ in stack.es.log[before:] if m != "GET"] == ["DELETE", "PUT"]
    assert stack.es.chat.endpoints["airgap-demo"]["service_settings"]["url"] == stack.model.chat_url


def test_refusals_are_named_with_their_fix(stack: Stack, tmp_path: Path) -> None:
    eps = ChatEndpoints(client(stack.es.url), TRUST)
    stack.es.use_truststore(None)
    with pytest.raises(InstallError) as e:
        eps.ensure("airgap-demo", stack.want(), ours=False, held=None)
    assert (
        "does not trust the CA" in e.value.message
        and "PKIX path building failed" in e.value.message
    )
    assert "airgap elastic-truststore" in e.value.hint
    assert "/opt/airgap/elastic/es-truststore.sh" in e.value.hint and "restart" in e.value.hint
    stack.es.use_truststore(stack.store, "pw")
    with pytest.raises(InstallError) as e:  # Nginx refuses the token
        eps.ensure("airgap-demo", stack.want("wrong" * 9), ours=False, held=None)
    assert "refused the bearer token" in e.value.message and "--show-token" in e.value.hint
    stack.es.license = "basic"
    with pytest.raises(InstallError) as e:
        eps.ensure("airgap-demo", stack.want(), ours=False, held=None)
    assert "license" in e.value.message and "trial" in e.value.hint
    # a setting this Elasticsearch does not know (as a newer airgap might send)
    stack.es.license = "trial"
    r = put(stack.es, "airgap-demo", body(stack.model.chat_url, reasoning_effort="low"))
    err = explain(
        r, "Elasticsearch could not set up inference endpoint airgap-demo", stack.want(), TRUST
    )
    assert "does not know a setting" in err.message and "GET /" in err.hint
    assert stack.es.chat.endpoints == {}


# -- the proof -------------------------------------------------------------------------


def test_proof_hops_in_order_each_timed(stack: Stack) -> None:
    es, kibana = client(stack.es.url), client(stack.kibana.url, "Kibana")
    ChatEndpoints(es, TRUST).ensure("airgap-demo", stack.want(), ours=False, held=None)
    first = proof.es_to_model(es, "airgap-demo", stack.want(), TRUST)
    rest = proof.kibana_to_es(kibana, "", "airgap-demo")
    assert [h.hop for h in [first, *rest]] == [
        "Elasticsearch → model",
        "Kibana → Elasticsearch",
        "Kibana → Elasticsearch → model",
    ]
    assert first.detail.startswith("6 content deltas") and all(
        h.seconds > 0 for h in [first, *rest]
    )
    assert "Hello from the air-gapped model." in rest[1].detail


def test_a_stream_without_content_fails_the_first_hop(stack: Stack) -> None:
    es = client(stack.es.url)
    ChatEndpoints(es, TRUST).ensure("airgap-demo", stack.want(), ours=False, held=None)
    stack.model.words = []  # 200, a role chunk and [DONE]: no content delta
    with pytest.raises(InstallError) as e:
        proof.es_to_model(es, "airgap-demo", stack.want(), TRUST)
    assert e.value.message.startswith("hop Elasticsearch → model failed")
    assert "no content delta" in e.value.message
    stack.model.words = ["ok"]
    stack.model.token = "rotated" * 6  # Nginx now wants another token than ES holds
    with pytest.raises(InstallError) as e:
        proof.es_to_model(es, "airgap-demo", stack.want(), TRUST)
    assert (
        e.value.message.startswith("hop Elasticsearch → model failed")
        and "bearer token" in e.value.message
    )


@pytest.mark.parametrize("stack", [("9.5.0", "9.4.5")], indirect=True)
def test_kibana_chat_failure_names_its_hop(stack: Stack) -> None:
    es, kibana = client(stack.es.url), client(stack.kibana.url, "Kibana")
    ChatEndpoints(es, TRUST).ensure("airgap-demo", stack.want(), ours=False, held=None)
    stack.kibana.ai.settings["default"].update(
        {kbsettings.DEFAULT: "theirs", kbsettings.DEFAULT_ONLY: True}
    )
    with pytest.raises(InstallError) as e:
        proof.kibana_to_es(kibana, "", "airgap-demo")
    assert e.value.message.startswith("hop Kibana → Elasticsearch → model failed")
    assert "defaultAIConnectorOnly" in e.value.hint
    kbsettings.set_default(kibana, "", "airgap-demo", True, None)  # what install does first
    assert len(proof.kibana_to_es(kibana, "", "airgap-demo")) == 2


# -- Kibana's default model --------------------------------------------------------------


def test_default_model_set_then_restored_only_while_ours(stack: Stack) -> None:
    kibana = client(stack.kibana.url, "Kibana")
    ai = stack.kibana.ai
    ai.settings["default"][kbsettings.DEFAULT] = "their-connector"
    change = kbsettings.set_default(kibana, "", "airgap-demo", True, None)
    assert change.previous == {kbsettings.DEFAULT: "their-connector", kbsettings.DEFAULT_ONLY: None}
    assert change.written == [kbsettings.DEFAULT, kbsettings.DEFAULT_ONLY]
    assert ai.settings["default"] == {
        kbsettings.DEFAULT: "airgap-demo",
        kbsettings.DEFAULT_ONLY: True,
    }
    # a rerun keeps the values from before the first change, not its own
    again = kbsettings.set_default(kibana, "", "airgap-demo", True, change.previous)
    assert again.previous == change.previous and again.written == []
    said = kbsettings.restore(kibana, "", "airgap-demo", change.previous)
    assert said.startswith("restored") and ai.settings["default"] == {
        kbsettings.DEFAULT: "their-connector"
    }
    # the site chose another model since: left alone
    kbsettings.set_default(kibana, "", "airgap-demo", False, None)
    ai.settings["default"][kbsettings.DEFAULT] = "chosen-later"
    said = kbsettings.restore(kibana, "", "airgap-demo", {kbsettings.DEFAULT: "their-connector"})
    assert (
        said.startswith("left alone")
        and ai.settings["default"][kbsettings.DEFAULT] == "chosen-later"
    )


def test_read_only_default_and_feature_overrides(stack: Stack) -> None:
    kibana = client(stack.kibana.url, "Kibana")
    stack.kibana.overrides[kbsettings.DEFAULT] = "pinned-by-kibana-yml"
    with pytest.raises(InstallError) as e:
        kbsettings.set_default(kibana, "", "airgap-demo", False, None)
    assert "uiSettings.overrides" in e.value.message and "kibana.yml" in e.value.hint
    stack.kibana.overrides[kbsettings.DEFAULT] = "airgap-demo"  # already ours there: fine
    assert kbsettings.set_default(kibana, "", "airgap-demo", False, None).written == []
    r = requests.put(
        f"{stack.kibana.url}/internal/search_inference_endpoints/settings",
        json={
            "features": [
                {"feature_id": "observability_ai_assistant", "endpoints": [{"id": ".eis-x"}]}
            ]
        },
        headers={**INTERNAL, "elastic-api-version": "1"},
        timeout=5,
    )
    assert r.status_code == 200
    assert kbsettings.feature_overrides(kibana, "", "airgap-demo") == [
        "observability_ai_assistant uses .eis-x"
    ]


# -- which wiring ------------------------------------------------------------------------


def test_wiring_is_chosen_from_both_versions_and_says_why() -> None:
    auto = LlmOptions()
    v = lambda s: tuple(int(x) for x in s.split("."))  # noqa: E731
    p = choose(auto, v("9.5.0"), v("9.5.0"))
    assert p.wiring == "inference-endpoint" and "9.4+" in p.reason and p.kibana_lists_endpoints
    assert choose(auto, v("9.3.0"), v("9.3.0")).wiring == "connector"
    p = choose(auto, v("9.5.1"), None)  # 9.5 without --es-url: the deprecated connector, warned
    assert (
        p.wiring == "connector"
        and "deprecated" in (p.warning or "")
        and "--es-url" in (p.warning or "")
    )
    assert (
        choose(auto, v("9.4.0"), None).warning
        == "add --es-url to wire the model as an Elasticsearch inference endpoint"
    )
    assert choose(auto, None, v("9.5.0")).wiring == "inference-endpoint"  # ES alone decides
    assert choose(auto, None, v("9.2.0")).wiring == "none"
    assert choose(auto, v("9.4.0"), v("8.17.0")).wiring == "connector"
    explicit = LlmOptions(wiring="inference-endpoint")
    with pytest.raises(UsageError) as e:
        choose(explicit, v("9.5.0"), v("8.17.3"))
    assert "8.18" in e.value.message and e.value.hint
    p = choose(explicit, v("9.3.0"), v("9.3.0"))
    assert p.wiring == "inference-endpoint" and not p.kibana_lists_endpoints and p.warning
    with pytest.raises(UsageError) as e:
        check_request(explicit, es_url=None, kibana_url="http://k", kibana_mode="api")
    assert "--es-url" in e.value.hint
    with pytest.raises(UsageError):
        check_request(explicit, es_url="http://e", kibana_url=None, kibana_mode="preconfigured")
    with pytest.raises(UsageError):
        check_request(
            LlmOptions(endpoint_id="Not OK"), es_url=None, kibana_url=None, kibana_mode="api"
        )
    with pytest.raises(InstallError) as e:
        check_license({"license": {"type": "basic", "status": "active"}}, "http://es")
    assert "basic license" in e.value.message and "trial" in e.value.hint
    assert check_license({"license": {"type": "trial", "status": "active"}}, "x") == "trial license"
    with pytest.raises(InstallError):
        check_license({"license": {"type": "enterprise", "status": "expired"}}, "x")


def test_choice_without_serving_and_the_rollback_note() -> None:
    from bundler.install.elastic.records import ChatEndpointRecord, ElasticRecord
    from bundler.install.elastic.steps import connector_note
    from bundler.install.records import EngineSpec, Receipt, Release, ServeRecord

    assert choose(LlmOptions(), None, (9, 5, 0), serving=False).wiring == "none"
    with pytest.raises(UsageError):
        choose(LlmOptions(wiring="inference-endpoint"), None, (9, 5, 0), serving=False)
    ep = ChatEndpointRecord(
        url="http://es:9200",
        version="9.5.0",
        endpoint_id="airgap-demo",
        service_url="https://llm:8443/v1/chat/completions",
        model_id="new-model",
        created_by_us=True,
        action="created",
    )
    rel = Release(
        name="demo",
        version=2,
        index_sha256="a" * 64,
        signers=[],
        installed_at="t",
        path="/p",
        target=EngineSpec(url="unix:///d"),
        elastic=ElasticRecord(inference=ep, wiring="inference-endpoint"),
    )
    served = ServeRecord(url=ep.service_url, ca_cert="/ca", port=8443, model="old-model")
    notes = connector_note(Receipt(releases={"demo-2": rel}), "demo-1", served)
    assert (
        len(notes) == 1 and "inference endpoint still names the newer release's model" in notes[0]
    )
    assert (
        connector_note(
            Receipt(releases={"demo-2": rel}),
            "demo-1",
            served.model_copy(update={"model": "new-model"}),
        )
        == []
    )


def test_new_elastic_records_round_trip_and_old_ones_stay_as_written() -> None:
    from bundler.install.elastic.records import ElasticRecord

    doc = {
        "earlier": [
            {"kind": "inference", "url": "http://es", "version": "9.5.0", "endpoint_id": "a",
             "service_url": "https://h/v1/chat/completions", "model_id": "m", "created_by_us": True,
             "action": "created", "key_fingerprint": "sha256:0123456789abcdef"},
            {"kind": "kibana_settings", "url": "http://k", "space": "ops", "endpoint_id": "a",
             "kibana_version": "9.5.0", "previous": {DEFAULT_KEY: None}},
        ],
        "wiring": "inference-endpoint",
        "inference": {"url": "http://es", "version": "9.5.0", "endpoint_id": "b",
                      "service_url": "https://h/v1/chat/completions", "model_id": "m",
                      "created_by_us": False, "action": "kept"},
        "kibana_settings": {"url": "http://k", "space": "default", "endpoint_id": "b",
                            "kibana_version": "9.5.0", "previous": {DEFAULT_KEY: "theirs"}},
    }  # fmt: skip
    assert ElasticRecord.model_validate(doc).to_json() == doc
    old = {"earlier": [], "settings_file": "/s"}  # written before these records existed
    assert ElasticRecord.model_validate(old).to_json() == old
    with pytest.raises(ValueError):
        ElasticRecord.model_validate({**doc, "inference": {**doc["inference"], "api_key": "x"}})


DEFAULT_KEY = kbsettings.DEFAULT
