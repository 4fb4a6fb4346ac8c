"""Elastic on the air-gapped side, end to end: a real install (real Docker engine, real
Nginx, the OpenAI-compatible stand-in for vLLM) registered in the Kibana stand-in, whose
``_execute`` really calls the endpoint through Nginx with the stored key; ELSER served
by that Nginx and downloaded by the Elasticsearch stand-in the way Elasticsearch does
(parallel ``Range`` requests); product docs listed as S3 ``ListBucketResult``."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from devkit import services
from devkit.demo_data import make_demo_sources
from devkit.standins.elasticsearch import ElasticsearchStandIn
from devkit.standins.kibana import KibanaStandIn

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration
KIBANA_KEY = "a2liYW5hOmtleQ=="
ES_KEY = "ZXM6a2V5"
ELSER = "elser_model_2_linux-x86_64"
S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("elastic-src")
    return make_demo_sources(src, real_images=True, elser_bytes=5 * 1024 * 1024 + 123)


@pytest.fixture
def site(
    tmp_path: Path, sources: Path, key: Keys, docker_engine: services.Service
) -> Iterator[dict]:
    bundle = tmp_path / "b.tar"
    build_bundle(sources, bundle, key)
    prefix = tmp_path / "opt"
    ctx = {
        "bundle": bundle,
        "prefix": prefix,
        "port": services.free_port(),
        "internal": services.free_port(),
        "artifacts": services.free_port(),
        "engine": docker_engine,
        "src": sources.parent,
    }
    yield ctx
    airgap(
        "uninstall", "--prefix", str(prefix), "--runtime-url", docker_engine.url, "--keep-elastic"
    )


def install(ctx: dict, key: Keys, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return airgap(
        "install",
        str(ctx["bundle"]),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(ctx["prefix"]),
        "--no-gpu",
        "--runtime-url",
        ctx["engine"].url,
        "--port",
        str(ctx["port"]),
        "--internal-port",
        str(ctx["internal"]),
        "--artifacts-port",
        str(ctx["artifacts"]),
        "--ip",
        "127.0.0.1",
        "--health-timeout",
        "60",
        "--json",
        *extra,
        env={"AIRGAP_KIBANA_API_KEY": KIBANA_KEY, "AIRGAP_ES_API_KEY": ES_KEY, **(env or {})},
    )


def test_connector_registered_tested_updated_and_removed(site: dict, key: Keys) -> None:
    ca = site["prefix"] / "secrets" / "tls" / "ca.crt"
    kibana = KibanaStandIn("9.2.0", api_keys={KIBANA_KEY}, trusted_ca=ca, spaces=("default", "ops"))
    with kibana.running():
        # someone else's connector, which airgap must never touch
        foreign = {
            "name": "theirs",
            "connector_type_id": ".gen-ai",
            "config": {"apiProvider": "Other", "apiUrl": "https://x/v1", "defaultModel": "m"},
            "secrets": {"apiKey": "k"},
        }
        r = requests.post(
            f"{kibana.url}/api/actions/connector/11111111-1111-4111-8111-111111111111",
            json=foreign,
            headers={"Authorization": f"ApiKey {KIBANA_KEY}", "kbn-xsrf": "1"},
            timeout=5,
        )
        assert r.ok
        for run in range(3):
            r = install(site, key, "--kibana-url", kibana.url)
            assert r.returncode == 0, r.stderr.decode()
            out = json.loads(r.stdout)
            k = out["elastic"]["kibana"]
            assert k["kibana_version"] == "9.2.0" and k["created_by_us"]
            assert k["test_reply"]  # Kibana's own call through Nginx answered
            assert out["status"] == ("installed" if run == 0 else "unchanged")
        ours = k["connector_id"]
        assert sorted(kibana.connectors["default"]) == sorted(
            [ours, "11111111-1111-4111-8111-111111111111"]
        )
        stored = kibana.connectors["default"][ours]
        token = (site["prefix"] / "secrets" / "bearer-token").read_text().strip()
        assert stored["secrets"] == {"apiKey": token}
        assert stored["config"] == {
            "apiProvider": "Other",
            "apiUrl": f"https://127.0.0.1:{site['port']}/v1/chat/completions",
            "defaultModel": "tiny",
            "verificationMode": "full",
            "contextWindowLength": 256,
        }
        executes = [s for m, p, s in kibana.log if p.endswith("/_execute")]
        assert executes == [200, 200, 200]
        receipt = (site["prefix"] / "state" / "receipt.json").read_text()
        assert token not in receipt and KIBANA_KEY not in receipt and ours in receipt
        # the token and credentials are on no process's command line (ours included)
        settings = (site["prefix"] / "serve" / "elastic-settings.txt").read_text()
        assert "xpack.actions.customHostSettings" in settings and token not in settings

        # a rerun into another space: a second connector; the first stays on record
        r = install(site, key, "--kibana-url", kibana.url, "--kibana-space", "ops")
        assert r.returncode == 0, r.stderr.decode()
        in_ops = json.loads(r.stdout)["elastic"]["kibana"]["connector_id"]
        assert list(kibana.connectors["ops"]) == [in_ops] and in_ops != ours

        # uninstall without credentials refuses and removes nothing
        r = airgap(
            "uninstall",
            "--prefix",
            str(site["prefix"]),
            "--runtime-url",
            site["engine"].url,
            env={"AIRGAP_KIBANA_API_KEY": ""},
        )
        assert r.returncode == 1 and b"AIRGAP_KIBANA_API_KEY" in r.stderr
        assert (site["prefix"] / "current").exists() and ours in kibana.connectors["default"]
        r = airgap(
            "uninstall",
            "--prefix",
            str(site["prefix"]),
            "--runtime-url",
            site["engine"].url,
            env={"AIRGAP_KIBANA_API_KEY": KIBANA_KEY},
        )
        assert r.returncode == 0, r.stderr.decode()
        assert f"Kibana connector {ours}".encode() in r.stdout
        assert list(kibana.connectors["default"]) == ["11111111-1111-4111-8111-111111111111"]
        assert not kibana.connectors["ops"]


def test_untrusted_ca_fails_the_test_but_keeps_the_release(site: dict, key: Keys) -> None:
    kibana = KibanaStandIn("9.1.0", api_keys={KIBANA_KEY}, trusted_ca=None)
    with kibana.running():
        r = install(site, key, "--kibana-url", kibana.url)
        assert r.returncode == 1
        err = r.stderr.decode()
        assert "installed and serving" in err and "certificate" in err
        assert "customHostSettings" in err and "elastic-settings.txt" in err
        assert (site["prefix"] / "current").exists()
        # the operator trusts the CA in kibana.yml; the same command now finishes
        kibana.trusted_ca = site["prefix"] / "secrets" / "tls" / "ca.crt"
        r = install(site, key, "--kibana-url", kibana.url)
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout)["status"] == "unchanged"
        assert len(kibana.connectors["default"]) == 1


def test_kibana_refusal_is_caught_before_any_payload(site: dict, key: Keys) -> None:
    kibana = KibanaStandIn("9.2.0", api_keys={"c29tZW9uZS1lbHNl"})
    with kibana.running():
        r = install(site, key, "--kibana-url", kibana.url, env={"AIRGAP_KIBANA_API_KEY": ""})
        assert r.returncode == 2 and b"AIRGAP_KIBANA_API_KEY" in r.stderr
        assert not site["prefix"].joinpath("current").exists()
        r = install(site, key, "--kibana-url", kibana.url)
    assert r.returncode == 1
    assert b"401" in r.stderr and b"unable to authenticate" in r.stderr
    assert not site["prefix"].joinpath("current").exists()
    assert not list((site["prefix"] / "releases").glob("*"))


def test_preconfigured_mode_writes_the_kibana_yml(site: dict, key: Keys) -> None:
    import yaml

    r = install(site, key, "--kibana-mode", "preconfigured", "--kibana-version", "8.18.0")
    assert r.returncode == 0, r.stderr.decode()
    path = Path(json.loads(r.stdout)["elastic"]["kibana"]["snippet"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = yaml.safe_load(path.read_text())
    conn = doc["xpack.actions.preconfigured"]["airgap-demo"]
    assert set(conn["config"]) == {"apiProvider", "apiUrl", "defaultModel"}  # 8.18's keys
    ca = (site["prefix"] / "secrets" / "tls" / "ca.crt").read_text()
    assert doc["xpack.actions.customHostSettings"][0]["ssl"]["certificateAuthoritiesData"] == ca
    r = airgap("uninstall", "--prefix", str(site["prefix"]), "--runtime-url", site["engine"].url)
    assert r.returncode == 0, r.stderr.decode()
    assert b"note: remove the preconfigured connector airgap-demo from kibana.yml" in r.stdout
    assert not path.exists()


def test_elser_and_product_docs_served_by_nginx(site: dict, key: Keys) -> None:
    # before 8.17 airgap creates the ELSER endpoint (8.17+: test_elastic_kb.py)
    es = ElasticsearchStandIn("8.16.0", api_keys={ES_KEY}, model_repository=None)
    with es.running():
        # a cluster without the setting is refused before anything is installed
        r = install(site, key, "--es-url", es.url)
        assert r.returncode == 1
        repo = f"http://127.0.0.1:{site['artifacts']}/elser"
        assert f"xpack.ml.model_repository: {repo}".encode() in r.stderr
        assert not site["prefix"].joinpath("current").exists()
        es.model_repository = repo
        r = install(site, key, "--es-url", es.url)
        assert r.returncode == 0, r.stderr.decode()
        out = json.loads(r.stdout)
    e = out["elastic"]["elasticsearch"]
    assert e["state"] == "started" and e["model_id"] == f".{ELSER}" and e["created_by_us"]
    assert ["elasticsearch.yml", f"xpack.ml.model_repository: {repo}"] in out["elastic"]["settings"]
    # Elasticsearch's download: 1 MiB ranges on 5 connections, every one answered 206
    pt = (site["src"] / "elastic" / f"{ELSER}.pt").read_bytes()
    assert len(es.range_requests) == (len(pt) + (1 << 20) - 1) >> 20 == 6
    assert {s for _, s in es.range_requests} == {206}
    assert es.models[f".{ELSER}"]["sha256"] == hashlib.sha256(pt).hexdigest()

    # the same by hand: parallel ranges reassemble the exact bytes; metadata's sha256 holds
    meta = requests.get(f"{repo}/{ELSER}.metadata.json", timeout=5).json()
    size = int(meta["size"])

    def part(a: int) -> bytes:
        b = min(a + 700_000, size) - 1
        resp = requests.get(
            f"{repo}/{ELSER}.pt",
            headers={"Range": f"bytes={a}-{b}"},
            allow_redirects=False,
            timeout=5,
        )
        assert resp.status_code == 206
        assert resp.headers["Content-Range"] == f"bytes {a}-{b}/{size}"
        return resp.content

    with ThreadPoolExecutor(4) as pool:
        whole = b"".join(pool.map(part, range(0, size, 700_000)))
    assert hashlib.sha256(whole).hexdigest() == meta["sha256"]
    assert requests.get(f"{repo}/", timeout=5).status_code in (403, 404)  # no listing
    assert requests.get(f"{repo}/../../secrets/bearer-token", timeout=5).status_code in (400, 404)

    # product docs: the S3 listing Kibana asks for, and each artifact by its name
    docs = out["elastic"]["settings"][1][1].split(": ", 1)[1]
    listing = requests.get(f"{docs}?max-keys=1000", timeout=5)
    assert listing.status_code == 200 and "xml" in listing.headers["Content-Type"]
    root = ET.fromstring(listing.content)
    assert root.tag == f"{S3}ListBucketResult"
    assert root.findtext(f"{S3}IsTruncated") == "false"
    keys = [c.findtext(f"{S3}Key") for c in root.iter(f"{S3}Contents")]
    assert keys == ["kb-product-doc-kibana-9.2.zip"]
    src_zip = (site["src"] / "elastic" / keys[0]).read_bytes()
    assert requests.get(f"{docs}/{keys[0]}", timeout=5).content == src_zip
    assert requests.get(f"{docs}/", timeout=5).content == listing.content


def test_elser_endpoint_id_under_its_new_and_its_old_name(site: dict, key: Keys) -> None:
    repo = f"http://127.0.0.1:{site['artifacts']}/elser"
    es = ElasticsearchStandIn("8.16.0", api_keys={ES_KEY}, model_repository=repo)
    with es.running():
        r = install(site, key, "--es-url", es.url, "--elser-endpoint-id", "elser-new-name")
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout)["elastic"]["elasticsearch"]["endpoint_id"] == "elser-new-name"
        assert "elser-new-name" in es.endpoints
        # the old spelling still works: the same install again, another endpoint id
        r = install(site, key, "--es-url", es.url, "--es-inference-id", "elser-old-name")
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout)["elastic"]["elasticsearch"]["endpoint_id"] == "elser-old-name"
        assert "elser-old-name" in es.endpoints
        assert "airgap-elser" not in es.endpoints  # the default was never used


def test_elser_and_docs_copied_for_file_repositories(site: dict, key: Keys, tmp_path: Path) -> None:
    models = tmp_path / "es-config" / "models"
    docs = tmp_path / "kibana-docs"
    r = install(site, key, "--elser-dir", str(models), "--product-docs-dir", str(docs))
    assert r.returncode == 0, r.stderr.decode()
    src = site["src"] / "elastic"
    for name in (f"{ELSER}.pt", f"{ELSER}.metadata.json", f"{ELSER}.vocab.json"):
        assert (models / name).read_bytes() == (src / name).read_bytes()
    root = ET.parse(docs / "index.xml").getroot()
    assert [c.findtext(f"{S3}Key") for c in root.iter(f"{S3}Contents")] == [
        "kb-product-doc-kibana-9.2.zip"
    ]
    settings = dict((f, line) for f, line in json.loads(r.stdout)["elastic"]["settings"][:2])
    assert settings["elasticsearch.yml"] == f"xpack.ml.model_repository: file://{models.resolve()}"
    assert (
        settings["kibana.yml"]
        == f"xpack.productDocBase.artifactRepositoryUrl: file://{docs.resolve()}"
    )
    assert not [p for p in os.listdir(models) if "partial" in p]
    # a copied file that changed on disk since install is named, and never copied on
    (site["prefix"] / "current" / "elastic" / "elser" / f"{ELSER}.vocab.json").write_text("{}")
    r = install(site, key, "--elser-dir", str(tmp_path / "again"))
    assert r.returncode == 1 and b"differs from the signed index" in r.stderr
    assert not (tmp_path / "again" / f"{ELSER}.vocab.json").exists()


def test_failed_elser_deployment_is_recorded_then_recreated(tmp_path: Path) -> None:
    """The endpoint exists before its deployment is known to fail: it is recorded as ours
    at once, and the next run deletes and creates it again instead of keeping a corpse."""
    from bundler.errors import InstallError
    from bundler.install.elastic.api import Credentials
    from bundler.install.elastic.elasticsearch import EsOptions, deploy_elser

    www = tmp_path / "www"
    make_demo_sources(tmp_path / "src", elser_bytes=3 * 1024 * 1024)
    (www / "elser").mkdir(parents=True)
    for f in (tmp_path / "src" / "elastic").glob(f"{ELSER}.*"):
        (www / "elser" / f.name).write_bytes(f.read_bytes())
    es = ElasticsearchStandIn(api_keys={ES_KEY}, wait=0)
    recorded: list[dict] = []
    opts = EsOptions(
        "http://placeholder", Credentials("ApiKey", ES_KEY, "test"), timeout=20, attempts=2
    )
    with es.running(), services.nginx_static(www) as good:
        opts = EsOptions(es.url, opts.credentials, timeout=20, attempts=2)
        # a repository that ignores Range (Python's file server): sizes do not add up
        import functools
        import http.server
        import threading

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
        bad = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=bad.serve_forever, daemon=True).start()
        try:
            es.model_repository = f"http://127.0.0.1:{bad.server_address[1]}/elser"
            with pytest.raises(InstallError) as e:
                deploy_elser(opts, ELSER, None, on_created=recorded.append)
        finally:
            bad.shutdown()
            bad.server_close()
        assert "could not deploy" in e.value.message
        assert recorded and recorded[-1]["created_by_us"] is True
        assert "airgap-elser" in es.endpoints  # it exists, with a failed deployment
        es.model_repository = f"{good.url}/elser"
        again = deploy_elser(opts, ELSER, recorded[-1])
    assert again["state"] == "started" and again["created_by_us"] is True
    assert [m for m, p, s in es.log if p.startswith("/_inference")].count("DELETE") == 1
