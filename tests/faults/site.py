"""The air-gapped site the install faults run against: a private engine the tests may
kill, Kibana and Elasticsearch stand-ins on fixed ports (so they can go down and come
back), and two releases of the demo bundle with runnable images (v2 brings a new Nginx
image, so an upgrade loads one image and only tags the other)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from devkit import services
from devkit.demo_data import make_demo_sources
from devkit.standins.elasticsearch import ElasticsearchStandIn
from devkit.standins.kibana import KibanaStandIn
from faults.hostkit import Engine, HostState, airgap, receipt_view, tree

from conftest import Keys, build_bundle

KIBANA_KEY = "a2liYW5hOmtleQ=="
ES_KEY = "ZXM6a2V5"


def add_layer(archive: Path, out: Path, files: dict[str, bytes], tag: str) -> Path:
    """A copy of a one-image docker-archive with one more layer (a new image ID that
    shares the base layer)."""
    with tarfile.open(archive) as tf:
        (entry,) = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tf.extractfile(entry["Config"]))  # type: ignore[arg-type]
        members = {name: tf.extractfile(name).read() for name in entry["Layers"]}  # type: ignore[union-attr]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            layer.addfile(info, io.BytesIO(data))
    extra = buf.getvalue()
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(extra).hexdigest())
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [tag], "Layers": [*entry["Layers"], "extra.tar"]}]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [
            ("manifest.json", json.dumps(manifest).encode()),
            (cfg_name, cfg),
            *members.items(),
            ("extra.tar", extra),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


def make_bundles(root: Path, key: Keys) -> dict[int, Path]:
    """demo v1, and v2 with another tokenizer file and a new Nginx image."""
    src = root / "src"
    src.mkdir()
    manifest = make_demo_sources(src, real_images=True)
    bundles = {1: build_bundle(manifest, root / "demo-1.tar", key).outputs[0]}
    doc = yaml.safe_load(manifest.read_text())
    doc["version"] = 2
    (src / "weights" / "tokenizer" / "tokenizer.json").write_text('{"version": "2.0"}\n')
    add_layer(src / "nginx.tar", src / "nginx2.tar", {"etc/airgap-v2": b"2\n"}, "demo/nginx:2")
    doc["images"]["nginx"] = {"archive": "./nginx2.tar"}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    bundles[2] = build_bundle(manifest, root / "demo-2.tar", key).outputs[0]
    return bundles


@dataclass
class Site:
    root: Path
    engine: Engine
    key: Keys
    bundles: dict[int, Path]
    kibana: KibanaStandIn
    es: ElasticsearchStandIn
    port: int = field(default_factory=services.free_port)
    internal: int = field(default_factory=services.free_port)
    artifacts: int = field(default_factory=services.free_port)
    kibana_port: int = field(default_factory=services.free_port)
    es_port: int = field(default_factory=services.free_port)
    _up: dict[str, contextlib.ExitStack] = field(default_factory=dict)
    # Where the site is now (None: unknown, e.g. after a fault), and the snapshot of each
    # state the first time clean runs reached it (the reference a faulted run must equal).
    at: str | None = None
    refs: dict[str, HostState] = field(default_factory=dict)

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def env(self) -> dict[str, str]:
        return {"AIRGAP_KIBANA_API_KEY": KIBANA_KEY, "AIRGAP_ES_API_KEY": ES_KEY}

    # -- the stand-ins go down and come back on their own port, keeping their objects --

    def up(self, name: str) -> None:
        if name in self._up:
            return
        stack = contextlib.ExitStack()
        server = self.kibana if name == "kibana" else self.es
        port = self.kibana_port if name == "kibana" else self.es_port
        stack.enter_context(server.running(port))
        self._up[name] = stack

    def down(self, name: str) -> None:
        stack = self._up.pop(name, None)
        if stack is not None:
            stack.close()

    # -- commands --

    def install(
        self, version: int, *extra: str, point: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return airgap("install", *self.install_args(version, *extra), env=self.env, point=point)

    def install_args(self, version: int, *extra: str) -> list[str]:
        return [
            str(self.bundles[version]),
            "--trusted-key",
            str(self.key.public),
            "--prefix",
            str(self.prefix),
            "--no-gpu",
            "--runtime-url",
            self.engine.url,
            "--port",
            str(self.port),
            "--internal-port",
            str(self.internal),
            "--artifacts-port",
            str(self.artifacts),
            "--ip",
            "127.0.0.1",
            "--health-timeout",
            "60",
            "--kibana-url",
            f"http://127.0.0.1:{self.kibana_port}",
            "--es-url",
            f"http://127.0.0.1:{self.es_port}",
            # the tier's faults are in serving and the connector path; the knowledge-base
            # steps (which the Kibana stand-in runs against an Elasticsearch it is given)
            # have their own tests in tests/integration/test_elastic_kb.py
            "--no-kb",
            "--json",
            *extra,
        ]

    def rollback(self, point: str | None = None) -> subprocess.CompletedProcess[bytes]:
        return airgap(
            "rollback",
            "--prefix",
            str(self.prefix),
            "--runtime-url",
            self.engine.url,
            env=self.env,
            point=point,
        )

    def uninstall(self, point: str | None = None) -> subprocess.CompletedProcess[bytes]:
        return airgap(
            "uninstall",
            "--prefix",
            str(self.prefix),
            "--runtime-url",
            self.engine.url,
            env=self.env,
            point=point,
        )

    # -- states: how a clean site reaches each one --

    STEPS: ClassVar[dict[str, tuple[str, str]]] = {
        "v1": ("empty", "install v1"),
        "v2": ("v1", "install v2 over v1"),
        "rolled-back": ("v2", "rollback to v1"),
        "uninstalled": ("v2", "uninstall"),
    }

    def step(self, state: str, point: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the command that leads from ``STEPS[state]``'s start to ``state``."""
        self.at = None  # unknown until the caller proved where it is
        if state == "v1":
            return self.install(1, point=point)
        if state == "v2":
            return self.install(2, point=point)
        if state == "rolled-back":
            return self.rollback(point=point)
        assert state == "uninstalled", state
        return self.uninstall(point=point)

    def reach(self, state: str) -> None:
        """Bring the site to ``state`` by clean runs (from nothing, unless it is there)."""
        if self.at == state:
            return
        if state == "empty":
            self.reset()
        else:
            self.reach(self.STEPS[state][0])
            r = self.step(state)
            assert r.returncode == 0, f"clean step to {state}: {r.stderr.decode()[-3000:]}"
        self.refs.setdefault(state, self.snapshot())
        self.at = state

    def ref(self, state: str) -> HostState:
        """How a clean run leaves the host in ``state`` (may move the site to compute it)."""
        if state not in self.refs:
            self.reach(state)
        return self.refs[state]

    # -- state --

    def reset(self) -> None:
        """Nothing installed, nothing in the engine or the stand-ins."""
        self.at = None
        self.up("kibana")
        self.up("es")
        if self.engine.proc is None:
            self.engine.start()
        self.engine.wipe()
        shutil.rmtree(self.prefix, ignore_errors=True)
        self.kibana.connectors = {space: {} for space in self.kibana.spaces}
        self.es.endpoints.clear()
        self.es.models.clear()
        for server in (self.kibana, self.es):
            server.log.clear()
            server.fail_next.clear()

    def snapshot(self) -> HostState:
        token_file = self.prefix / "secrets" / "bearer-token"
        token = token_file.read_text().strip() if token_file.exists() else None
        connectors = {}
        for space, items in self.kibana.connectors.items():
            for ident, c in items.items():
                c = json.loads(json.dumps(c))
                # the connector must carry the token that serves now (random per host)
                assert c.get("secrets", {}).get("apiKey") == token, "connector holds a stale token"
                c["secrets"] = "<the bearer token>"
                connectors[f"{space}/{ident}"] = c
        models = {k: {x: y for x, y in v.items() if x != "done"} for k, v in self.es.models.items()}
        return HostState(
            files=tree(self.prefix),
            receipt=receipt_view(self.prefix / "state" / "receipt.json"),
            engine=self.engine.state(),
            kibana=connectors,
            elasticsearch={"endpoints": dict(self.es.endpoints), "models": models},
        )

    def serving(self) -> bool:
        """Does the endpoint answer /health through Nginx over TLS?"""
        import requests

        ca = self.prefix / "secrets" / "tls" / "ca.crt"
        try:
            r = requests.get(f"https://127.0.0.1:{self.port}/health", verify=str(ca), timeout=5)
        except (requests.RequestException, OSError):
            return False
        return r.status_code == 200


@contextlib.contextmanager
def site(root: Path, key: Keys) -> Iterator[Site]:
    engine_root = root / "engine"
    engine_root.mkdir()
    engine = Engine(engine_root)
    engine.start()
    s = Site(
        root,
        engine,
        key,
        make_bundles(root, key),
        KibanaStandIn("9.2.0", api_keys={KIBANA_KEY}),
        ElasticsearchStandIn(api_keys={ES_KEY}),
    )
    s.kibana.trusted_ca = s.prefix / "secrets" / "tls" / "ca.crt"
    s.es.model_repository = f"http://127.0.0.1:{s.artifacts}/elser"
    try:
        s.reset()
        yield s
    finally:
        s.down("kibana")
        s.down("es")
        with contextlib.suppress(Exception):
            s.engine.wipe()
        s.engine.stop()
        services._rmtree(engine_root)
        shutil.rmtree(s.prefix, ignore_errors=True)
