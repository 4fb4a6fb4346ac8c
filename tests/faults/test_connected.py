"""Kill -9 on the connected side: ``fetch`` (through the real hub, registry and file
server) and ``build`` die by SIGKILL at a named point; the same command run again
completes, and the cache, the lock beside the manifest and the output directory hold
exactly what a clean run leaves: no temp file, no half-written blob or bundle, and no
file a later run would trust without having checked it."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.connected import World
from faults.hostkit import (
    HostState,
    assert_killed_at,
    assert_ok,
    assert_same_host,
    cache_is_trustworthy,
    same_cache,
    tree,
)

from conftest import Keys

pytestmark = pytest.mark.integration

_REFS: dict[str, HostState] = {}


def clean_fetch(world: World, tmp: Path) -> HostState:
    if "fetch" not in _REFS:
        cache = tmp / "clean-cache"
        world.fresh(cache)
        assert_ok(world.fetch(cache), "clean fetch")
        _REFS["fetch"] = world.snapshot(cache)
        world.fresh(cache)
    return _REFS["fetch"]


@pytest.mark.fault("kill -9: fetch")
@pytest.mark.parametrize(
    "point",
    [
        "fetch.before-lock",
        "write.m.lock.json",
        "fetch.mid-blob",
        "fetch.verified:2",
        "fetch.committed:4",
    ],
)
def test_killed_fetch_then_rerun_ends_as_a_clean_run(
    connected: World, tmp_path: Path, point: str
) -> None:
    clean = clean_fetch(connected, tmp_path)
    cache = tmp_path / "cache"
    connected.fresh(cache)
    assert_killed_at(connected.fetch(cache, point=point), point)
    cache_is_trustworthy(cache)
    assert_ok(connected.fetch(cache))
    cache_is_trustworthy(cache)
    same_cache(clean, connected.snapshot(cache))


def clean_build(world: World, key: Keys, tmp: Path, split: bool) -> HostState:
    name = f"build-split={split}"
    if name not in _REFS:
        out = tmp / "clean-out"
        out.mkdir()
        extra = ("--split-size", "64K") if split else ()
        assert_ok(world.build(key, out / "demo.tar", *extra), "clean build")
        _REFS[name] = HostState(files=tree(out))
    return _REFS[name]


@pytest.mark.fault("kill -9: build")
@pytest.mark.parametrize(
    "point, split",
    [
        ("build.payload-written:3", True),
        ("build.head-written", True),
        ("build.parts-renamed", True),
        ("write.demo.tar.parts.json", True),
        ("build.before-rename", False),
    ],
    ids=lambda v: v if isinstance(v, str) else ("split" if v else "single"),
)
def test_killed_build_then_rerun_ends_as_a_clean_run(
    connected: World, fault_key: Keys, tmp_path: Path, point: str, split: bool
) -> None:
    clean = clean_build(connected, fault_key, tmp_path, split)
    out = tmp_path / "out"
    out.mkdir()
    extra = ("--split-size", "64K") if split else ()
    assert_killed_at(connected.build(fault_key, out / "demo.tar", *extra, point=point), point)
    assert_ok(connected.build(fault_key, out / "demo.tar", *extra))
    assert_same_host(clean, HostState(files=tree(out)))
