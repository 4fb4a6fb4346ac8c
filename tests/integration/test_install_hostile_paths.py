"""`airgap install` (the real CLI, the real dockerd) where links were planted: under the
prefix, in `--elser-dir`, and the same version carried again with other content.

Each refusal is checked for its exit code and message, and for leaving nothing anywhere:
the prefix tree, the directory the link points into, and the engine's images are
compared before and after.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_install import docker_ids, install, remove_images, set_version

from devkit import services

from conftest import Keys, build_bundle
from conftest import tree_snapshot as snapshot

pytestmark = pytest.mark.integration

ELSER = "elser_model_2_linux-x86_64"


def state(prefix: Path) -> dict[str, tuple[int, int, str]]:
    """The prefix's snapshot, the lock file's content aside (each run writes its pid)."""
    snap = snapshot(prefix)
    mode, owner, _ = snap[".airgap.lock"]
    return {**snap, ".airgap.lock": (mode, owner, "")}


@pytest.fixture
def engine(docker_engine: services.Service) -> Iterator[services.Service]:
    before = set(docker_ids(docker_engine))
    yield docker_engine
    remove_images(docker_engine, sorted(set(docker_ids(docker_engine)) - before))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "elsewhere" / "victim"
    v.parent.mkdir()
    v.write_bytes(b"not yours\n")
    v.chmod(0o600)
    return v


@pytest.mark.parametrize(
    ("planted", "target"),
    [
        ("releases", "dir"),
        ("state", "dir"),
        (".airgap.lock", "victim"),
        ("releases/demo-1", "dir"),
    ],
)
def test_install_refuses_links_planted_under_the_prefix(
    tmp_path: Path,
    bundle: Path,
    key: Keys,
    engine: services.Service,
    victim: Path,
    planted: str,
    target: str,
) -> None:
    prefix = tmp_path / "opt"
    link = prefix / planted
    link.parent.mkdir(parents=True)
    link.symlink_to(victim if target == "victim" else victim.parent)
    before = snapshot(prefix), snapshot(victim.parent), docker_ids(engine)
    r = install(bundle, key, prefix, engine)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert err.startswith(f"error: {link}: a symbolic link to {link.readlink()} where airgap ")
    assert "tampered with" in err and "hint: " in err and "Traceback" not in err
    assert "rmtree" not in err
    # nothing anywhere: not in the prefix, not where the link points, not in the engine
    assert (snapshot(prefix), snapshot(victim.parent), docker_ids(engine)) == before
    assert victim.read_bytes() == b"not yours\n"


def test_install_refuses_a_prefix_others_can_write_to(
    tmp_path: Path, bundle: Path, key: Keys, engine: services.Service
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    r = install(bundle, key, shared / "opt", engine)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.startswith(f"error: {shared}: writable by group or others (mode 0775)")
    assert "StrictModes" in err
    assert list(shared.iterdir()) == []


def test_same_version_with_other_content_is_a_verification_failure(
    tmp_path: Path, demo_manifest: Path, key: Keys, engine: services.Service
) -> None:
    prefix = tmp_path / "opt"
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    build_bundle(demo_manifest, first, key)
    set_version(demo_manifest, 1, b"changed")  # same version, other weights
    build_bundle(demo_manifest, second, key)
    r = install(first, key, prefix, engine, "--json")
    assert r.returncode == 0, r.stderr.decode()
    installed = json.loads(r.stdout)["index_sha256"]
    before = state(prefix), docker_ids(engine)

    r = install(second, key, prefix, engine)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    line = next(x for x in err.splitlines() if x.startswith("error: "))  # after the table
    assert line.startswith(
        f"error: bundle demo v1 is installed with other content: installed index sha256 "
        f"{installed}, this bundle's "
    )
    assert len(line.rsplit(" ", 1)[1]) == 64 and line.rsplit(" ", 1)[1] != installed
    assert "hint: Build the new content as a higher version" in err
    assert (state(prefix), docker_ids(engine)) == before


def test_elser_dir_with_a_planted_partial_link_is_never_written_through(
    tmp_path: Path, bundle: Path, key: Keys, engine: services.Service, victim: Path
) -> None:
    models = tmp_path / "es-config" / "models"
    models.mkdir(parents=True)
    for suffix in (".pt", ".metadata.json", ".vocab.json"):
        (models / f".{ELSER}{suffix}.airgap-partial").symlink_to(victim)
    r = install(bundle, key, tmp_path / "opt", engine, "--elser-dir", str(models))
    assert r.returncode == 0, r.stderr.decode()
    assert victim.read_bytes() == b"not yours\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    src = tmp_path / "src" / "elastic"
    for suffix in (".pt", ".metadata.json", ".vocab.json"):
        copied = models / f"{ELSER}{suffix}"
        assert copied.read_bytes() == (src / f"{ELSER}{suffix}").read_bytes()
        assert stat.S_IMODE(copied.stat().st_mode) == 0o644
        assert os.path.islink(models / f".{ELSER}{suffix}.airgap-partial")
