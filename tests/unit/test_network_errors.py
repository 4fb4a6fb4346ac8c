"""A server that cannot be reached gives one clean error naming the URL and the fix, for
every HTTP client airgap uses (issue: hostile input, class 2, network failures):
huggingface_hub (httpx2 here), requests (downloads and registries) and docker-py.

The four failures are real, on loopback: a closed port (refused), a name under
``.invalid`` (DNS), a TLS server whose self-signed certificate the client does not
trust, and a server that accepts and never answers (timeout, with AIRGAP_NET_TIMEOUT=1).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bundler.errors import AirgapError, FetchError, InstallError
from bundler.fetch.cache import Cache
from bundler.fetch.http import Downloader, Expect
from bundler.fetch.huggingface import resolve_repo
from bundler.oci.engine import Runtime
from bundler.oci.ref import parse_ref
from bundler.oci.registry import RegistryClient

KINDS = ["refused", "dns", "tls", "timeout"]
EXPECTED = {
    "refused": "connection refused",
    "dns": "does not resolve (DNS lookup failed)",
    "tls": "TLS failed: certificate not trusted (self-signed certificate)",
    "timeout": "no answer within 1 s",
}


def _serve(sock: socket.socket, handle: object) -> None:
    def run() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()  # type: ignore[arg-type]

    threading.Thread(target=run, daemon=True).start()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """host:port (or host) for each failure."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now

    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    _serve(silent, held.append)  # accepts, never answers

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    tls = socket.create_server(("127.0.0.1", 0))

    def tls_handle(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1024)
        except (OSError, ssl.SSLError):
            conn.close()

    _serve(tls, tls_handle)
    yield {
        "refused": f"127.0.0.1:{refused_port}",
        "dns": "airgap-test.invalid:8080",
        "tls": f"127.0.0.1:{tls.getsockname()[1]}",
        "timeout": f"127.0.0.1:{silent.getsockname()[1]}",
    }
    for s in (silent, tls, *held):
        s.close()


@pytest.fixture(autouse=True)
def _short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRGAP_NET_TIMEOUT", "1")
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def scheme(kind: str) -> str:
    return "https" if kind == "tls" else "http"


def check(e: AirgapError, kind: str, url: str, hint_words: list[str]) -> None:
    text = str(e)
    assert url in text, text
    assert EXPECTED[kind] in text, text
    assert "\n" not in text and "Traceback" not in text
    for word in hint_words:
        assert word in e.hint, e.hint


@pytest.mark.parametrize("kind", KINDS)
def test_the_hub_client_names_the_endpoint_and_the_fix(
    servers: dict[str, str], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"{scheme(kind)}://{servers[kind]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        resolve_repo("org/model", "main", [], [])
    assert time.monotonic() - started < 10
    hint = {"tls": ["SSL_CERT_FILE"], "timeout": ["AIRGAP_NET_TIMEOUT", "HF_ENDPOINT"]}
    check(e.value, kind, endpoint, hint.get(kind, ["HF_ENDPOINT", "HTTPS_PROXY", "NO_PROXY"]))
    assert "HF_TOKEN" in e.value.hint and e.value.exit_code == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_downloader_names_the_url_and_the_fix(
    tmp_path: Path, servers: dict[str, str], kind: str
) -> None:
    url = f"{scheme(kind)}://{servers[kind]}/elser/model.metadata.json"
    cache = Cache(tmp_path / "cache")
    downloader = Downloader(cache, 65536, retries=1, backoff=0)
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        downloader.fetch(url, Expect(), key="k", what="ELSER metadata")
    assert time.monotonic() - started < 10
    hint = {"tls": ["REQUESTS_CA_BUNDLE"], "timeout": ["AIRGAP_NET_TIMEOUT"]}
    check(e.value, kind, url, hint.get(kind, ["elastic.elser_url", "HTTPS_PROXY"]))
    if kind in ("dns", "tls"):
        assert "retr" not in str(e.value)  # no retry can change these: not retried
    else:
        assert "after 1 retry" in str(e.value)
    cache.close()


class _AsksForAToken(BaseHTTPRequestHandler):
    realm = ""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="{self.realm}",service="r"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("kind", KINDS)
def test_the_registry_client_names_the_url_and_the_fix(servers: dict[str, str], kind: str) -> None:
    if kind == "tls":
        # a loopback registry speaks plain HTTP; its token service is where TLS fails
        _AsksForAToken.realm = f"https://{servers['tls']}/token"
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AsksForAToken)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        registry, url = f"127.0.0.1:{httpd.server_port}", _AsksForAToken.realm
    else:
        registry = servers[kind]
        url = f"{'https' if kind == 'dns' else 'http'}://{registry}/v2/demo/app/manifests/1"
    client = RegistryClient(registry)
    try:
        with pytest.raises(FetchError) as e:
            client.resolve(parse_ref(f"{registry}/demo/app:1"), "linux/amd64")
    finally:
        if kind == "tls":
            httpd.shutdown()
    hint = {"tls": ["--registry-ca"], "timeout": ["AIRGAP_NET_TIMEOUT"]}
    check(e.value, kind, url, hint.get(kind, ["image reference", "HTTPS_PROXY"]))


@pytest.mark.parametrize("kind", KINDS)
def test_the_engine_client_names_the_engine_and_the_fix(servers: dict[str, str], kind: str) -> None:
    url = f"{'https' if kind == 'tls' else 'tcp'}://{servers[kind]}"
    started = time.monotonic()
    with pytest.raises(InstallError) as e:
        Runtime("docker", url)
    assert time.monotonic() - started < 10
    hint = {"tls": ["unix socket"], "timeout": ["AIRGAP_NET_TIMEOUT"]}
    check(e.value, kind, url, hint.get(kind, ["--runtime-url", "DOCKER_HOST"]))


def test_a_bad_timeout_setting_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from bundler.env import net_timeout
    from bundler.errors import UsageError

    for bad in ("0", "-1", "soon", "1e9"):
        monkeypatch.setenv("AIRGAP_NET_TIMEOUT", bad)
        with pytest.raises(UsageError, match="AIRGAP_NET_TIMEOUT"):
            net_timeout()
    monkeypatch.setenv("AIRGAP_NET_TIMEOUT", "2.5")
    assert net_timeout() == 2.5
