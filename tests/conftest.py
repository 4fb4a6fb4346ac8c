from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build
from bundler.bundle.plan import BuildResult
from bundler.bundle.signing import TrustedKey, generate_keypair, load_signing_key, load_trust
from bundler.manifest import load_manifest
from devkit import services
from devkit.demo_data import make_demo_sources


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's home or inherits a passphrase or build time."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AIRGAP_KEY_PASSPHRASE", raising=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(time.time()) - 60))


@dataclass
class Keys:
    private: Path
    public: Path
    keyid: str

    def trust(self) -> dict[str, TrustedKey]:
        return load_trust([self.public], None)


def make_key(directory: Path, name: str = "signer") -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    priv = directory / name
    keyid = generate_keypair(priv)
    return Keys(priv, directory / f"{name}.pub", keyid)


@pytest.fixture
def key(tmp_path: Path) -> Keys:
    return make_key(tmp_path / "keys")


@pytest.fixture
def demo_manifest(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    return make_demo_sources(src)


def build_bundle(
    manifest: Path,
    out: Path,
    *keys: Keys,
    chunk_size: int = 64 * 1024,
    split_size: int | None = None,
) -> BuildResult:
    m = load_manifest(manifest)
    signing = tuple(load_signing_key(k.private) for k in keys)
    return build(
        m, BuildOptions(output=out, keys=signing, chunk_size=chunk_size, split_size=split_size)
    )


@pytest.fixture
def bundle(tmp_path: Path, demo_manifest: Path, key: Keys) -> Path:
    out = tmp_path / "out" / "demo.tar"
    out.parent.mkdir()
    build_bundle(demo_manifest, out, key)
    return out


def airgap(
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI in a subprocess (exit codes, stdin, stderr as a user sees them)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root``, itself included, by relative path: (mode, owner, sha256
    of a file or a link's target). Two equal snapshots: nothing was created, changed or
    removed there."""
    st = os.lstat(root)
    out = {".": (st.st_mode, st.st_uid, "")}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, what)
    return out


# Real services for the integration tests, one of each per test session.


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[services.Service]:
    with services.dockerd() as svc:
        yield svc


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[services.Service]:
    with services.podman() as svc:
        yield svc


@pytest.fixture(scope="session")
def oci_registry() -> Iterator[services.Service]:
    with services.registry() as svc:
        yield svc
