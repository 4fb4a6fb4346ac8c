"""The embedding model, Kibana's knowledge base and product docs, against the stand-ins.

The stand-ins' rules come first (Elasticsearch's built-in endpoints, Kibana's internal
knowledge-base and product-doc routes), each with its negative control; then airgap's
client: the built-in endpoint used on 8.17+ and airgap's own before, the knowledge base
polled to READY (a stuck state named), the product docs installed from the repository,
what uninstall removes, the plan's version gates, and the new manifest keys."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bundler.errors import InstallError, ManifestError, SourceError
from bundler.fetch.cache import Cache
from bundler.fetch.remote import Fetcher, FetchOptions
from bundler.install.elastic import kb
from bundler.install.elastic.api import ApiClient, Credentials
from bundler.install.elastic.elasticsearch import EsOptions
from bundler.install.elastic.embedding import deploy
from bundler.install.elastic.kb import plan
from bundler.install.elastic.kbroutes import KbOptions, install_docs, setup_kb
from bundler.install.elastic.records import ElasticRecord
from bundler.install.elastic.steps import ElasticAccess
from bundler.install.serveconf import product_docs_listing
from bundler.manifest import json_schema, parse_manifest
from bundler.names import DOC_FILE_RE
from bundler.pins import PathElasticPin, Pins, drift
from devkit.demo_data import make_demo_sources
from devkit.standins._http import JsonServer, Request, Response
from devkit.standins.elasticsearch import ElasticsearchStandIn
from devkit.standins.kibana import KibanaStandIn

from conftest import airgap, build_bundle, make_key

KEY = "a2I6a2V5"
H = {"Authorization": f"ApiKey {KEY}"}
INTERNAL = {**H, "x-elastic-internal-origin": "Kibana", "kbn-xsrf": "t"}
ELSER = "elser_model_2_linux-x86_64"
ELSER_EP = ".elser-2-elasticsearch"
E5_EP = ".multilingual-e5-small-elasticsearch"
E5 = "--" + E5_EP
KBS = "/internal/observability_ai_assistant/kb"
DOCS = "/internal/product_doc_base"
FAST = KbOptions(timeout=10, poll=0.05)


class Repository(JsonServer):
    """A static artifact repository as Nginx serves it: files by name, ``Range`` answered
    with 206, and the S3 listing of ``product-docs/`` at ``/product-docs``."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = files
        self.route("GET", r"/(?P<path>.+)", self._get)

    def _get(self, req: Request) -> Response:
        path = req.params["path"]
        if path == "product-docs":
            return Response(200, raw=self.listing().encode(), headers={"Content-Type": "text/xml"})
        data = self.files.get(path)
        if data is None:
            return Response(404, raw=b"not found")
        rng = req.headers.get("range", "")
        if rng.startswith("bytes="):
            a, b = (int(x) for x in rng[6:].split("-"))
            return Response(206, raw=data[a : b + 1])
        return Response(200, raw=data)

    def listing(self) -> str:
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for name, data in self.files.items():
                if name.startswith("product-docs/"):
                    p = Path(d) / name.split("/", 1)[1]
                    p.write_bytes(data)
                    paths.append(p)
            return product_docs_listing(sorted(paths))


def elser_files(model: str = ELSER) -> dict[str, bytes]:
    pt = b"e" * 300_000
    meta = {"packaged_model_id": model, "sha256": hashlib.sha256(pt).hexdigest(), "size": len(pt)}
    return {
        f"elser/{model}.pt": pt,
        f"elser/{model}.metadata.json": json.dumps(meta).encode(),
        f"elser/{model}.vocab.json": b'{"vocabulary": ["a"]}',
    }


ZIP = b"PK\x05\x06" + bytes(18)


@dataclass
class Stack:
    repo: Repository
    es: ElasticsearchStandIn
    kibana: KibanaStandIn

    def client(self, product: str = "Kibana") -> ApiClient:
        url = self.kibana.url if product == "Kibana" else self.es.url
        headers = {"kbn-xsrf": "airgap"} if product == "Kibana" else None
        return ApiClient(product, url, Credentials("ApiKey", KEY, "t"), attempts=2, headers=headers)

    def es_opts(self, **kw: Any) -> EsOptions:
        return EsOptions(self.es.url, Credentials("ApiKey", KEY, "t"), attempts=2, **kw)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    es_v, kibana_v = getattr(request, "param", ("9.5.0", "9.5.0"))
    files = {
        **elser_files(),
        "product-docs/kb-product-doc-kibana-9.5.zip": ZIP,
        "product-docs/kb-product-doc-elasticsearch-9.5.zip": ZIP,
        "product-docs/kb-product-doc-openapi-9.5.zip": ZIP,
        f"product-docs/kb-product-doc-kibana-9.5{E5}.zip": ZIP,
        "product-docs/kb-product-doc-kibana-9.2.zip": ZIP,
    }
    repo = Repository(files)
    with repo.running():
        es = ElasticsearchStandIn(
            es_v, api_keys={KEY}, license="trial", model_repository=f"{repo.url}/elser", wait=10
        )
        with es.running():
            kibana = KibanaStandIn(kibana_v, api_keys={KEY}, elasticsearch=es.url)
            kibana.kb.artifact_repository = f"{repo.url}/product-docs"
            with kibana.running():
                yield Stack(repo, es, kibana)


def until(check: Any, seconds: float = 10) -> None:
    import time

    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# -- the Elasticsearch stand-in's built-in endpoints -----------------------------------


def test_es_builtin_endpoints_from_817_reserved_and_deployed_on_first_use(stack: Stack) -> None:
    es = stack.es
    r = requests.get(f"{es.url}/_inference/{ELSER_EP}", headers=H, timeout=5)
    ep = r.json()["endpoints"][0]
    assert (
        ep["service_settings"]["model_id"] == f".{ELSER}" and ep["task_type"] == "sparse_embedding"
    )
    r = requests.put(
        f"{es.url}/_inference/sparse_embedding/{ELSER_EP}", json={}, headers=H, timeout=5
    )
    assert r.status_code == 400 and "is a reserved inference ID" in r.text
    r = requests.delete(f"{es.url}/_inference/sparse_embedding/{ELSER_EP}", headers=H, timeout=5)
    assert r.status_code == 400
    r = requests.post(f"{es.url}/_inference/{ELSER_EP}", json={}, headers=H, timeout=5)
    assert r.status_code == 400 and "[input]" in r.text
    r = requests.post(
        f"{es.url}/_inference/text_embedding/{ELSER_EP}", json={"input": "x"}, headers=H, timeout=5
    )
    assert r.status_code == 400 and "Incompatible task_type" in r.text
    # nothing deployed until the first inference call, which downloads the model
    stats = f"{es.url}/_ml/trained_models/.{ELSER}/_stats"
    assert requests.get(stats, headers=H, timeout=5).status_code == 404
    r = requests.post(
        f"{es.url}/_inference/{ELSER_EP}?timeout=10s", json={"input": "x"}, headers=H, timeout=15
    )
    assert r.status_code == 200 and "sparse_embedding" in r.json()
    dep = requests.get(stats, headers=H, timeout=5).json()["trained_model_stats"][0]
    assert dep["deployment_stats"]["deployment_id"] == ELSER_EP
    assert dep["deployment_stats"]["state"] == "started"
    assert {s for _, s in es.range_requests} == {206}
    # another architecture runs the cross-platform variant
    es.builtin.arch = "aarch64"
    r = requests.get(f"{es.url}/_inference/{ELSER_EP}", headers=H, timeout=5)
    assert r.json()["endpoints"][0]["service_settings"]["model_id"] == ".elser_model_2"


@pytest.mark.parametrize("stack", [("8.16.0", "8.16.0")], indirect=True)
def test_es_before_817_has_no_builtin_endpoint(stack: Stack) -> None:
    r = requests.get(f"{stack.es.url}/_inference/{ELSER_EP}", headers=H, timeout=5)
    assert r.status_code == 404


def test_es_builtin_deployment_failure_and_timeout(stack: Stack) -> None:
    es = stack.es
    es.model_repository = f"{stack.repo.url}/nowhere"
    r = requests.post(f"{es.url}/_inference/{ELSER_EP}", json={"input": "x"}, headers=H, timeout=15)
    assert r.status_code == 500 and "Failed to find package" in r.text
    es.model_repository = f"{stack.repo.url}/elser"
    r = requests.post(
        f"{es.url}/_inference/{ELSER_EP}?timeout=0s", json={"input": "x"}, headers=H, timeout=15
    )
    assert r.status_code == 408  # the deployment goes on
    until(lambda: es.models[f".{ELSER}"]["state"] == "started")


# -- the Kibana stand-in's knowledge-base and product-doc routes -----------------------


def test_kibana_kb_routes_need_internal_headers(stack: Stack) -> None:
    k = stack.kibana.url
    no_origin = {**H, "kbn-xsrf": "t"}
    r = requests.get(f"{k}{KBS}/status", headers=no_origin, timeout=5)
    assert r.status_code == 400 and "not available with the current configuration" in r.text
    r = requests.post(
        f"{k}{DOCS}/install",
        json={},
        headers={**H, "x-elastic-internal-origin": "Kibana"},
        timeout=5,
    )
    assert r.status_code == 400 and "kbn-xsrf" in r.text
    r = requests.get(f"{k}{KBS}/status", headers={"x-elastic-internal-origin": "Kibana"}, timeout=5)
    assert r.status_code == 401
    assert (
        requests.get(f"{k}{KBS}/status", headers=INTERNAL, timeout=5).json()["kbState"]
        == "NOT_INSTALLED"
    )


def test_kibana_kb_setup_version_gates(stack: Stack) -> None:
    k, kbs = stack.kibana, stack.kibana.kb
    r = requests.post(f"{k.url}{KBS}/setup", headers=INTERNAL, timeout=5)
    assert r.status_code == 400 and "inference_id" in r.text  # required from 9.0
    r = requests.post(f"{k.url}{KBS}/setup?inference_id=nope", headers=INTERNAL, timeout=5)
    assert r.status_code == 404 and "Inference endpoint not found [nope]" in r.text
    assert kbs.kb_state == "NOT_INSTALLED"
    k.version = "9.0.3"
    r = requests.post(f"{k.url}{KBS}/setup?inference_id={E5_EP}", headers=INTERNAL, timeout=5)
    assert r.status_code == 400 and "9.1" in r.text  # E5 from 9.1
    k.version = "8.19.0"
    r = requests.post(f"{k.url}{KBS}/setup?inference_id={ELSER_EP}", headers=INTERNAL, timeout=5)
    assert r.status_code == 400  # 8.x has no inference_id
    k.version = "9.5.0"
    r = requests.post(f"{k.url}{KBS}/setup?inference_id={ELSER_EP}", headers=INTERNAL, timeout=5)
    assert r.status_code == 200 and r.json()["nextInferenceId"] == ELSER_EP
    assert kbs.kb_state in ("DEPLOYING_MODEL", "READY")
    until(lambda: kbs.kb_state == "READY")
    st = requests.get(f"{k.url}{KBS}/status", headers=INTERNAL, timeout=5).json()
    assert st["currentInferenceId"] == ELSER_EP and st["concreteWriteIndex"]


def test_kibana_kb_setup_error_carries_elasticsearch_reason(stack: Stack) -> None:
    stack.es.model_repository = None  # the cluster would try the internet
    r = requests.post(
        f"{stack.kibana.url}{KBS}/setup?inference_id={ELSER_EP}", headers=INTERNAL, timeout=5
    )
    assert r.status_code == 200
    until(lambda: stack.kibana.kb.kb_state == "ERROR")
    assert "UnknownHostException" in str(stack.kibana.kb.kb_error)


def test_kibana_product_docs_install_reads_the_repository(stack: Stack) -> None:
    k, kbs = stack.kibana, stack.kibana.kb
    r = requests.post(f"{k.url}{DOCS}/install", json={"surprise": 1}, headers=INTERNAL, timeout=5)
    assert r.status_code == 400 and "surprise" in r.text  # 9.1+: the body is validated
    kbs.artifact_repository = None  # kibana.yml without the setting: Elastic's CDN
    r = requests.post(f"{k.url}{DOCS}/install", json={}, headers=INTERNAL, timeout=15)
    assert r.json()["installed"] is False and "ENOTFOUND" in r.json()["failureReason"]
    kbs.artifact_repository = f"{stack.repo.url}/product-docs"
    r = requests.post(
        f"{k.url}{DOCS}/install", json={"inferenceId": ELSER_EP}, headers=INTERNAL, timeout=15
    )
    assert r.json() == {"installed": True}
    st = requests.get(
        f"{k.url}{DOCS}/status?inferenceId={ELSER_EP}", headers=INTERNAL, timeout=5
    ).json()
    assert st["overall"] == "installed" and st["perProducts"]["kibana"]["version"] == "9.5"
    assert st["openApiStatus"]["status"] == "installed"  # 9.5 reads the OpenAPI specs too
    read = [u.rsplit("/", 1)[1] for u in kbs.downloads if u.endswith(".zip")]
    assert sorted(read) == [
        "kb-product-doc-elasticsearch-9.5.zip",
        "kb-product-doc-kibana-9.5.zip",
        "kb-product-doc-openapi-9.5.zip",
    ]  # its own version, ELSER's names, nothing else
    # the E5 variant reads the --<id> names only (and needs E5 deployed)
    kbs.downloads.clear()
    stack.repo.files.update(
        {
            f"elser/{n.split('/')[1]}": d
            for n, d in elser_files("multilingual-e5-small_linux-x86_64").items()
        }
    )
    r = requests.post(
        f"{k.url}{DOCS}/install", json={"inferenceId": E5_EP}, headers=INTERNAL, timeout=15
    )
    assert r.json() == {"installed": True}
    assert [u.rsplit("/", 1)[1] for u in kbs.downloads if u.endswith(".zip")] == [
        f"kb-product-doc-kibana-9.5{E5}.zip"
    ]
    r = requests.post(
        f"{k.url}{DOCS}/uninstall", json={"inferenceId": ELSER_EP}, headers=INTERNAL, timeout=5
    )
    assert r.json() == {"success": True}
    st = requests.get(
        f"{k.url}{DOCS}/status?inferenceId={ELSER_EP}", headers=INTERNAL, timeout=5
    ).json()
    assert st["overall"] == "uninstalled"


@pytest.mark.parametrize("stack", [("8.15.0", "8.15.0")], indirect=True)
def test_kibana_before_816_has_no_product_doc_routes(stack: Stack) -> None:
    r = requests.get(f"{stack.kibana.url}{DOCS}/status", headers=INTERNAL, timeout=5)
    assert r.status_code == 404


# -- airgap: the embedding model --------------------------------------------------------


def test_builtin_endpoint_on_817_is_deployed_never_created(stack: Stack) -> None:
    notes: list[str] = []
    seen: list[dict] = []
    rec = deploy(
        stack.es_opts(endpoint_id_given=True, endpoint_id="mine"),
        [ELSER],
        ELSER_EP,
        None,
        seen.append,
        notes,
    )
    assert rec is not None and rec["endpoint_id"] == ELSER_EP and rec["created_by_us"] is False
    assert (
        rec["action"] == "built-in"
        and rec["state"] == "started"
        and seen[0]["state"] == "deploying"
    )
    assert stack.es.endpoints == {}  # no second ELSER endpoint
    assert not [p for m, p, _ in stack.es.log if m in ("PUT", "DELETE")]
    assert stack.es.builtin.inference_calls == [ELSER_EP]
    assert "--elser-endpoint-id mine is not used" in notes[0]
    # deployed already: no inference call the second time
    deploy(stack.es_opts(), [ELSER], ELSER_EP, rec, seen.append, notes)
    assert stack.es.builtin.inference_calls == [ELSER_EP]


def test_builtin_endpoint_needs_the_variant_the_cluster_runs(stack: Stack) -> None:
    stack.es.builtin.arch = "aarch64"  # it runs .elser_model_2, the bundle carries the x86 one
    with pytest.raises(InstallError) as e:
        deploy(stack.es_opts(), [ELSER], ELSER_EP, None, lambda d: None, [])
    assert "runs .elser_model_2, which this bundle does not carry" in e.value.message
    assert "elser_model_2 in elastic.elser" in str(e.value.hint)
    notes: list[str] = []
    assert deploy(stack.es_opts(), [ELSER], E5_EP, None, lambda d: None, notes) is None
    assert "carries none for " + E5_EP in notes[0]


def test_builtin_deployment_failure_names_the_reason(stack: Stack) -> None:
    stack.es.model_repository = f"{stack.repo.url}/nowhere"
    with pytest.raises(InstallError) as e:
        deploy(stack.es_opts(timeout=10), [ELSER], ELSER_EP, None, lambda d: None, [])
    assert "could not deploy" in e.value.message and "Failed to find package" in e.value.message


@pytest.mark.parametrize("stack", [("8.16.0", "8.16.0")], indirect=True)
def test_before_817_airgap_creates_its_own_elser_endpoint(stack: Stack) -> None:
    rec = deploy(stack.es_opts(), [ELSER], ELSER_EP, None, lambda d: None, [])
    assert rec is not None and rec["endpoint_id"] == "airgap-elser" and rec["created_by_us"] is True
    assert "airgap-elser" in stack.es.endpoints


# -- airgap: the knowledge base ----------------------------------------------------------


def test_knowledge_base_set_up_then_kept(stack: Stack) -> None:
    deploy(stack.es_opts(), [ELSER], ELSER_EP, None, lambda d: None, [])
    api = stack.client()
    assert setup_kb(api, "", FAST, mine=None) == ("NOT_INSTALLED", "set up", None)
    assert stack.kibana.kb.kb_state == "READY"
    assert setup_kb(api, "", FAST, mine=ELSER_EP) == ("READY", "kept", None)
    setups = [p for m, p, _ in stack.kibana.log if "/kb/setup" in p]
    assert setups == [f"{KBS}/setup?inference_id={ELSER_EP}"]


def test_knowledge_base_on_the_sites_own_endpoint_is_left_alone(stack: Stack) -> None:
    kbs = stack.kibana.kb
    kbs.kb_state, kbs.kb_inference = "READY", "their-e5"
    kbs.entries.append({"id": "runbook", "text": "theirs"})
    api = stack.client()
    assert setup_kb(api, "", FAST, mine=None) == ("READY", "left", "their-e5")
    # set up by airgap on another endpoint, moved by the site since: left too
    assert setup_kb(api, "", FAST, mine=ELSER_EP) == ("READY", "left", "their-e5")
    assert kbs.kb_inference == "their-e5" and not [
        p for _, p, _ in stack.kibana.log if "setup" in p
    ]
    # one airgap set up there may move (Kibana re-indexes the entries, keeps them)
    assert setup_kb(api, "", FAST, mine="their-e5")[1] == "set up"
    assert kbs.kb_inference == ELSER_EP and kbs.entries == [{"id": "runbook", "text": "theirs"}]


def test_knowledge_base_error_and_stuck_state_are_named(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.es.model_repository = None
    with pytest.raises(InstallError) as e:
        setup_kb(stack.client(), "", FAST, mine=None)
    assert "state ERROR" in e.value.message and "UnknownHostException" in e.value.message
    assert "xpack.ml.model_repository" in str(e.value.hint)
    monkeypatch.setattr(stack.kibana.kb, "_warm_up", lambda *a: None)  # a model that never starts
    with pytest.raises(InstallError) as e:
        setup_kb(stack.client(), "", KbOptions(timeout=0.3, poll=0.05), mine=None)
    assert "was not READY after 0s: it stayed in state DEPLOYING_MODEL" in e.value.message
    assert "--kb-timeout" in str(e.value.hint)


# -- airgap: the product docs -----------------------------------------------------------


def test_product_docs_installed_from_the_repository_then_kept(stack: Stack) -> None:
    api = stack.client()
    assert install_docs(api, "", FAST, (9, 5, 0), "http://repo") == ("uninstalled", "installed")
    assert install_docs(api, "", FAST, (9, 5, 0), "http://repo") == ("installed", "kept")
    posts = [p for m, p, _ in stack.kibana.log if m == "POST"]
    assert posts == [f"{DOCS}/install"]


def test_product_docs_failure_names_the_repository_setting(stack: Stack) -> None:
    stack.kibana.kb.artifact_repository = None
    with pytest.raises(InstallError) as e:
        install_docs(stack.client(), "", FAST, (9, 5, 0), "http://h:8081/product-docs")
    assert "ENOTFOUND" in e.value.message
    assert "xpack.productDocBase.artifactRepositoryUrl: http://h:8081/product-docs" in str(
        e.value.hint
    )


def test_product_docs_polled_while_installing_and_stuck_named(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    kbs = stack.kibana.kb
    kbs.install_wait = 0  # Kibana answers before it is done: airgap polls the status
    assert install_docs(stack.client(), "", FAST, (9, 5, 0), "r") == ("uninstalled", "installed")
    monkeypatch.setattr(kbs, "_install_all", lambda *a: None)  # an install that never ends
    kbs.docs.clear()
    with pytest.raises(InstallError) as e:
        install_docs(stack.client(), "", KbOptions(timeout=0.3, poll=0.05), (9, 5, 0), "r")
    assert "Kibana's status stayed installing" in e.value.message


def test_uninstall_removes_only_docs_it_installed_and_never_the_knowledge_base(
    stack: Stack,
) -> None:
    access = ElasticAccess(kibana=Credentials("ApiKey", KEY, "t"))
    base = {"url": stack.kibana.url, "kibana_version": "9.5.0", "state": "installed"}
    ours = {**base, "inference_id": ELSER_EP, "created_by_us": True, "action": "installed"}
    theirs = {**base, "inference_id": E5_EP, "created_by_us": False, "action": "kept"}
    kbrec = {"url": stack.kibana.url, "inference_id": ELSER_EP, "kibana_version": "9.5.0",
             "action": "set up", "state": "READY"}  # fmt: skip
    rec = ElasticRecord.model_validate(
        {
            "product_docs": ours,
            "knowledge_base": kbrec,
            "earlier": [{"kind": "product_docs", **theirs}],
        }
    )
    assert ElasticRecord.model_validate(rec.to_json()) == rec  # the receipt round-trips
    for ident in (ELSER_EP, E5_EP):
        stack.kibana.kb.status_doc(ident)["overall"] = "installed"
    stack.kibana.kb.entries.append({"id": "x"})
    with pytest.raises(InstallError, match="needs Kibana credentials"):
        kb.check_access(rec.all_records(), ElasticAccess())
    out = kb.undo(rec.all_records(), access)
    assert out[0] == f"Kibana product docs for {ELSER_EP} ({stack.kibana.url})"
    assert "knowledge base" in out[1] and "stays" in out[1]
    assert stack.kibana.kb.docs[E5_EP]["overall"] == "installed"  # not ours: kept
    assert ELSER_EP not in stack.kibana.kb.docs and stack.kibana.kb.entries == [{"id": "x"}]
    # status checks them live: docs gone now, knowledge base never set up here
    live = kb.live(rec, access)
    assert live["product_docs"]["ok"] is False and live["knowledge_base"]["ok"] is False
    assert kb.live(rec, ElasticAccess())["product_docs"]["ok"] is None


# -- the plan: version gates, and what the bundle carries ------------------------------


def test_plan_follows_versions_and_the_bundle() -> None:
    docs = [
        "kb-product-doc-kibana-9.5.zip",
        "kb-product-doc-openapi-9.5.zip",
        f"kb-product-doc-kibana-9.5{E5}.zip",
    ]
    p = plan(KbOptions(), (9, 5, 0), (9, 5, 0), [ELSER], docs, True)
    assert (
        p.kb
        and p.docs == ("kb-product-doc-kibana-9.5.zip", "kb-product-doc-openapi-9.5.zip")
        and not p.notes
    )
    e5 = plan(
        KbOptions(inference_id=E5_EP),
        (9, 5, 0),
        (9, 5, 0),
        [ELSER, "multilingual-e5-small_linux-x86_64"],
        docs,
        True,
    )
    assert e5.kb and e5.docs == (f"kb-product-doc-kibana-9.5{E5}.zip",)
    old = plan(
        KbOptions(inference_id=E5_EP), (9, 0, 1), (9, 0, 1), ["multilingual-e5-small"], docs, True
    )
    assert not old.kb and not old.docs and len(old.notes) == 2
    assert "9.2" in plan(KbOptions(), (9, 2, 0), (9, 2, 0), [ELSER], docs, True).notes[0]
    assert not plan(KbOptions(), (8, 19, 0), (8, 19, 0), [ELSER], [], True).kb
    assert "--es-url" in plan(KbOptions(), (9, 5, 0), None, [ELSER], docs, True).notes[0]
    assert "no built-in" in plan(KbOptions(), (8, 16, 0), (8, 16, 0), [ELSER], docs, True).notes[0]
    assert "--no-serve" in plan(KbOptions(), (9, 5, 0), (9, 5, 0), [ELSER], docs, False).notes[0]
    assert plan(KbOptions(enabled=False), (9, 5, 0), (9, 5, 0), [ELSER], docs, True) == kb.KbPlan()
    assert plan(KbOptions(), (9, 5, 0), (9, 5, 0), [], [], True) == kb.KbPlan()  # nothing carried


# -- the manifest keys and file names --------------------------------------------------


def manifest(**docs: Any) -> dict:
    return {
        "apiVersion": "airgap/v1",
        "kind": "Bundle",
        "name": "kb",
        "version": 1,
        "model": {"path": "./w", "served_name": "m"},
        "images": {"vllm": "r/v:1", "nginx": "r/n:1"},
        "elastic": {
            "elser": [ELSER],
            "product_docs": {"version": "9.5", "products": ["kibana"], **docs},
        },
    }


def test_new_manifest_keys_name_the_artifacts_kibana_asks_for() -> None:
    m = parse_manifest(
        manifest(inference_ids=[ELSER_EP, E5_EP], openapi=True, security_labs="2026.08.15")
    )
    names = m.elastic.product_docs.artifact_names()  # type: ignore[union-attr]
    assert names == sorted([
        "kb-product-doc-kibana-9.5.zip", f"kb-product-doc-kibana-9.5{E5}.zip",
        "kb-product-doc-openapi-9.5.zip", f"kb-product-doc-openapi-9.5{E5}.zip",
        "security-labs-2026.08.15.zip", f"security-labs-2026.08.15{E5}.zip",
    ])  # fmt: skip
    assert all(DOC_FILE_RE.match(n) for n in names)
    # a manifest without them signs as before: no new key appears
    plain = parse_manifest(manifest())
    assert set(plain.to_signed_dict()["elastic"]["product_docs"]) == {"version", "products"}
    assert "e5" not in plain.to_signed_dict()["elastic"]
    e5 = parse_manifest({**manifest(), "elastic": {"e5": ["multilingual-e5-small_linux-x86_64"]}})
    assert e5.elastic and e5.elastic.model_ids() == ["multilingual-e5-small_linux-x86_64"]
    props = json_schema()["$defs"]["ProductDocs"]["properties"]
    assert {"inference_ids", "openapi", "security_labs"} <= set(props)
    assert "e5" in json_schema()["$defs"]["Elastic"]["properties"]


@pytest.mark.parametrize(
    ("docs", "error"),
    [
        ({"inference_ids": ["Bad Id"]}, "inference_ids"),
        ({"security_labs": "2026-08-15"}, "security_labs"),
        ({"openapi": "yes please"}, "openapi"),
    ],
)
def test_bad_new_keys_are_refused(docs: dict, error: str) -> None:
    with pytest.raises(ManifestError, match=error):
        parse_manifest(manifest(**docs))
    with pytest.raises(ManifestError, match="e5"):
        parse_manifest({**manifest(), "elastic": {"e5": [ELSER]}})


def test_file_names_follow_kibanas_suffix_rule() -> None:
    assert DOC_FILE_RE.match(f"kb-product-doc-security-9.5{E5}.zip")
    assert DOC_FILE_RE.match("security-labs-2026.08.15-120000.zip")
    for bad in (
        "kb-product-doc-kibana-9.5--.elser-2-elasticsearch.zip",  # ELSER is never suffixed
        "kb-product-doc-kibana-9.5--../x.zip",
        "security-labs-latest.zip",
        "kb-product-doc-kibana-9.zip",
    ):
        assert not DOC_FILE_RE.match(bad), bad


def test_build_carries_and_pins_the_new_artifacts_from_a_source_dir(tmp_path: Path) -> None:
    manifest = make_demo_sources(tmp_path / "src")
    elastic = tmp_path / "src" / "elastic"
    extra = [f"kb-product-doc-kibana-9.2{E5}.zip", "security-labs-2026.08.15.zip"]
    for name in extra:
        (elastic / name).write_bytes(ZIP)
    key = make_key(tmp_path / "keys")
    result = build_bundle(manifest, tmp_path / "a.tar", key)
    pin = result.index.lock.elastic
    assert isinstance(pin, PathElasticPin)
    assert pin.product_docs == ("kibana-9.2",) and pin.knowledge_base == tuple(sorted(extra))
    carried = {f.path for f in result.index.files if f.path.startswith("elastic/product-docs/")}
    assert carried == {
        f"elastic/product-docs/{n}" for n in [*extra, "kb-product-doc-kibana-9.2.zip"]
    }
    # a manifest that asks for a variant the directory lacks names the missing file
    doc = yaml.safe_load(manifest.read_text())
    doc["elastic"]["product_docs"] = {
        "version": "9.2", "products": ["kibana"], "inference_ids": [E5_EP], "openapi": True,
    }  # fmt: skip
    manifest.write_text(yaml.safe_dump(doc))
    with pytest.raises(SourceError, match=f"kb-product-doc-openapi-9.2{E5}.zip"):
        build_bundle(manifest, tmp_path / "b.tar", key)
    # a file that is no knowledge-base artifact is refused, naming the rule
    (elastic / "kb-product-doc-kibana-9.2--.elser-2-elasticsearch.zip").write_bytes(ZIP)
    del doc["elastic"]["product_docs"]
    manifest.write_text(yaml.safe_dump(doc))
    with pytest.raises(SourceError, match="--<inference id> for a non-ELSER endpoint"):
        build_bundle(manifest, tmp_path / "c.tar", key)


def test_fetch_resolves_downloads_and_locks_the_new_artifacts(tmp_path: Path) -> None:
    e5_model = "multilingual-e5-small_linux-x86_64"
    names = [
        "kb-product-doc-kibana-9.5.zip",
        f"kb-product-doc-kibana-9.5{E5}.zip",
        "kb-product-doc-openapi-9.5.zip",
        f"kb-product-doc-openapi-9.5{E5}.zip",
        "security-labs-2026.08.15.zip",
        f"security-labs-2026.08.15{E5}.zip",
    ]
    files = {**elser_files(), **elser_files(e5_model)}
    files.update({f"product-docs/{n}": ZIP + n.encode() for n in names})
    repo = Repository(files)
    with repo.running():
        doc = manifest(inference_ids=[ELSER_EP, E5_EP], openapi=True, security_labs="2026.08.15")
        doc["images"] = {"vllm": {"archive": "./v.tar"}, "nginx": {"archive": "./n.tar"}}
        doc["elastic"].update(
            e5=[e5_model],
            elser_url=f"{repo.url}/elser",
            product_docs_url=f"{repo.url}/product-docs",
        )
        m = parse_manifest(doc)
        fetcher = Fetcher(Cache(tmp_path / "cache"), 64 * 1024, FetchOptions())
        pins = fetcher.resolve(m)
        fetcher.fetch_all(fetcher.downloads(m, pins))
        payloads, _ = fetcher.payloads(m, pins)
    pinned = {f.name: f for f in pins.elastic_files}
    assert {n for n in pinned if n.startswith("product-docs/")} == {
        f"product-docs/{n}" for n in names
    }
    assert f"elser/{e5_model}.pt" in pinned and f"elser/{ELSER}.pt" in pinned
    assert {p.path for p in payloads} == {f"elastic/{n}" for n in pinned}
    one = pinned[f"product-docs/kb-product-doc-kibana-9.5{E5}.zip"]
    assert one.sha256 == hashlib.sha256(files[f"product-docs/{one.name.split('/')[1]}"]).hexdigest()
    # the lock names a changed upstream file, and reads back to the same pins
    again = Pins.model_validate(json.loads(json.dumps(pins.to_json())))
    assert again == pins
    moved = pins.model_copy(
        update={
            "elastic": pins.elastic.model_copy(
                update={"files": (one.model_copy(update={"sha256": "0" * 64}),)}
            )
        }  # type: ignore[union-attr]
    )
    assert any(one.name in line for line in drift(pins, moved))


def test_kb_inference_id_is_checked_before_anything_else(tmp_path: Path) -> None:
    bad = airgap("install", str(tmp_path / "x.tar"), "--kb-inference-id", "Bad Id")
    assert bad.returncode == 2
    assert b"'Bad Id' is not an Elasticsearch inference endpoint id" in bad.stderr
    good = airgap("install", str(tmp_path / "x.tar"), "--kb-inference-id", E5_EP)
    assert b"--kb-inference-id" not in good.stderr  # refused later, for the missing bundle
