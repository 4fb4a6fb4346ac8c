"""The inference-endpoint wiring (Kibana 9.4+) end to end: a real install (real Docker
engine, real Nginx with the installer's TLS and token, the vLLM stand-in) wired into the
Elasticsearch 9.5 stand-in, which calls the model through Nginx over TLS verified
against its PKCS12 trust store, and the Kibana 9.5 stand-in, which lists the endpoint
and calls it through Elasticsearch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from integration import test_elastic as base

from bundler.install.elastic.kbsettings import DEFAULT
from devkit.standins.elasticsearch import ElasticsearchStandIn
from devkit.standins.jvmtrust import write_truststore
from devkit.standins.kibana import KibanaStandIn

from conftest import Keys, airgap

pytestmark = pytest.mark.integration
sources, site = base.sources, base.site  # the fixtures: a real install, served
install, ES_KEY, KIBANA_KEY = base.install, base.ES_KEY, base.KIBANA_KEY
HOPS = ["Elasticsearch → model", "Kibana → Elasticsearch", "Kibana → Elasticsearch → model"]
BOTH = {"AIRGAP_KIBANA_API_KEY": KIBANA_KEY, "AIRGAP_ES_API_KEY": ES_KEY}
NONE = {"AIRGAP_KIBANA_API_KEY": "", "AIRGAP_ES_API_KEY": ""}


@contextmanager
def stand_ins(site: dict, **es_kw: object) -> Iterator[tuple[ElasticsearchStandIn, KibanaStandIn]]:
    """ES 9.5 (trial, ML nodes reading this install's ELSER) and a Kibana 9.5 on it; the
    same API key works for both, as a real one does (Kibana calls ES as its caller)."""
    repo = f"http://127.0.0.1:{site['artifacts']}/elser"
    kw: dict = {"license": "trial", "model_repository": repo, **es_kw}
    es = ElasticsearchStandIn("9.5.0", api_keys={ES_KEY, KIBANA_KEY}, **kw)
    with es.running():
        kibana = KibanaStandIn("9.5.0", api_keys={KIBANA_KEY}, elasticsearch=es.url)
        with kibana.running():
            yield es, kibana


def trust_our_ca(site: dict, es: ElasticsearchStandIn, tmp_path: Path) -> None:
    """What es-truststore.sh does on a node, then the rolling restart."""
    ca = (site["prefix"] / "secrets" / "tls" / "ca.crt").read_bytes()
    es.use_truststore(write_truststore(ca, tmp_path / "inference-truststore.p12", "pw"), "pw")


def wired(site: dict, key: Keys, es: ElasticsearchStandIn, kibana: KibanaStandIn, *extra: str):  # type: ignore[no-untyped-def]
    return install(site, key, "--kibana-url", kibana.url, "--es-url", es.url, *extra)


def writes(es: ElasticsearchStandIn, ident: str = "airgap-demo") -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in es.log if ident in p and m != "GET" and "_stream" not in p]


def test_endpoint_created_once_proven_made_default_rotated_and_removed(
    site: dict, key: Keys, tmp_path: Path
) -> None:
    with stand_ins(site) as (es, kibana):
        kibana.ai.settings["default"][DEFAULT] = "their-model"  # the site's choice before
        theirs = {"service_settings": {"model_id": "m", "url": "https://x/v1"}, "task_settings": {}}
        es.chat.endpoints["their-endpoint"] = theirs
        r = install(site, key)  # the release serves: its CA exists
        assert r.returncode == 0, r.stderr.decode()
        trust_our_ca(site, es, tmp_path)
        for run in range(3):
            r = wired(site, key, es, kibana)
            assert r.returncode == 0, r.stderr.decode()
            out = json.loads(r.stdout)
            el = out["elastic"]
            assert el["plan"]["wiring"] == "inference-endpoint"
            assert "Kibana 9.5.0 lists Elasticsearch inference endpoints" in el["plan"]["reason"]
            assert [h["hop"] for h in el["proof"]] == HOPS
            assert el["inference"]["action"] == ("created" if run == 0 else "kept")
        rows = {c["name"]: c for c in out["checks"]}
        assert rows["wiring"]["ok"] is True and "license" in rows["elasticsearch"]["detail"]
        # one endpoint, made once; the site's own endpoint untouched; no connector at all
        assert writes(es) == [("PUT", "/_inference/chat_completion/airgap-demo?timeout=120s")]
        assert sorted(es.chat.endpoints) == ["airgap-demo", "their-endpoint"]
        token = (site["prefix"] / "secrets" / "bearer-token").read_text().strip()
        settings = dict(es.chat.endpoints["airgap-demo"]["service_settings"])
        assert settings["api_key"] == token and settings["model_id"] == "tiny"
        assert settings["url"] == f"https://127.0.0.1:{site['port']}/v1/chat/completions"
        assert kibana.ai.settings["default"][DEFAULT] == "airgap-demo"
        assert kibana.connectors["default"] == {}
        receipt = (site["prefix"] / "state" / "receipt.json").read_text()
        assert token not in receipt and KIBANA_KEY not in receipt and ES_KEY not in receipt
        rel = json.loads(receipt)["releases"]["demo-1"]["elastic"]
        assert rel["kibana_settings"]["previous"] == {DEFAULT: "their-model"}
        assert rel["inference"]["created_by_us"] is True

        # status checks the wiring live, with the credentials
        status = [
            "status",
            "--prefix",
            str(site["prefix"]),
            "--runtime-url",
            site["engine"].url,
            "--json",
        ]
        r = airgap(*status, env=BOTH)
        assert r.returncode == 0, r.stderr.decode()
        live = json.loads(r.stdout)["releases"][0]["elastic_live"]
        assert live["inference"]["ok"] is True and live["kibana_settings"]["ok"] is True
        es.chat.endpoints["airgap-demo"]["service_settings"]["url"] = "https://elsewhere/v1"
        r = airgap(*status, env=BOTH)
        assert (
            r.returncode == 1
            and json.loads(r.stdout)["releases"][0]["elastic_live"]["inference"]["ok"] is False
        )
        es.chat.endpoints["airgap-demo"]["service_settings"]["url"] = settings["url"]

        # --rotate-token: the endpoint gets the new key through _update, then is proven again
        before = len(es.log)
        r = wired(site, key, es, kibana, "--rotate-token")
        assert r.returncode == 0, r.stderr.decode()
        new = (site["prefix"] / "secrets" / "bearer-token").read_text().strip()
        assert (
            new != token and es.chat.endpoints["airgap-demo"]["service_settings"]["api_key"] == new
        )
        el = json.loads(r.stdout)["elastic"]
        assert (
            el["inference"]["action"] == "key updated" and [h["hop"] for h in el["proof"]] == HOPS
        )
        assert [(m, p) for m, p, _ in es.log[before:] if m == "PUT"] == [
            ("PUT", "/_inference/chat_completion/airgap-demo/_update")
        ]

        # uninstall: without credentials it refuses and removes nothing ...
        uninstall = [
            "uninstall",
            "--prefix",
            str(site["prefix"]),
            "--runtime-url",
            site["engine"].url,
        ]
        r = airgap(*uninstall, env=NONE)
        assert (
            r.returncode == 1
            and b"default AI model" in r.stderr
            and b"AIRGAP_KIBANA_API_KEY" in r.stderr
        )
        assert "airgap-demo" in es.chat.endpoints and (site["prefix"] / "current").exists()
        # ... with them, the site's default comes back and only our endpoint goes
        r = airgap(*uninstall, env=BOTH)
        assert r.returncode == 0, r.stderr.decode()
        assert b"restored genAiSettings:defaultAIConnector='their-model'" in r.stdout
        assert kibana.ai.settings["default"] == {DEFAULT: "their-model"}
        assert sorted(es.chat.endpoints) == ["their-endpoint"]


def test_untrusted_ca_names_the_trust_store_step_and_a_rerun_finishes(
    site: dict, key: Keys, tmp_path: Path
) -> None:
    with stand_ins(site) as (es, kibana):  # its JVM trusts the bundled public CAs only
        r = wired(site, key, es, kibana)
        assert r.returncode == 1
        err = r.stderr.decode()
        assert "installed and serving" in err and "PKIX path building failed" in err
        assert "airgap elastic-truststore" in err and "restart the nodes one at a time" in err
        assert f"{site['prefix']}/elastic/es-truststore.sh" in err
        # the exact command for each node, as the script's own usage has it
        node = "sh es-truststore.sh --es-home /usr/share/elasticsearch --es-path-conf "
        node += "/etc/elasticsearch"
        assert node in " ".join(err.split())
        assert (site["prefix"] / "current").exists() and es.chat.endpoints == {}
        assert DEFAULT not in kibana.ai.settings["default"]  # nothing pointed at a missing model
        trust_our_ca(site, es, tmp_path)
        r = wired(site, key, es, kibana)
        assert r.returncode == 0, r.stderr.decode()
        out = json.loads(r.stdout)
        assert out["status"] == "unchanged" and [h["hop"] for h in out["elastic"]["proof"]] == HOPS
        assert kibana.ai.settings["default"][DEFAULT] == "airgap-demo"


def test_our_connector_migrates_to_the_endpoint(site: dict, key: Keys, tmp_path: Path) -> None:
    with stand_ins(site) as (es, kibana):
        kibana.trusted_ca = site["prefix"] / "secrets" / "tls" / "ca.crt"
        # Kibana 9.5 without --es-url: the deprecated connector, with a warning saying why
        r = install(site, key, "--kibana-url", kibana.url)
        assert r.returncode == 0, r.stderr.decode()
        out = json.loads(r.stdout)
        row = {c["name"]: c for c in out["checks"]}["wiring"]
        assert row["ok"] is None and "deprecated" in row["detail"] and "--es-url" in row["detail"]
        connector = out["elastic"]["kibana"]["connector_id"]
        assert list(kibana.connectors["default"]) == [connector]
        trust_our_ca(site, es, tmp_path)
        r = wired(site, key, es, kibana, "--keep-connector")
        assert r.returncode == 0, r.stderr.decode()
        assert list(kibana.connectors["default"]) == [connector]  # kept, as asked
        r = wired(site, key, es, kibana)
        assert r.returncode == 0, r.stderr.decode()
        el = json.loads(r.stdout)["elastic"]
        assert [h["hop"] for h in el["proof"]] == HOPS  # proven before the connector went
        assert el["migrated"] and connector in el["migrated"][0]
        assert kibana.connectors["default"] == {}
        receipt = json.loads((site["prefix"] / "state" / "receipt.json").read_text())
        assert receipt["releases"]["demo-1"]["elastic"]["kibana"] is None


def test_preflight_refuses_the_endpoint_before_any_payload(site: dict, key: Keys) -> None:
    with stand_ins(site, license="basic") as (es, kibana):
        r = wired(site, key, es, kibana)
        assert r.returncode == 1
        assert b"basic license" in r.stderr and b"trial" in r.stderr
        r = install(site, key, "--kibana-url", kibana.url, "--elastic-wiring", "inference-endpoint")
        assert r.returncode == 2 and b"needs --es-url" in r.stderr and b"hint:" in r.stderr
        es.version, es.license = "8.17.2", "trial"
        r = wired(site, key, es, kibana, "--elastic-wiring", "inference-endpoint")
        assert r.returncode == 2 and b"8.18" in r.stderr
    assert not (site["prefix"] / "current").exists()
    assert not list((site["prefix"] / "releases").glob("*"))
