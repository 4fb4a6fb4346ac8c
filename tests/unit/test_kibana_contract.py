"""The Kibana client against the Kibana stand-in: version-specific keys, ids, spaces,
retries and refusals. The stand-in's own rules are exercised first (negative controls),
so that the client's passing cannot come from a stand-in that accepts anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from bundler.errors import InstallError
from bundler.install.elastic.api import Credentials, load_credentials
from bundler.install.elastic.connector import connector_config, connector_id, parse_version
from bundler.install.elastic.kibana import KibanaOptions, register, unregister
from bundler.manifest import parse_manifest
from devkit.standins.kibana import KibanaStandIn

KEY = "a2V5LWlkOnNlY3JldA=="
API_URL = "https://llm.example.internal:8443/v1/chat/completions"
MANIFEST = parse_manifest(
    {
        "apiVersion": "airgap/v1",
        "kind": "Bundle",
        "name": "demo",
        "version": 1,
        "model": {"path": "./w", "served_name": "tiny"},
        "images": {"vllm": "example.org/vllm:1", "nginx": "example.org/nginx:1"},
        "serve": {"max_model_len": 32768},
        "connector": {"name": "Tiny", "native_function_calling": True},
    }
)


@pytest.fixture
def kibana(request: pytest.FixtureRequest) -> Iterator[KibanaStandIn]:
    version = getattr(request, "param", "9.2.0")
    k = KibanaStandIn(
        version, api_keys={KEY}, users={"elastic": "changeme"}, spaces=("default", "ops")
    )
    with k.running():
        yield k


def opts(k: KibanaStandIn, **kw: object) -> KibanaOptions:
    base: dict[str, object] = {
        "url": k.url,
        "credentials": Credentials("ApiKey", KEY, "test"),
        "test": False,
        "attempts": 3,
    }
    base.update(kw)
    return KibanaOptions(**base)  # type: ignore[arg-type]


def post(k: KibanaStandIn, path: str, body: dict, headers: dict[str, str]) -> requests.Response:
    return requests.post(k.url + path, json=body, headers=headers, timeout=5)


def test_standin_enforces_xsrf_auth_and_strict_keys(kibana: KibanaStandIn) -> None:
    auth = {"Authorization": f"ApiKey {KEY}"}
    body = {
        "name": "x",
        "connector_type_id": ".gen-ai",
        "config": {"apiProvider": "Other", "apiUrl": API_URL, "defaultModel": "m"},
        "secrets": {"apiKey": "t"},
    }
    assert requests.get(kibana.url + "/api/status", timeout=5).status_code == 401
    r = post(kibana, "/api/actions/connector/abc", body, auth)
    assert r.status_code == 400 and "kbn-xsrf" in r.json()["message"]
    bad = {**body, "config": {**body["config"], "maxTokens": 5}}
    r = post(kibana, "/api/actions/connector/abc", bad, {**auth, "kbn-xsrf": "x"})
    assert r.status_code == 400
    assert "[2.maxTokens]: definition for this key is missing" in r.json()["message"]
    r = requests.put(
        kibana.url + "/api/actions/connector/abc",
        json=body,
        headers={**auth, "kbn-xsrf": "x"},
        timeout=5,
    )
    assert r.status_code == 404  # PUT never creates
    assert post(kibana, "/api/actions/connector/abc", body, {**auth, "kbn-xsrf": "x"}).ok
    r = requests.put(
        kibana.url + "/api/actions/connector/abc",
        json=body,
        headers={**auth, "kbn-xsrf": "x"},
        timeout=5,
    )
    assert r.status_code == 400 and "connector_type_id" in r.json()["message"]


@pytest.mark.parametrize(
    ("version", "provider", "extra"),
    [
        ("8.15.2", "OpenAI", set()),
        ("8.18.1", "Other", set()),
        ("8.19.0", "Other", {"verificationMode"}),
        ("9.0.3", "Other", set()),
        ("9.1.0", "Other", {"verificationMode"}),
        (
            "9.2.0",
            "Other",
            {"verificationMode", "contextWindowLength", "enableNativeFunctionCalling"},
        ),
    ],
)
def test_each_kibana_version_gets_only_keys_it_accepts(
    version: str, provider: str, extra: set[str], tmp_path: Path
) -> None:
    k = KibanaStandIn(version, api_keys={KEY})
    with k.running():
        reg = register(opts(k), MANIFEST, "demo", API_URL, "tok" * 12, "PEM", tmp_path)
        stored = k.connectors["default"][reg.connector_id]
        assert stored["config"]["apiProvider"] == provider
        assert set(stored["config"]) == {"apiProvider", "apiUrl", "defaultModel"} | extra
        assert stored["config"]["apiUrl"] == API_URL
        assert stored["config"]["defaultModel"] == "tiny"
        assert stored["secrets"] == {"apiKey": "tok" * 12}
        if "contextWindowLength" in extra:
            assert stored["config"]["contextWindowLength"] == 32768
        # negative control: the newest key set is refused by an older stand-in
        newest = connector_config(parse_version("9.2.0"), MANIFEST, API_URL, "full")
        if set(newest) - ({"apiProvider", "apiUrl", "defaultModel"} | extra):
            r = requests.put(
                f"{k.url}/api/actions/connector/{reg.connector_id}",
                json={"name": "x", "config": newest, "secrets": {"apiKey": "t"}},
                headers={"Authorization": f"ApiKey {KEY}", "kbn-xsrf": "1"},
                timeout=5,
            )
            why = (
                "expected value to equal [OpenAI]"  # no "Other" provider before 8.16
                if provider == "OpenAI"
                else "definition for this key is missing"
            )
            assert r.status_code == 400 and why in r.json()["message"]


def test_rerun_updates_the_same_connector(kibana: KibanaStandIn, tmp_path: Path) -> None:
    first = register(opts(kibana), MANIFEST, "demo", API_URL, "a" * 40, "PEM", tmp_path)
    assert first.created
    for token in ("b" * 40, "c" * 40):
        again = register(
            opts(kibana), MANIFEST, "demo", API_URL, token, "PEM", tmp_path, first.record()
        )
        assert again.connector_id == first.connector_id
        assert again.created  # still ours: the first run created it
    assert list(kibana.connectors["default"]) == [first.connector_id]
    assert kibana.connectors["default"][first.connector_id]["secrets"]["apiKey"] == "c" * 40
    methods = [m for m, p, _ in kibana.log if "/connector/" in p]
    assert methods.count("POST") == 1 and methods.count("PUT") == 2
    # ids are stable per name and space, and UUID-shaped (Kibana requires that)
    assert connector_id("demo", "default") == first.connector_id
    assert connector_id("demo", "ops") != first.connector_id
    assert len(first.connector_id) == 36 and first.connector_id[14] == "4"


def test_spaces_and_basic_auth(kibana: KibanaStandIn, tmp_path: Path) -> None:
    basic = load_credentials("Kibana", "X", None, None, _file(tmp_path / "c", "elastic:changeme"))
    reg = register(
        opts(kibana, credentials=basic, space="ops"),
        MANIFEST,
        "demo",
        API_URL,
        "t" * 40,
        "P",
        tmp_path,
    )
    assert reg.space == "ops"
    assert reg.connector_id in kibana.connectors["ops"]
    assert not kibana.connectors["default"]
    assert any(p.startswith("/s/ops/api/actions/connector/") for _, p, _ in kibana.log)
    with pytest.raises(InstallError) as e:
        register(opts(kibana, space="nope"), MANIFEST, "demo", API_URL, "t" * 40, "P", tmp_path)
    assert "404" in e.value.message and "--kibana-space" in e.value.hint


def test_server_errors_are_retried_and_refusals_explained(
    kibana: KibanaStandIn, tmp_path: Path
) -> None:
    kibana.fail_next = [500, 503]
    reg = register(opts(kibana), MANIFEST, "demo", API_URL, "t" * 40, "P", tmp_path)
    assert reg.connector_id in kibana.connectors["default"]
    assert [s for _, _, s in kibana.log[:3]] == [500, 503, 200]
    wrong = Credentials("ApiKey", "d3Jvbmc=", "AIRGAP_KIBANA_API_KEY")
    with pytest.raises(InstallError) as e:
        register(opts(kibana, credentials=wrong), MANIFEST, "demo", API_URL, "t", "P", tmp_path)
    assert "401" in e.value.message and "unable to authenticate" in e.value.message
    assert "AIRGAP_KIBANA_API_KEY" in e.value.hint
    kibana.fail_next = [503] * 5
    with pytest.raises(InstallError) as e:
        register(opts(kibana, attempts=2), MANIFEST, "demo", API_URL, "t", "P", tmp_path)
    assert "after 2 attempts" in e.value.message and "503" in e.value.message


def test_refused_connection_is_retried_then_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    o = KibanaOptions(
        url=f"http://127.0.0.1:{port}", credentials=Credentials("ApiKey", KEY, "t"), attempts=2
    )
    with pytest.raises(InstallError) as e:
        register(o, MANIFEST, "demo", API_URL, "t", "P", tmp_path)
    assert f"127.0.0.1:{port}" in e.value.message and "ConnectionError" in e.value.message


def test_unregister_deletes_only_its_own(kibana: KibanaStandIn, tmp_path: Path) -> None:
    reg = register(opts(kibana), MANIFEST, "demo", API_URL, "t" * 40, "P", tmp_path)
    other = register(opts(kibana), MANIFEST, "other-bundle", API_URL, "t" * 40, "P", tmp_path)
    assert unregister(reg.record(), opts(kibana))
    assert list(kibana.connectors["default"]) == [other.connector_id]
    assert unregister({**reg.record(), "created_by_us": False}, opts(kibana)) is None


def test_preconfigured_snippet(tmp_path: Path) -> None:
    o = KibanaOptions(mode="preconfigured", version="9.1.2")
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    reg = register(o, MANIFEST, "demo", API_URL, "s3cret" * 7, pem, tmp_path / "secrets")
    path = Path(str(reg.snippet))
    assert path.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(path.read_text())
    c = doc["xpack.actions.preconfigured"]["airgap-demo"]
    assert c["actionTypeId"] == ".gen-ai" and c["secrets"] == {"apiKey": "s3cret" * 7}
    assert c["config"] == {
        "apiProvider": "Other",
        "apiUrl": API_URL,
        "defaultModel": "tiny",
        "verificationMode": "full",
    }
    host = doc["xpack.actions.customHostSettings"][0]
    assert host["url"] == "https://llm.example.internal:8443"
    assert host["ssl"]["certificateAuthoritiesData"] == pem


def test_credential_files(tmp_path: Path) -> None:
    key = _file(tmp_path / "k", KEY)
    c = load_credentials("Kibana", "AIRGAP_KIBANA_API_KEY", "from-env", key, None)
    assert c is not None and c.header() == f"ApiKey {KEY}" and KEY not in repr(c)
    env = load_credentials("Kibana", "AIRGAP_KIBANA_API_KEY", "from-env", None, None)
    assert env is not None and env.source == "AIRGAP_KIBANA_API_KEY"
    from bundler.errors import UsageError

    with pytest.raises(UsageError, match="user:password"):
        load_credentials("Kibana", "X", None, None, _file(tmp_path / "bad", "no-colon"))
    assert json.dumps({"k": repr(c)})  # the repr is what a log would show


def _file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_bad_inputs_are_refused_before_any_request(tmp_path: Path) -> None:
    from bundler.errors import UsageError
    from bundler.install.elastic.api import ApiClient

    # a Windows line end is trimmed; a control character inside is refused, unquoted
    trimmed = load_credentials("Kibana", "AIRGAP_KIBANA_API_KEY", "c2VjcmV0S2V5\r", None, None)
    assert trimmed is not None and trimmed.header() == "ApiKey c2VjcmV0S2V5"
    with pytest.raises(UsageError) as e:
        load_credentials("Kibana", "AIRGAP_KIBANA_API_KEY", "c2Vjcm\rV0S2V5", None, None)
    assert "AIRGAP_KIBANA_API_KEY" in e.value.message and "c2Vjcm" not in e.value.message
    with pytest.raises(UsageError) as e:
        ApiClient("Kibana", "https://elastic:changeme@kibana:5601", None)
    assert "changeme" not in e.value.message and "credentials-file" in e.value.hint
    for space in ("..", "Ops", "a/b", ""):
        o = KibanaOptions(url="http://127.0.0.1:9", credentials=Credentials("ApiKey", KEY, "t"))
        with pytest.raises(UsageError, match="space"):
            register(
                KibanaOptions(**{**o.__dict__, "space": space or "x y"}),
                MANIFEST,
                "demo",
                API_URL,
                "t",
                "P",
                tmp_path,
            )
    with pytest.raises(UsageError, match="not a Kibana version"):
        parse_version("nine.two")
