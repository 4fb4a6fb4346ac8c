"""A bundle signed by a trusted key can still be hostile (a compromised or careless
builder): it must not reach outside what it installs. Real Docker engine, real registry,
real Nginx and the vLLM stand-in."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bundler.bundle.reader import read_head
from bundler.manifest import Manifest
from bundler.names import image_tag
from devkit import services
from devkit.demo_data import Image, make_demo_sources

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration
ORG_NAME = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"


def docker(svc: services.Service, *args: str, check: bool = True) -> str:
    r = subprocess.run(
        ["docker", "-H", svc.url, *args], capture_output=True, text=True, check=False
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout.strip() if r.returncode == 0 else ""


def image_ids(svc: services.Service) -> set[str]:
    return set(docker(svc, "image", "ls", "-a", "-q", "--no-trunc").split())


def containers(svc: services.Service) -> list[str]:
    return docker(svc, "ps", "-a", "--format", "{{.Names}}").split()


def install(
    bundle: Path, key: Keys, prefix: Path, svc: services.Service, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return airgap(
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--no-gpu",
        "--runtime-url",
        svc.url,
        *extra,
    )


@pytest.fixture
def engine(docker_engine: services.Service) -> Iterator[services.Service]:
    before = image_ids(docker_engine)
    yield docker_engine
    for image_id in sorted(image_ids(docker_engine) - before):
        docker(docker_engine, "rmi", "-f", image_id, check=False)


@pytest.fixture(scope="module")
def runnable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_sources(tmp_path_factory.mktemp("runnable"), real_images=True)


def test_signed_served_name_with_dotdot_is_refused_before_anything_loads(
    tmp_path: Path,
    runnable: Path,
    key: Keys,
    engine: services.Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack: the engine bind-mounted (and created) a host path named by the signed
    served_name. Now the preflight refuses it: exit 3, nothing loaded or created."""
    prefix = tmp_path / "opt"
    # from releases/demo-1/models/: up to the prefix, then out of it
    escape = "x/../../../../../created-by-engine"
    signed = Manifest.to_signed_dict

    def hostile(self: Manifest) -> dict[str, Any]:
        doc = signed(self)
        doc["model"]["served_name"] = escape
        return doc

    monkeypatch.setattr(Manifest, "to_signed_dict", hostile)
    bundle = tmp_path / "hostile.tar"
    build_bundle(runnable, bundle, key)
    assert read_head(str(bundle)).index.manifest["model"]["served_name"] == escape
    images, names = image_ids(engine), containers(engine)
    port = str(services.free_port())
    r = install(bundle, key, prefix, engine, "--port", port, "--artifacts-port", port)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert "signed index" in err and "served name" in err and "Traceback" not in err
    assert not (tmp_path / "created-by-engine").exists()
    assert image_ids(engine) == images and containers(engine) == names
    assert [p.name for p in prefix.iterdir()] == [".airgap.lock"]


def test_a_signed_ref_never_moves_or_removes_an_operator_tag(
    tmp_path: Path, demo_manifest: Path, key: Keys, engine: services.Service
) -> None:
    victim = Image([{"victim": b"the operator's own image"}])
    victim.docker_archive(tmp_path / "victim.tar", "victim/app:1")
    docker(engine, "load", "-i", str(tmp_path / "victim.tar"))
    victim_id = docker(engine, "image", "inspect", "--format", "{{.Id}}", "victim/app:1")
    # the bundle's nginx image claims the operator's tag
    Image([{"bin/x": b"bundle image"}]).docker_archive(
        demo_manifest.parent / "nginx.tar", "victim/app:1"
    )
    bundle = tmp_path / "b.tar"
    index = build_bundle(demo_manifest, bundle, key).index
    nginx = next(i for i in index.images if i.role == "nginx")
    assert nginx.ref == "victim/app:1"
    prefix = tmp_path / "opt"

    def tag_of(ref: str) -> str:
        return docker(engine, "image", "inspect", "--format", "{{.Id}}", ref, check=False)

    r = install(bundle, key, prefix, engine, "--no-serve", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert tag_of("victim/app:1") == victim_id
    assert tag_of(image_tag("demo", 1, "nginx")) == nginx.config_digest
    receipt = json.loads((prefix / "state/receipt.json").read_text())
    recorded = {i["role"]: i["tags"] for i in receipt["releases"]["demo-1"]["images"]}
    assert recorded == {role: [image_tag("demo", 1, role)] for role in ("nginx", "vllm")}
    r = airgap("uninstall", "--prefix", str(prefix), "--runtime-url", engine.url)
    assert r.returncode == 0, r.stderr.decode()
    assert tag_of("victim/app:1") == victim_id
    assert tag_of(nginx.config_digest) == "" and tag_of(image_tag("demo", 1, "nginx")) == ""

    # asked to tag the source refs too: refused before any payload, unless replacing
    before = image_ids(engine)
    r = install(bundle, key, prefix, engine, "--no-serve", "--tag-source-refs")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "victim/app:1" in err and "--replace-tags" in err
    assert image_ids(engine) == before and tag_of("victim/app:1") == victim_id
    assert not (prefix / "releases" / "demo-1").exists()
    r = install(bundle, key, prefix, engine, "--no-serve", "--tag-source-refs", "--replace-tags")
    assert r.returncode == 0, r.stderr.decode()
    assert tag_of("victim/app:1") == nginx.config_digest
    r = airgap("uninstall", "--prefix", str(prefix), "--runtime-url", engine.url)
    assert r.returncode == 0, r.stderr.decode()
    # the tag it moved was install's to remove; the operator's image itself stays
    assert tag_of("victim/app:1") == "" and tag_of(victim_id) == victim_id


def test_registry_push_stays_in_the_bundles_namespace(
    tmp_path: Path, bundle: Path, key: Keys, oci_registry: services.Service
) -> None:
    target = f"{oci_registry.url}/site"
    index = read_head(str(bundle)).index
    nginx = next(i for i in index.images if i.role == "nginx")
    # the site already has another image under the name the bundle's nginx would get
    other = Image([{"other": b"site image"}]).oci_archive(tmp_path / "other.tar")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"oci-archive:{other}",
            f"docker://{target}/demo/nginx:1",
        ],
        capture_output=True,
        check=True,
    )

    site = services.registry_digest(f"{target}/demo/nginx:1")
    assert site and site != nginx.manifest_digest
    args = ["install", str(bundle), "--trusted-key", str(key.public), "--registry", target]
    r = airgap(*args, "--prefix", str(tmp_path / "opt"))
    assert r.returncode == 1, r.stderr.decode()
    assert f"{target}/demo/nginx:1" in r.stderr.decode()
    assert services.registry_digest(f"{target}/demo/nginx:1") == site
    assert services.registry_digest(f"{target}/demo/vllm:1") is None  # nothing pushed
    r = airgap(*args, "--prefix", str(tmp_path / "opt"), "--replace-tags", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert services.registry_digest(f"{target}/demo/nginx:1") == nginx.manifest_digest
    for img in index.images:  # never under a name the index chose
        assert services.registry_digest(f"{target}/{img.ref.split('/', 1)[1]}") is None


def test_org_slash_name_served_names_still_build_and_serve(
    tmp_path: Path, runnable: Path, key: Keys, engine: services.Service
) -> None:
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", str(runnable.parent), str(src)], check=True)
    manifest = src / runnable.name
    text = manifest.read_text()
    assert "served_name: tiny" in text
    manifest.write_text(text.replace("served_name: tiny", f"served_name: {ORG_NAME}"))
    bundle = tmp_path / "b.tar"
    build_bundle(manifest, bundle, key)
    prefix = tmp_path / "opt"
    port = services.free_port()
    r = install(
        bundle,
        key,
        prefix,
        engine,
        "--port",
        str(port),
        "--internal-port",
        str(services.free_port()),
        "--artifacts-port",
        str(services.free_port()),
        "--health-timeout",
        "60",
        "--json",
    )
    try:
        assert r.returncode == 0, r.stderr.decode()
        serving = json.loads(r.stdout)["serving"]
        assert serving["model"] == ORG_NAME
        token = (prefix / "secrets" / "bearer-token").read_text().strip()
        models = requests.get(
            f"https://127.0.0.1:{port}/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            verify=serving["ca_cert"],
            timeout=10,
        )
        assert [m["id"] for m in models.json()["data"]] == [ORG_NAME]
        mounts = json.loads(docker(engine, "inspect", "airgap-demo-vllm"))[0]["Mounts"]
        (model,) = [m for m in mounts if m["Destination"].startswith("/models/")]
        assert model["Source"] == str(prefix.resolve() / "releases/demo-1/models" / ORG_NAME)
        assert model["Destination"].startswith(
            "/models/mistralai-mistral-small-3-2-24b-instruct-2506-"
        )
        assert not model["RW"]
    finally:
        airgap("uninstall", "--prefix", str(prefix), "--runtime-url", engine.url)


def serve_args(port: int) -> list[str]:
    return [
        "--port",
        str(port),
        "--internal-port",
        str(services.free_port()),
        "--artifacts-port",
        str(services.free_port()),
        "--health-timeout",
        "60",
    ]


def healthy(prefix: Path, svc: services.Service) -> bool:
    r = airgap("status", "--prefix", str(prefix), "--runtime-url", svc.url)
    return r.returncode == 0


def test_an_install_under_another_prefix_never_takes_over_serving_containers(
    tmp_path: Path, runnable: Path, key: Keys, engine: services.Service
) -> None:
    """Same bundle name, two prefixes: the second may not stop the first's containers
    (and a no-serve install that shares images uninstalls without breaking the other)."""
    bundle = tmp_path / "b.tar"
    build_bundle(runnable, bundle, key)
    prod, test, side = tmp_path / "prod", tmp_path / "test", tmp_path / "side"
    try:
        r = install(bundle, key, prod, engine, *serve_args(services.free_port()))
        assert r.returncode == 0, r.stderr.decode()
        ids = docker(engine, "ps", "-q", "--no-trunc").split()
        r = install(bundle, key, test, engine, *serve_args(services.free_port()))
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert "serves the airgap install under" in err and str(prod.resolve()) in err
        assert docker(engine, "ps", "-q", "--no-trunc").split() == ids
        assert healthy(prod, engine)
        # images only, under a third prefix; its uninstall keeps what prod runs on
        r = install(bundle, key, side, engine, "--no-serve")
        assert r.returncode == 0, r.stderr.decode()
        r = airgap("uninstall", "--prefix", str(side), "--runtime-url", engine.url)
        assert r.returncode == 0, r.stderr.decode()
        assert healthy(prod, engine)
    finally:
        for p in (prod, test, side):
            airgap("uninstall", "--prefix", str(p), "--runtime-url", engine.url)


def test_registry_uninstall_keeps_a_tag_the_site_added(
    tmp_path: Path, bundle: Path, key: Keys, oci_registry: services.Service
) -> None:
    target = f"{oci_registry.url}/keep"
    prefix = tmp_path / "opt"
    r = airgap(
        "install", str(bundle), "--trusted-key", str(key.public), "--registry", target,
        "--prefix", str(prefix),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    subprocess.run(
        [
            "skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
            "--preserve-digests", f"docker://{target}/demo/nginx:1", f"docker://{target}/demo/nginx:prod",
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    r = airgap("uninstall", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr.decode()

    assert (
        services.registry_digest(f"{target}/demo/nginx:prod") is not None
    )  # the site's tag survives
    assert (
        services.registry_digest(f"{target}/demo/vllm:1") is None
    )  # what only install named is gone
