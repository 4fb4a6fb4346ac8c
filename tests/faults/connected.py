"""The connected side's world: a model on a real Hugging Face mirror (olah), two images
in a real registry (docker-registry), ELSER and product docs behind real Nginx, each
reached through a :class:`~faults.faultproxy.FaultProxy` (transparent until a test
plans a fault). And local demo sources for the build faults."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from devkit import services
from devkit.demo_data import Image, make_demo_sources, sha
from faults.faultproxy import FaultProxy
from faults.hostkit import HostState, airgap, hash_rows, tree

from conftest import Keys

MODEL_BYTES = 3 * 1024 * 1024 + 4321  # more than one 1 MiB read: a kill can land mid-file
SDE = "1790000000"  # SOURCE_DATE_EPOCH: every build of the same sources is byte-identical


def push(image_dir: Path, registry: str, ref: str) -> None:
    r = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"oci:{image_dir}",
            f"docker://{registry}/{ref}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr


@dataclass
class World:
    root: Path
    hub: FaultProxy
    registry: FaultProxy
    files: FaultProxy
    manifest: Path
    vllm_layer: str  # the largest layer's digest
    demo: Path  # local sources for the build faults

    @property
    def proxies(self) -> tuple[FaultProxy, ...]:
        return (self.hub, self.registry, self.files)

    @property
    def lock(self) -> Path:
        return self.manifest.with_name("m.lock.json")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HF_ENDPOINT": self.hub.url,
            "AIRGAP_FETCH_BACKOFF": "0.05",
            "AIRGAP_FETCH_TIMEOUT": "3",
            **extra,
        }

    def fetch(
        self, cache: Path, point: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return airgap(
            "fetch",
            str(self.manifest),
            "--cache-dir",
            str(cache),
            env=self.env(**env),
            point=point,
        )

    def fresh(self, cache: Path) -> None:
        """No cache and no lock: the next fetch starts from nothing."""
        for p in self.proxies:
            p.clear()
        shutil.rmtree(cache, ignore_errors=True)
        for p in self.manifest.parent.iterdir():
            if p != self.manifest:
                p.unlink()

    def snapshot(self, cache: Path) -> HostState:
        return HostState(
            files={
                "cache": tree(cache),
                "project": tree(self.manifest.parent),
            },
            extra={"hash rows": hash_rows(cache)},
        )

    def build(
        self, key: Keys, out: Path, *extra: str, point: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return airgap(
            "build",
            str(self.demo),
            "-o",
            str(out),
            "--key",
            str(key.private),
            "--chunk-size",
            "64K",
            *extra,
            env={"SOURCE_DATE_EPOCH": SDE},
            point=point,
        )


@contextlib.contextmanager
def world(root: Path) -> Iterator[World]:
    mirrors = root / "mirrors"
    repo = mirrors / "models" / "demo" / "tiny"
    weights = {
        "config.json": b'{"model_type": "llama"}\n',
        "tokenizer.json": b'{"v": 1}\n',
        "model.safetensors": os.urandom(MODEL_BYTES),
    }
    services.git_commit_repo(repo, weights, {"model.safetensors"}, "init")
    shared = {"bin/busybox": os.urandom(200_000)}
    vllm = Image([shared, {"app/weights.bin": os.urandom(2_500_000)}], compress=True)
    nginx = Image([shared, {"etc/nginx.conf": b"events {}\n"}])
    docroot = root / "www"
    (docroot / "elser").mkdir(parents=True)
    pt = os.urandom(2_500_000)
    elser = "elser_model_2_linux-x86_64"
    (docroot / "elser" / f"{elser}.pt").write_bytes(pt)
    (docroot / "elser" / f"{elser}.vocab.json").write_text('{"vocabulary": []}')
    (docroot / "elser" / f"{elser}.metadata.json").write_text(
        json.dumps({"packaged_model_id": elser, "sha256": sha(pt), "size": len(pt)})
    )
    (docroot / "docs").mkdir()
    (docroot / "docs" / "kb-product-doc-kibana-9.2.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    demo_src = root / "demo"
    demo_src.mkdir()
    demo = make_demo_sources(demo_src)
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(services.olah(mirrors))
        reg = stack.enter_context(services.registry())
        www = stack.enter_context(services.nginx_static(docroot))
        push(vllm.oci_dir(root / "vllm-oci"), reg.url, "demo/vllm:1")
        push(nginx.oci_dir(root / "nginx-oci"), reg.url, "demo/nginx:1")
        proxies = [
            stack.enter_context(FaultProxy(up).running())
            for up in (hub.url, f"http://{reg.url}", www.url)
        ]
        project = root / "project"
        project.mkdir()
        manifest = project / "m.yaml"
        doc = {
            "apiVersion": "airgap/v1",
            "kind": "Bundle",
            "name": "remote",
            "version": 1,
            "model": {"repo": "demo/tiny", "revision": "main", "served_name": "tiny"},
            "images": {
                "vllm": f"{proxies[1].netloc}/demo/vllm:1",
                "nginx": f"{proxies[1].netloc}/demo/nginx:1",
            },
            "elastic": {
                "elser": [elser],
                "product_docs": {"version": "9.2", "products": ["kibana"]},
                "elser_url": f"{proxies[2].url}/elser",
                "product_docs_url": f"{proxies[2].url}/docs",
            },
        }
        manifest.write_text(yaml.safe_dump(doc))
        yield World(
            root,
            proxies[0],
            proxies[1],
            proxies[2],
            manifest,
            "sha256:" + sha(vllm.blobs[1]),
            demo,
        )
