"""The knowledge base and product docs, end to end through the real installer: a real
install (Docker engine, Nginx with the installer's TLS and token, the vLLM stand-in)
wired into the Elasticsearch 9.5 stand-in, whose built-in ``.elser-2-elasticsearch``
(or E5) endpoint downloads the bundle's model from that Nginx, and the Kibana 9.5
stand-in, which sets its knowledge base up on that endpoint and installs the product
docs by reading the S3 listing and the ZIPs from the same Nginx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integration import test_elastic as base
from integration import test_elastic_endpoint as ep

from bundler.install.elastic.truststore_script import node_command
from devkit.demo_data import make_demo_sources, sha

from conftest import Keys, airgap

pytestmark = pytest.mark.integration
site, install = base.site, base.install
E5_EP = ".multilingual-e5-small-elasticsearch"
E5 = "multilingual-e5-small_linux-x86_64"
ZIP = b"PK\x05\x06" + bytes(18)
DOCS_95 = [
    "kb-product-doc-elasticsearch-9.5.zip",
    "kb-product-doc-kibana-9.5.zip",
    "kb-product-doc-openapi-9.5.zip",
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo sources plus E5 and the 9.5 knowledge-base artifacts: product docs, their
    E5 variant, the OpenAPI specs and Security Labs."""
    src = tmp_path_factory.mktemp("kb-src")
    manifest = make_demo_sources(src, real_images=True, elser_bytes=2 * 1024 * 1024 + 7)
    elastic = src / "elastic"
    for name in [
        *DOCS_95,
        f"kb-product-doc-kibana-9.5--{E5_EP}.zip",
        "security-labs-2026.08.15.zip",
    ]:
        (elastic / name).write_bytes(ZIP)
    pt = b"5" * 1_500_000
    (elastic / f"{E5}.pt").write_bytes(pt)
    (elastic / f"{E5}.vocab.json").write_text('{"vocabulary": ["a"]}')
    meta = {"packaged_model_id": E5, "sha256": sha(pt), "size": len(pt)}
    (elastic / f"{E5}.metadata.json").write_text(json.dumps(meta))
    return manifest


def human(site: dict, key: Keys, *extra: str):  # type: ignore[no-untyped-def]
    """``install`` as an operator runs it: its printed report, not ``--json``."""
    args = [
        "install", str(site["bundle"]), "--trusted-key", str(key.public),
        "--prefix", str(site["prefix"]), "--no-gpu", "--runtime-url", site["engine"].url,
        "--port", str(site["port"]), "--internal-port", str(site["internal"]),
        "--artifacts-port", str(site["artifacts"]), "--ip", "127.0.0.1", *extra,
    ]  # fmt: skip
    return airgap("-q", *args, env=ep.BOTH)


def status(site: dict, env: dict[str, str]):  # type: ignore[no-untyped-def]
    return airgap(
        "status", "--prefix", str(site["prefix"]), "--runtime-url", site["engine"].url, "--json",
        env=env,
    )  # fmt: skip


def test_knowledge_base_and_product_docs_set_up_kept_checked_and_uninstalled(
    site: dict, key: Keys, tmp_path: Path
) -> None:
    with ep.stand_ins(site) as (es, kibana):
        kibana.kb.artifact_repository = f"http://127.0.0.1:{site['artifacts']}/product-docs"
        kibana.kb.entries.append({"id": "runbook", "text": "the users' own"})
        assert install(site, key).returncode == 0  # the release serves: its CA exists
        ep.trust_our_ca(site, es, tmp_path)
        for run in range(2):
            r = ep.wired(site, key, es, kibana)
            assert r.returncode == 0, r.stderr.decode()
            out = json.loads(r.stdout)
            el = out["elastic"]
            row = {c["name"]: c for c in out["checks"]}["knowledge base"]
            assert row["ok"] is True and "knowledge base on .elser-2-elasticsearch" in row["detail"]
            # the built-in endpoint, deployed from the bundle's ELSER; no second one
            e = el["elasticsearch"]
            assert e["endpoint_id"] == ".elser-2-elasticsearch" and e["created_by_us"] is False
            assert e["state"] == "started" and e["action"] == "built-in"
            k, d = el["knowledge_base"], el["product_docs"]
            assert k["state"] == "READY" and k["inference_id"] == ".elser-2-elasticsearch"
            assert k["action"] == ("set up" if run == 0 else "kept") and k["set_up_by_us"]
            assert d["state"] == "installed" and d["created_by_us"] is True
            assert d["action"] == ("installed" if run == 0 else "kept")
            assert d["artifacts"] == DOCS_95
        script = site["prefix"] / "elastic" / "es-truststore.sh"
        assert el["trust_step"] == node_command(script)
        assert (
            "--es-home /usr/share/elasticsearch --es-path-conf /etc/elasticsearch"
            in el["trust_step"]
        )
        assert es.endpoints == {}  # no second ELSER endpoint
        warm = [p for m, p, _ in es.log if p.startswith("/_inference/sparse_embedding/.elser")]
        assert len(warm) == 1  # airgap deployed it once; the rerun found it started
        # Kibana read the listing and its own version's ZIPs from the install's Nginx
        zips = sorted(u.rsplit("/", 1)[1] for u in kibana.kb.downloads if u.endswith(".zip"))
        assert zips == DOCS_95
        assert kibana.kb.downloads[0].endswith("/product-docs?max-keys=1000")
        setups = [p for m, p, _ in kibana.log if "/kb/setup" in p]
        assert setups == [
            "/internal/observability_ai_assistant/kb/setup?inference_id=.elser-2-elasticsearch"
        ]
        # the human report names the per-node trust step at the end
        r = human(site, key, "--kibana-url", kibana.url, "--es-url", es.url)
        text = r.stdout.decode()
        assert r.returncode == 0 and "knowledge base READY on .elser-2-elasticsearch" in text
        assert "Elasticsearch trust step" in text and "sh es-truststore.sh --es-home" in text

        # status checks both live, and notices docs that went away
        r = status(site, ep.BOTH)
        live = json.loads(r.stdout)["releases"][0]["elastic_live"]
        assert r.returncode == 0 and live["knowledge_base"]["ok"] is True
        assert live["product_docs"]["ok"] is True
        saved = dict(kibana.kb.docs)
        kibana.kb.docs.clear()
        r = status(site, ep.BOTH)
        assert r.returncode == 1
        assert json.loads(r.stdout)["releases"][0]["elastic_live"]["product_docs"]["ok"] is False
        kibana.kb.docs.update(saved)

        # uninstall: the docs it installed go; the knowledge base and its entries stay;
        # the built-in endpoint is Elastic's and stays
        r = airgap(
            "uninstall", "--prefix", str(site["prefix"]), "--runtime-url", site["engine"].url,
            env=ep.BOTH,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        assert b"Kibana product docs for .elser-2-elasticsearch" in r.stdout
        assert b"knowledge base" in r.stdout and b"stays" in r.stdout
        assert ".elser-2-elasticsearch" not in kibana.kb.docs
        assert kibana.kb.kb_state == "READY" and kibana.kb.entries == [
            {"id": "runbook", "text": "the users' own"}
        ]
        assert not [(m, p) for m, p, _ in es.log if ".elser-2" in p and m in ("PUT", "DELETE")]


def test_e5_and_a_missing_repository_setting_then_a_rerun_finishes(
    site: dict, key: Keys, tmp_path: Path
) -> None:
    with ep.stand_ins(site) as (es, kibana):  # kibana.yml without artifactRepositoryUrl
        assert install(site, key).returncode == 0
        ep.trust_our_ca(site, es, tmp_path)
        e5 = ("--kb-inference-id", E5_EP)
        r = ep.wired(site, key, es, kibana, *e5)
        assert r.returncode == 1
        err = r.stderr.decode()
        assert "installed and serving" in err and "ENOTFOUND" in err
        repo = f"http://127.0.0.1:{site['artifacts']}/product-docs"
        assert f"xpack.productDocBase.artifactRepositoryUrl: {repo}" in err
        assert (site["prefix"] / "current").exists()
        receipt = json.loads((site["prefix"] / "state" / "receipt.json").read_text())
        assert receipt["releases"]["demo-1"]["elastic"]["knowledge_base"]["inference_id"] == E5_EP
        kibana.kb.artifact_repository = repo  # the operator adds the line, restarts Kibana
        r = ep.wired(site, key, es, kibana, *e5)
        assert r.returncode == 0, r.stderr.decode()
        el = json.loads(r.stdout)["elastic"]
        assert el["elasticsearch"]["endpoint_id"] == E5_EP
        assert el["elasticsearch"]["model_id"] == f".{E5}"
        assert el["knowledge_base"]["action"] == "kept"
        assert el["product_docs"]["artifacts"] == [f"kb-product-doc-kibana-9.5--{E5_EP}.zip"]
        zips = [u.rsplit("/", 1)[1] for u in kibana.kb.downloads if u.endswith(".zip")]
        assert zips == [f"kb-product-doc-kibana-9.5--{E5_EP}.zip"]
        # --no-kb: neither step runs, nothing more is asked of Kibana
        before = len(kibana.log)
        r = ep.wired(site, key, es, kibana, *e5, "--no-kb")
        assert r.returncode == 0, r.stderr.decode()
        assert not [p for _, p, _ in kibana.log[before:] if "knowledge" in p or "product_doc" in p]
