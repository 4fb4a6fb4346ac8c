"""The connected side against real peers: olah (a Hugging Face mirror), the CNCF
registry, nginx serving Elastic-like artifacts, and a real HTTP server for faults."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.errors import FetchError
from bundler.fetch.cache import Cache
from bundler.fetch.http import Downloader, Expect
from devkit import services
from devkit.demo_data import DEMO_CARD, Image, sha

from conftest import Keys, airgap

pytestmark = pytest.mark.integration
CHUNK = 64 * 1024


# -- peers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.Service, Path]]:
    mirrors = tmp_path_factory.mktemp("mirrors")
    with services.olah(mirrors) as svc:
        yield svc, mirrors


def push(
    image_dir: Path,
    registry: services.Service,
    ref: str,
    *,
    all_: bool = False,
    creds: str | None = None,
) -> None:
    cmd = ["skopeo", "copy", "--dest-tls-verify=false", "--preserve-digests"]
    if all_:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", creds]
    cmd += [f"oci:{image_dir}", f"docker://{registry.url}/{ref}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def multi_arch_layout(path: Path, images: dict[str, Image]) -> Path:
    """One OCI layout whose index lists an image per platform."""
    descs = []
    for arch, img in images.items():
        for name, data in img.oci_files().items():
            if name.startswith("blobs/"):
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(data)
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + sha(img.manifest),
                "size": len(img.manifest),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descs,
        }
    ).encode()
    (path / "blobs/sha256" / sha(index)).write_bytes(index)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "digest": "sha256:" + sha(index),
                        "size": len(index),
                    }
                ],
            }
        )
    )
    return path


@pytest.fixture
def world(
    tmp_path: Path, hub: tuple[services.Service, Path], oci_registry: services.Service
) -> dict[str, object]:
    """A model repo on the hub, images in the registry, Elastic files behind nginx."""
    svc, mirrors = hub
    tag = "t" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]
    name = f"tiny-{tag}"
    repo = mirrors / "models" / "demo" / name
    weights = {
        "config.json": b'{"model_type": "llama"}\n',
        "tokenizer.json": b'{"v": 1}\n',
        "model.safetensors": os.urandom(200_000),
        "README.md": DEMO_CARD.encode(),
    }
    commit = services.git_commit_repo(repo, weights, {"model.safetensors"}, "init")
    shared = {"bin/busybox": os.urandom(30_000)}
    vllm = Image([shared, {"app/server.py": b"print(1)\n"}], compress=True)
    nginx_amd = Image([shared, {"etc/nginx.conf": b"events {}\n"}])
    nginx_arm = Image([{"etc/nginx.conf": b"arm\n"}], arch="arm64")
    push(vllm.oci_dir(tmp_path / "vllm-oci"), oci_registry, f"demo/vllm:{tag}")
    push(
        multi_arch_layout(tmp_path / "nginx-oci", {"amd64": nginx_amd, "arm64": nginx_arm}),
        oci_registry,
        f"demo/nginx:{tag}",
        all_=True,
    )
    docroot = tmp_path / "www"
    (docroot / "elser").mkdir(parents=True)
    pt = os.urandom(100_000)
    (docroot / "elser/elser_model_2_linux-x86_64.pt").write_bytes(pt)
    (docroot / "elser/elser_model_2_linux-x86_64.vocab.json").write_text('{"vocabulary": []}')
    (docroot / "elser/elser_model_2_linux-x86_64.metadata.json").write_text(
        json.dumps(
            {"packaged_model_id": "elser_model_2_linux-x86_64", "sha256": sha(pt), "size": len(pt)}
        )
    )
    (docroot / "docs").mkdir()
    (docroot / "docs/kb-product-doc-kibana-9.2.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    manifest = tmp_path / "m.yaml"
    return {
        "hub": svc,
        "repo": repo,
        "commit": commit,
        "weights": weights,
        "manifest": manifest,
        "vllm": vllm,
        "nginx": nginx_amd,
        "docroot": docroot,
        "tag": tag,
        "name": name,
        "registry": oci_registry,
    }


def write_manifest(world: dict[str, object], elastic_url: str | None) -> Path:
    reg = world["registry"].url  # type: ignore[attr-defined]
    doc: dict[str, object] = {
        "apiVersion": "airgap/v1",
        "kind": "Bundle",
        "name": "remote",
        "version": 1,
        "model": {
            "repo": f"demo/{world['name']}",
            "revision": "main",
            "served_name": "tiny",
            "exclude": ["README.md"],
            # without its card the licence is unknown: the builder accepts that here
            "license_accepted": "unknown",
        },
        "images": {
            "vllm": f"{reg}/demo/vllm:{world['tag']}",
            "nginx": f"{reg}/demo/nginx:{world['tag']}",
        },
    }
    if elastic_url:
        doc["elastic"] = {
            "elser": ["elser_model_2_linux-x86_64"],
            "product_docs": {"version": "9.2", "products": ["kibana"]},
            "elser_url": f"{elastic_url}/elser",
            "product_docs_url": f"{elastic_url}/docs",
        }
    path = world["manifest"]
    assert isinstance(path, Path)
    path.write_text(yaml.safe_dump(doc))
    return path


def build(
    manifest: Path, out: Path, key: Keys, hub: services.Service, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return airgap(
        "build",
        str(manifest),
        "-o",
        str(out),
        "--key",
        str(key.private),
        "--chunk-size",
        "64K",
        *extra,
        env={"HF_ENDPOINT": hub.url},
    )


# -- tests -------------------------------------------------------------------------------


def test_build_from_hub_registry_and_elastic_mirror(tmp_path: Path, world: dict, key: Keys) -> None:
    hub = world["hub"]
    with services.nginx_static(world["docroot"]) as www:
        manifest = write_manifest(world, www.url)
        r = airgap(
            "build",
            str(manifest),
            "-o",
            str(tmp_path / "x.tar"),
            "--key",
            str(key.private),
            "--dry-run",
            "--json",
            env={"HF_ENDPOINT": hub.url},
        )
        assert r.returncode == 0, r.stderr.decode()
        dry = json.loads(r.stdout)
        assert not (tmp_path / "x.tar").exists()
        assert {d["what"] for d in dry["to_fetch"]} >= {f"demo/{world['name']}/model.safetensors"}
        assert dry["bytes"] >= 200_000

        out = tmp_path / "b.tar"
        r = build(manifest, out, key, hub)
        assert r.returncode == 0, r.stderr.decode()
    lock = json.loads((tmp_path / "m.lock.json").read_text())
    assert lock["model"]["commit"] == world["commit"]
    assert {f["path"] for f in lock["model"]["files"]} == {
        "config.json",
        "tokenizer.json",
        "model.safetensors",
    }
    lfs = next(f for f in lock["model"]["files"] if f["path"] == "model.safetensors")
    assert lfs["sha256"] == sha(world["weights"]["model.safetensors"])
    assert lock["images"]["nginx"]["platform"] == "linux/amd64"
    assert lock["images"]["nginx"]["manifest_digest"] == "sha256:" + sha(world["nginx"].manifest)

    staging = tmp_path / "stage"
    from bundler.bundle.extract import StagingExtractor

    result = read_bundle(str(out), TrustPolicy(key.trust()), StagingExtractor(staging))
    for name, data in world["weights"].items():
        if name != "README.md":
            assert (staging / "models/tiny" / name).read_bytes() == data
    assert not (staging / "models/tiny/README.md").exists()
    assert (staging / "elastic/elser/elser_model_2_linux-x86_64.pt").stat().st_size == 100_000
    assert (staging / "elastic/product-docs/kb-product-doc-kibana-9.2.zip").exists()
    vllm = next(i for i in result.index.images if i.role == "vllm")
    assert vllm.config_digest == world["vllm"].config_digest
    # the busybox layer is shared by both images (same bytes in both) and stored once
    blobs = [f.path for f in result.index.files if f.path.startswith("images/")]
    assert len(blobs) == len(set(blobs))
    shared_layer = "images/blobs/sha256/" + sha(world["nginx"].blobs[0])
    assert shared_layer in blobs
    assert result.index.lock.commit == world["commit"]

    # a second build downloads nothing and is byte-identical
    again = tmp_path / "again.tar"
    env = {"HF_ENDPOINT": hub.url, "SOURCE_DATE_EPOCH": "1790000000"}
    with services.nginx_static(world["docroot"]) as www2:
        write_manifest(world, www2.url)
        json.loads((tmp_path / "m.lock.json").read_text())
        r1 = airgap(
            "build",
            str(manifest),
            "-o",
            str(out),
            "--key",
            str(key.private),
            "--chunk-size",
            "64K",
            "--update-lock",
            env=env,
        )
        r2 = airgap(
            "build",
            str(manifest),
            "-o",
            str(again),
            "--key",
            str(key.private),
            "--chunk-size",
            "64K",
            env=env,
        )
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr.decode()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()


def test_moved_branch_is_caught_by_the_lock(tmp_path: Path, world: dict, key: Keys) -> None:
    hub = world["hub"]
    manifest = write_manifest(world, None)
    assert build(manifest, tmp_path / "a.tar", key, hub).returncode == 0
    new_commit = services.git_commit_repo(
        world["repo"], {"config.json": b'{"v": 2}\n'}, set(), "move main"
    )
    r = build(manifest, tmp_path / "b.tar", key, hub)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"now resolves to {new_commit}" in err and "--update-lock" in err
    assert not (tmp_path / "b.tar").exists()
    r = build(manifest, tmp_path / "b.tar", key, hub, "--update-lock")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads((tmp_path / "m.lock.json").read_text())["model"]["commit"] == new_commit


def test_served_bytes_that_differ_from_the_lfs_oid_are_refused_and_not_cached(
    tmp_path: Path, world: dict, key: Keys
) -> None:
    hub = world["hub"]
    good = os.urandom(150_000)
    services.git_commit_repo(
        world["repo"],
        {"model.safetensors": good},
        {"model.safetensors"},
        "bad object",
        lfs_override={"model.safetensors": os.urandom(150_000)},
    )
    manifest = write_manifest(world, None)
    cache = tmp_path / "cache"
    r = build(manifest, tmp_path / "b.tar", key, hub, "--cache-dir", str(cache))
    assert r.returncode == 1
    assert b"served bytes are not the published file" in r.stderr
    assert b"model.safetensors" in r.stderr
    assert not (cache / "blobs/sha256" / sha(good)).exists()
    assert not any(p.suffix == ".part" and p.stat().st_size for p in (cache / "partial").iterdir())
    assert not (tmp_path / "b.tar").exists()


def test_wrong_elser_sha256_in_metadata_is_refused(tmp_path: Path, world: dict, key: Keys) -> None:
    meta = world["docroot"] / "elser/elser_model_2_linux-x86_64.metadata.json"
    doc = json.loads(meta.read_text())
    doc["sha256"] = "0" * 64
    meta.write_text(json.dumps(doc))
    with services.nginx_static(world["docroot"]) as www:
        manifest = write_manifest(world, www.url)
        r = build(manifest, tmp_path / "b.tar", key, world["hub"])
    assert r.returncode == 1
    assert b"elser_model_2_linux-x86_64.pt" in r.stderr and b"sha256" in r.stderr


def test_registry_with_basic_auth_uses_docker_config(tmp_path: Path, key: Keys) -> None:
    htpasswd = tmp_path / "htpasswd"
    subprocess.run(
        ["htpasswd", "-Bbc", str(htpasswd), "ops", "s3cret"], check=True, capture_output=True
    )
    img = Image([{"x": os.urandom(5000)}])
    with services.registry(htpasswd) as reg:
        push(img.oci_dir(tmp_path / "oci"), reg, "private/app:1", creds="ops:s3cret")
        from bundler.oci.ref import parse_ref
        from bundler.oci.registry import RegistryClient

        ref = parse_ref(f"{reg.url}/private/app:1")
        with pytest.raises(FetchError, match="registry needs a login|not authorized"):
            RegistryClient(ref.registry).resolve(ref, "linux/amd64")
        import base64

        config = Path(os.environ["HOME"]) / ".docker" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            json.dumps({"auths": {reg.url: {"auth": base64.b64encode(b"ops:s3cret").decode()}}})
        )
        resolved = RegistryClient(ref.registry).resolve(ref, "linux/amd64")
        assert resolved.config_digest == img.config_digest
        assert resolved.manifest_digest == "sha256:" + sha(img.manifest)


# -- faults, against a real HTTP server that misbehaves on purpose -----------------------


class _Flaky(http.server.BaseHTTPRequestHandler):
    data = b""
    plan: ClassVar[list[str]] = []  # per request: "cut", "500", "404", "401", "ok"
    served: ClassVar[list[int]] = []

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        action = self.plan.pop(0) if self.plan else "ok"
        if action in ("500", "404", "401"):
            self.send_response(int(action))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
            )
        else:
            self.send_response(200)
        body = self.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if action == "cut":
            body = body[: len(body) // 2]
        self.wfile.write(body)
        self.served.append(len(body))
        if action == "cut":
            self.wfile.flush()
            self.connection.shutdown(2)


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("H", (_Flaky,), {"data": os.urandom(3_000_000), "plan": [], "served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/blob", handler
    finally:
        server.shutdown()
        server.server_close()


def test_cut_connection_resumes_and_fetches_only_the_rest(tmp_path: Path, flaky) -> None:  # type: ignore[no-untyped-def]
    url, handler = flaky
    handler.plan[:] = ["cut", "ok"]
    cache = Cache(tmp_path / "cache")
    d = Downloader(cache, CHUNK, backoff=0.01)
    expect = Expect(size=len(handler.data), sha256=hashlib.sha256(handler.data).hexdigest())
    got = d.fetch(url, expect, key=expect.sha256 or "", what="blob")
    assert got.path.read_bytes() == handler.data
    # the second request resumed where the kept bytes ended (a Range request), and the
    # bytes kept over both requests add up to the file exactly: nothing fetched twice
    first, second = handler.served
    assert first == len(handler.data) // 2 and second < len(handler.data)
    assert got.downloaded == len(handler.data)
    again = d.fetch(url, expect, key=expect.sha256 or "", what="blob")
    assert again.downloaded == 0 and len(handler.served) == 2  # cached: nothing fetched


def test_interrupted_run_is_resumed_by_the_next_run(tmp_path: Path, flaky) -> None:  # type: ignore[no-untyped-def]
    url, handler = flaky
    handler.plan[:] = ["cut"] + ["500"] * 10
    cache = Cache(tmp_path / "cache")
    expect = Expect(size=len(handler.data), sha256=hashlib.sha256(handler.data).hexdigest())
    with pytest.raises(FetchError, match="giving up after 2 retries"):
        Downloader(cache, CHUNK, retries=2, backoff=0.01).fetch(url, expect, key="k", what="blob")
    assert not cache.has(expect.sha256 or "")
    handler.plan[:] = []
    kept = (cache.partial("k")).stat().st_size
    assert 0 < kept <= len(handler.data) // 2
    got = Downloader(cache, CHUNK, backoff=0.01).fetch(url, expect, key="k", what="blob")
    assert got.downloaded == len(handler.data) - kept
    assert got.path.read_bytes() == handler.data


@pytest.mark.parametrize("status, message", [("404", "HTTP 404"), ("401", "not authorized")])
def test_client_errors_are_clear_and_not_retried(
    tmp_path: Path,
    flaky,
    status: str,  # type: ignore[no-untyped-def]
    message: str,
) -> None:
    url, handler = flaky
    handler.plan[:] = [status, "ok"]
    with pytest.raises(FetchError, match=message) as e:
        Downloader(Cache(tmp_path / "c"), CHUNK, backoff=0.01).fetch(
            url, Expect(size=3_000_000), key="k", what="thing"
        )
    assert url in str(e.value) and e.value.hint
    assert handler.plan == ["ok"]  # no second request


def test_5xx_is_retried(tmp_path: Path, flaky) -> None:  # type: ignore[no-untyped-def]
    url, handler = flaky
    handler.plan[:] = ["500", "500", "ok"]
    got = Downloader(Cache(tmp_path / "c"), CHUNK, backoff=0.01).fetch(
        url, Expect(size=len(handler.data)), key="k", what="blob"
    )
    assert got.path.read_bytes() == handler.data


def test_images_from_a_local_docker_engine(
    tmp_path: Path, key: Keys, demo_manifest: Path, docker_engine: services.Service
) -> None:
    img = Image([{"opt/app": os.urandom(20_000)}], compress=True)
    archive = img.docker_archive(tmp_path / "app.tar", "example.org/app:7")
    subprocess.run(
        ["docker", "-H", docker_engine.url, "load", "-i", str(archive)],
        check=True,
        capture_output=True,
    )
    doc = yaml.safe_load(demo_manifest.read_text())
    doc["images"]["vllm"] = "example.org/app:7"
    demo_manifest.write_text(yaml.safe_dump(doc))
    out = tmp_path / "b.tar"
    env = {"DOCKER_HOST": docker_engine.url}
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(out),
        "--key",
        str(key.private),
        "--images-from",
        "docker",
        "--cache-dir",
        str(tmp_path / "cache"),
        env=env,
    )
    assert r.returncode == 0, r.stderr.decode()
    result = read_bundle(str(out), TrustPolicy(key.trust()))
    vllm = next(i for i in result.index.images if i.role == "vllm")
    assert vllm.config_digest == img.config_digest and vllm.ref == "example.org/app:7"
    assert (result.index.lock.images or {})["vllm"].source == "docker"
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(out),
        "--key",
        str(key.private),
        "--images-from",
        "docker",
        env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    assert r.returncode == 1 and b"nonexistent.sock" in r.stderr


def test_the_card_comes_along_and_states_the_licence(
    tmp_path: Path, world: dict, key: Keys
) -> None:
    """`include` that does not name README.md still fetches the card: the licence is there."""
    manifest = write_manifest(world, None)
    doc = yaml.safe_load(manifest.read_text())
    doc["model"] = {
        "repo": doc["model"]["repo"],
        "served_name": "tiny",
        "include": ["*.safetensors"],
    }
    manifest.write_text(yaml.safe_dump(doc))
    out = tmp_path / "b.tar"
    r = build(manifest, out, key, world["hub"], "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["license"]["spdx"] == "Apache-2.0"
    lock = json.loads((tmp_path / "m.lock.json").read_text())
    assert {f["path"] for f in lock["model"]["files"]} == {"model.safetensors", "README.md"}
    index = read_bundle(str(out), TrustPolicy(key.trust())).index
    assert index.lock.license is not None and not index.lock.license.needs_acceptance
    with tarfile.open(out) as tf:
        sbom = json.load(tf.extractfile("sbom/cyclonedx.json"))  # type: ignore[arg-type]
    (model,) = [c for c in sbom["components"] if c["bom-ref"] == "model"]
    assert model["purl"] == f"pkg:huggingface/demo/{world['name']}@{world['commit']}"
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
