from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from bundler.lock import lock_path
from bundler.oci.ref import is_loopback, parse_ref
from bundler.oci.registry import docker_config_auth
from bundler.pins import Pins, drift


@pytest.mark.parametrize(
    "ref, registry, repo, tag, digest",
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
        ("docker.io/vllm/vllm-openai:v0.9.1", "docker.io", "vllm/vllm-openai", "v0.9.1", None),
        ("127.0.0.1:5000/demo/app:1", "127.0.0.1:5000", "demo/app", "1", None),
        ("localhost/x@sha256:" + "a" * 64, "localhost", "x", None, "sha256:" + "a" * 64),
        (
            "ghcr.io/org/img:tag@sha256:" + "b" * 64,
            "ghcr.io",
            "org/img",
            "tag",
            "sha256:" + "b" * 64,
        ),
    ],
)
def test_parse_ref(ref: str, registry: str, repo: str, tag: str | None, digest: str | None) -> None:
    r = parse_ref(ref)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repo, tag, digest)


def test_only_loopback_is_plain_http_by_default() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5")
    assert not is_loopback("registry.internal:5000") and not is_loopback("10.0.0.1")


def test_docker_config_basic_auth(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps({"auths": {"reg.local:5000": {"auth": base64.b64encode(b"ops:pa:ss").decode()}}})
    )
    assert docker_config_auth("reg.local:5000", cfg) == ("ops", "pa:ss")
    assert docker_config_auth("other", cfg) is None
    assert docker_config_auth("x", tmp_path / "missing.json") is None


def test_drift_names_every_change() -> None:
    old = Pins.model_validate(
        {
            "model": {
                "source": "huggingface",
                "repo": "a/b",
                "revision": "main",
                "commit": "1",
                "files": [{"path": "w", "size": 1, "blob_id": "b" * 40}],
            },
            "images": {
                "vllm": {
                    "source": "registry",
                    "ref": "r:1",
                    "manifest_digest": "sha256:" + "1" * 64,
                    "media_type": "m",
                    "config_digest": "sha256:" + "c" * 64,
                    "config_size": 1,
                    "platform": "linux/amd64",
                    "layers": [],
                }
            },
            "elastic": {
                "files": [
                    {"name": "elser/e.pt", "url": "http://u/e.pt", "size": 1, "sha256": "a" * 64}
                ]
            },
        }
    )
    assert drift(old, old) == []
    new = json.loads(json.dumps(old.to_json()))
    new["model"]["commit"] = "2"
    new["model"]["files"][0]["size"] = 2
    new["images"]["vllm"]["manifest_digest"] = "sha256:" + "2" * 64
    new["elastic"]["files"][0]["sha256"] = "b" * 64
    lines = drift(old, Pins.model_validate(new))
    assert any("now resolves to 2" in line for line in lines)
    assert any(line.startswith("model file w: changed") for line in lines)
    assert any(line.startswith("images.vllm") for line in lines)
    assert any(line.startswith("elastic elser/e.pt") for line in lines)


def test_lock_sits_beside_the_manifest() -> None:
    assert lock_path(Path("manifests/demo-tiny.yaml")) == Path("manifests/demo-tiny.lock.json")
