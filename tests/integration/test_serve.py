"""Serving: real Nginx (Debian's binary in an image made here) in front of an
OpenAI-compatible stand-in for vLLM that takes vLLM's flags, in the real Docker engine."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bundler.install.serveconf import vllm_command
from bundler.manifest import load_manifest
from devkit import services
from devkit.demo_data import make_demo_sources
from devkit.vllm_stub import parse as stub_parse

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("real")
    return make_demo_sources(src, real_images=True)


@pytest.fixture
def served(
    tmp_path: Path, real_sources: Path, key: Keys, docker_engine: services.Service
) -> Iterator[dict[str, object]]:
    bundle = tmp_path / "b.tar"
    build_bundle(real_sources, bundle, key)
    prefix = tmp_path / "opt"
    port, internal = services.free_port(), services.free_port()
    ctx: dict[str, object] = {
        "bundle": bundle,
        "prefix": prefix,
        "port": port,
        "internal": internal,
        "artifacts": services.free_port(),
        "engine": docker_engine,
    }
    yield ctx
    airgap("uninstall", "--prefix", str(prefix), "--runtime-url", docker_engine.url)


def install(
    ctx: dict[str, object], key: Keys, *extra: str, bundle: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    engine = ctx["engine"]
    assert isinstance(engine, services.Service)
    return airgap(
        "install",
        str(bundle or ctx["bundle"]),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(ctx["prefix"]),
        "--no-gpu",
        "--runtime-url",
        engine.url,
        "--port",
        str(ctx["port"]),
        "--internal-port",
        str(ctx["internal"]),
        "--artifacts-port",
        str(ctx["artifacts"]),
        "--server-name",
        "llm.example.internal",
        "--health-timeout",
        "60",
        "--json",
        *extra,
    )


def token_of(ctx: dict[str, object]) -> str:
    r = airgap(
        "status", "--prefix", str(ctx["prefix"]), "--show-token", "--runtime-url", ctx["engine"].url
    )  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


def test_endpoint_is_tls_and_bearer_protected_and_streams(served: dict, key: Keys) -> None:
    r = install(served, key)
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    serving = result["serving"]
    assert serving["url"] == f"https://llm.example.internal:{served['port']}/v1/chat/completions"
    ca = serving["ca_cert"]
    base = f"https://127.0.0.1:{served['port']}"
    token = token_of(served)
    assert len(token) >= 32
    # secrets are files only root can read; nothing secret in the receipt
    secrets = served["prefix"] / "secrets"
    (auth,) = secrets.glob("nginx/demo/*.conf")  # one, for the containers that serve
    (tls_copy,) = secrets.glob("nginx/demo/*.tls/server.key")
    own = [str(f.relative_to(secrets)) for f in (auth, tls_copy)]
    for name in ("bearer-token", "vllm-api-key", *own, "tls/server.key", "tls/issuer.key"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    receipt = (served["prefix"] / "state/receipt.json").read_text()
    assert token not in receipt

    assert requests.get(f"{base}/v1/models", verify=ca, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * 43}
    assert (
        requests.get(f"{base}/v1/models", headers=wrong, verify=ca, timeout=10).status_code == 401
    )
    good = {"Authorization": f"Bearer {token}"}
    r2 = requests.get(f"{base}/v1/models", headers=good, verify=ca, timeout=10)
    assert r2.status_code == 200 and [m["id"] for m in r2.json()["data"]] == ["tiny"]
    assert requests.get(f"{base}/health", verify=ca, timeout=10).status_code == 200
    # the certificate is for the server name, signed by the CA Kibana is told to trust
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base}/health", timeout=10)  # not trusted without the CA
    # plain HTTP is refused by the TLS listener, never proxied
    plain = requests.get(f"http://127.0.0.1:{served['port']}/v1/models", timeout=5)
    assert plain.status_code == 400 and "HTTPS" in plain.text

    # a streamed answer arrives in pieces, not buffered until the end
    arrivals = []
    with requests.post(
        f"{base}/v1/chat/completions",
        headers=good,
        verify=ca,
        stream=True,
        timeout=30,
        json={"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] > 0.6  # the stand-in sends a word every 0.2 s

    # the access log has requests but never the token
    logs = subprocess.run(
        ["docker", "-H", served["engine"].url, "logs", "airgap-demo-nginx"],
        capture_output=True,
        text=True,
    ).stdout
    assert "/v1/models" in logs and token not in logs and "Bearer" not in logs
    # vLLM got the internal key, not the bearer token; the model is mounted read-only
    inspect = json.loads(
        subprocess.run(
            ["docker", "-H", served["engine"].url, "inspect", "airgap-demo-vllm"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]
    args = inspect["Config"]["Cmd"]  # what the installer passed after the entrypoint
    assert args[:4] == ["--model", "/models/tiny", "--served-model-name", "tiny"]
    assert "--max-model-len" in args and token not in " ".join(args)
    env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_API_KEY"] != token
    assert inspect["HostConfig"]["IpcMode"] == "host"
    assert inspect["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert any(m["Destination"] == "/models/tiny" and not m["RW"] for m in inspect["Mounts"])
    status = airgap(
        "status", "--prefix", str(served["prefix"]), "--runtime-url", served["engine"].url, "--json"
    )
    assert status.returncode == 0, status.stdout.decode()
    assert json.loads(status.stdout)["releases"][0]["serving"]["ok"] is True


def test_reinstall_keeps_the_token_and_rotation_replaces_it(served: dict, key: Keys) -> None:
    assert install(served, key).returncode == 0
    first = token_of(served)
    r = install(served, key)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "unchanged"
    assert token_of(served) == first
    r = install(served, key, "--rotate-token")
    assert r.returncode == 0, r.stderr.decode()
    second = token_of(served)
    assert second != first
    ca = json.loads(r.stdout)["serving"]["ca_cert"]
    base = f"https://127.0.0.1:{served['port']}/v1/models"
    assert (
        requests.get(
            base, headers={"Authorization": f"Bearer {first}"}, verify=ca, timeout=10
        ).status_code
        == 401
    )
    assert (
        requests.get(
            base, headers={"Authorization": f"Bearer {second}"}, verify=ca, timeout=10
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    "vllm_arg, expect",
    [
        ("--stub-never-healthy", "was not healthy after"),
        ("--no-such-vllm-flag", "unrecognized arguments: --no-such-vllm-flag"),
    ],
)
def test_a_server_that_fails_rolls_back_with_its_log(
    served: dict, key: Keys, real_sources: Path, tmp_path: Path, vllm_arg: str, expect: str
) -> None:
    assert install(served, key).returncode == 0
    token = token_of(served)
    tls_files = {p.name: p.read_bytes() for p in (served["prefix"] / "secrets/tls").iterdir()}
    text = real_sources.read_text()
    v2_manifest = real_sources.with_name("v2.yaml")
    v2_manifest.write_text(re.sub(r"^version: \d+$", "version: 2", text, flags=re.M))
    v2 = tmp_path / "v2.tar"
    build_bundle(v2_manifest, v2, key)
    # with --rotate-token and another name: a failed start must change neither
    r = install(
        served,
        key,
        "--vllm-arg",
        vllm_arg,
        "--health-timeout",
        "5",
        "--rotate-token",
        "--server-name",
        "renamed.example.internal",
        bundle=v2,
    )
    assert r.returncode == 1
    err = r.stderr.decode()
    assert expect in err
    assert "stub: serving" in err or "usage:" in err  # the container's own log lines
    # the previous release still serves, with the same token
    prefix = served["prefix"]
    assert os.readlink(prefix / "current") == "releases/demo-1"
    assert not (prefix / "releases/demo-2").exists()
    ca = prefix / "secrets/tls/ca.crt"
    r2 = requests.get(
        f"https://127.0.0.1:{served['port']}/v1/models",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(ca),
        timeout=10,
    )
    assert r2.status_code == 200
    assert token_of(served) == token
    # the new names meant a new CA: it went with the failed start (the old one is on record)
    assert {p.name: p.read_bytes() for p in ca.parent.iterdir()} == tls_files
    import ssl

    from cryptography import x509

    pem = ssl.get_server_certificate(("127.0.0.1", served["port"]))
    names = (
        x509.load_pem_x509_certificate(pem.encode())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
    )
    assert "llm.example.internal" in names and "renamed.example.internal" not in names


def test_uninstall_removes_the_containers(served: dict, key: Keys) -> None:
    assert install(served, key).returncode == 0
    r = airgap(
        "uninstall", "--prefix", str(served["prefix"]), "--runtime-url", served["engine"].url
    )
    assert r.returncode == 0, r.stderr.decode()
    names = subprocess.run(
        ["docker", "-H", served["engine"].url, "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert not [n for n in names if n.startswith("airgap-demo")]
    assert not served["prefix"].exists()


@pytest.mark.parametrize("manifest", sorted((REPO / "manifests").glob("*.yaml")))
def test_shipped_manifests_make_command_lines_a_vllm_parser_accepts(manifest: Path) -> None:
    """Checked here against the stand-in's parser (vLLM's flags and rules it enforces);
    the real vLLM parser is the opt-in real-vLLM tier's job."""
    m = load_manifest(manifest)
    args = vllm_command(m, f"/models/{m.model.served_name}", "127.0.0.1", 8000)
    parsed = stub_parse(args)
    assert parsed.served_model_name == [m.model.served_name]
    if m.serve.max_model_len:
        assert parsed.max_model_len == m.serve.max_model_len


def test_rollback_serves_the_earlier_release(
    served: dict, key: Keys, real_sources: Path, tmp_path: Path
) -> None:
    assert install(served, key).returncode == 0
    token = token_of(served)
    v2_manifest = real_sources.with_name("v2-rollback.yaml")
    v2_manifest.write_text(
        re.sub(r"^version: \d+$", "version: 2", real_sources.read_text(), flags=re.M)
    )
    v2 = tmp_path / "v2.tar"
    build_bundle(v2_manifest, v2, key)
    assert install(served, key, bundle=v2).returncode == 0
    engine = served["engine"]

    def release_of(role: str) -> str:
        out = subprocess.run(
            [
                "docker",
                "-H",
                engine.url,
                "inspect",
                "--format",
                '{{index .Config.Labels "airgap.release"}} {{.State.Running}}',
                f"airgap-demo-{role}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out[1] == "true"
        return out[0]

    assert release_of("vllm") == release_of("nginx") == "demo-2"
    r = airgap("rollback", "--prefix", str(served["prefix"]), "--runtime-url", engine.url)
    assert r.returncode == 0, r.stderr.decode()
    assert b"current is now demo-1" in r.stdout and b"proven healthy" in r.stdout
    assert os.readlink(served["prefix"] / "current") == "releases/demo-1"
    assert release_of("vllm") == release_of("nginx") == "demo-1"
    mounts = subprocess.run(
        [
            "docker",
            "-H",
            engine.url,
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Source}} {{end}}",
            "airgap-demo-vllm",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "releases/demo-1/models/tiny" in mounts
    ca = served["prefix"] / "secrets/tls/ca.crt"
    answer = requests.post(
        f"https://127.0.0.1:{served['port']}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
        verify=str(ca),
        timeout=30,
    )
    assert answer.status_code == 200
    status = json.loads(
        airgap(
            "status", "--prefix", str(served["prefix"]), "--runtime-url", engine.url, "--json"
        ).stdout
    )
    assert status["ok"] and status["current"] == "demo-1"


def test_a_foreign_container_name_stops_nothing(
    served: dict, key: Keys, real_sources: Path, tmp_path: Path
) -> None:
    """Both names are checked before either container is stopped: a refused start must
    not leave the running Nginx stopped and renamed."""
    assert install(served, key).returncode == 0
    engine = served["engine"]
    docker = ["docker", "-H", engine.url]
    subprocess.run([*docker, "rm", "-f", "airgap-demo-vllm"], check=True, capture_output=True)
    image = subprocess.run(
        [*docker, "inspect", "--format", "{{.Image}}", "airgap-demo-nginx"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [*docker, "create", "--name", "airgap-demo-vllm", "--entrypoint", "/usr/sbin/nginx", image],
        check=True,
        capture_output=True,
    )
    try:
        v2_manifest = real_sources.with_name("v2-foreign.yaml")
        v2_manifest.write_text(
            re.sub(r"^version: \d+$", "version: 2", real_sources.read_text(), flags=re.M)
        )
        v2 = tmp_path / "v2.tar"
        build_bundle(v2_manifest, v2, key)
        r = install(served, key, bundle=v2)
        assert r.returncode == 1 and b"was not created by airgap" in r.stderr
        state = subprocess.run(
            [*docker, "inspect", "--format", "{{.State.Running}} {{.Name}}", "airgap-demo-nginx"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert state == ["true", "/airgap-demo-nginx"]
        assert os.readlink(served["prefix"] / "current") == "releases/demo-1"
    finally:
        subprocess.run([*docker, "rm", "-f", "airgap-demo-vllm"], capture_output=True)
