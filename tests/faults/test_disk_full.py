"""Disk full during ``fetch`` (the cache), ``build`` (the output directory) and
``install`` (the prefix), on small tmpfs mounts: too small from the start, out of inodes,
or filled by someone else while airgap writes (the run is paused at a named point, a
filler file takes the rest, the run goes on). Each time: one clean error that names the
full path and says "No space", exit 1, no traceback; nothing left that a later run
would trust without checking; and after space is freed, the same command completes and
the host ends as a clean run leaves it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.connected import SDE, World
from faults.hostkit import (
    HostState,
    airgap_paused,
    assert_clean_error,
    assert_ok,
    assert_same_host,
    cache_is_trustworthy,
    fill,
    remount,
    same_cache,
    tmpfs,
    tree,
)
from faults.site import Site

from conftest import Keys

pytestmark = pytest.mark.integration
_REFS: dict[str, HostState] = {}


def clean_fetch(world: World, tmp: Path) -> HostState:
    if "fetch" not in _REFS:
        cache = tmp / "clean"
        world.fresh(cache)
        assert_ok(world.fetch(cache), "clean fetch")
        _REFS["fetch"] = world.snapshot(cache)
        world.fresh(cache)
    return _REFS["fetch"]


@pytest.mark.fault("disk full: fetch (cache)")
@pytest.mark.parametrize("how", ["too small", "out of inodes", "filled mid-download"])
def test_fetch_into_a_full_cache(connected: World, tmp_path: Path, how: str) -> None:
    clean = clean_fetch(connected, tmp_path)
    cache = tmp_path / "cache"
    connected.fresh(cache)
    inodes = 20 if how == "out of inodes" else None
    with tmpfs(cache, "2M" if how == "too small" else "32M", inodes):
        if how == "filled mid-download":
            fillers: list[Path] = []
            r = airgap_paused(
                "fetch",
                str(connected.manifest),
                "--cache-dir",
                str(cache),
                "--jobs",
                "1",  # one download at a time: the write that meets the full disk is known
                env=connected.env(),
                point="fetch.mid-blob",
                while_stopped=lambda: fillers.append(fill(cache)),
            )
            err = assert_clean_error(r, str(cache), "No space left on device")
            cache_is_trustworthy(cache)
            fillers[0].unlink()  # free the space
        else:
            err = assert_clean_error(connected.fetch(cache), str(cache))
            assert "No space left on device" in err or "no space left for the downloads" in err
            cache_is_trustworthy(cache)
            remount(cache, "32M", 10_000 if inodes else None)
        assert_ok(connected.fetch(cache))
        cache_is_trustworthy(cache)
        same_cache(clean, connected.snapshot(cache))


@pytest.mark.fault("disk full: build (output)")
@pytest.mark.parametrize("how", ["too small", "filled mid-write"])
def test_build_into_a_full_output_directory(
    connected: World, fault_key: Keys, tmp_path: Path, how: str
) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    assert_ok(connected.build(fault_key, ref / "demo.tar"), "clean build")
    out = tmp_path / "out"
    with tmpfs(out, "128K" if how == "too small" else "16M"):
        if how == "too small":
            # refused before a byte is written: the bundle's exact size against the free space
            r = connected.build(fault_key, out / "demo.tar")
            assert_clean_error(r, f"{out}: not enough free space: the bundle demo.tar needs")
        else:
            fillers: list[Path] = []
            r = airgap_paused(
                "build",
                str(connected.demo),
                "-o",
                str(out / "demo.tar"),
                "--key",
                str(fault_key.private),
                "--chunk-size",
                "64K",
                env={"SOURCE_DATE_EPOCH": SDE},
                point="build.payload-written:2",
                while_stopped=lambda: fillers.append(fill(out)),
            )
            assert_clean_error(r, str(out / "demo.tar"), "No space left on device")
            fillers[0].unlink()
        assert tree(out) == {}  # no bundle, no part, no temp file
        remount(out, "16M")
        assert_ok(connected.build(fault_key, out / "demo.tar"))
        assert_same_host(HostState(files=tree(ref)), HostState(files=tree(out)))


@contextlib.contextmanager
def prefix_on_tmpfs(site: Site, size: str) -> Iterator[Path]:
    site.reach("empty")
    try:
        with tmpfs(site.prefix, size) as prefix:
            try:
                yield prefix
            finally:
                site.reset()  # containers off the mount before it goes
    finally:
        site.reset()


def nothing_trusted(site: Site) -> None:
    """No release switched in, no receipt naming one, and no staging dir left."""
    assert not (site.prefix / "current").exists()
    receipt = site.prefix / "state" / "receipt.json"
    if receipt.exists():
        assert json.loads(receipt.read_text())["releases"] == {}
    releases = site.prefix / "releases"
    assert not releases.exists() or list(releases.iterdir()) == []


@pytest.mark.fault("disk full: install (prefix)")
@pytest.mark.parametrize("how", ["too small", "filled mid-extract"])
def test_install_into_a_full_prefix(airgapped: Site, how: str) -> None:
    site = airgapped
    clean = site.ref("v1")
    with prefix_on_tmpfs(site, "256K" if how == "too small" else "64M") as prefix:
        if how == "too small":
            err = assert_clean_error(site.install(1), str(prefix))
            assert "free" in err
            remount(prefix, "64M")
        else:
            fillers: list[Path] = []
            r = airgap_paused(
                "install",
                *site.install_args(1),
                env=site.env,
                point="install.file-written:2",
                while_stopped=lambda: fillers.append(fill(prefix)),
            )
            assert_clean_error(r, str(prefix), "No space left on device")
            fillers[0].unlink()
        nothing_trusted(site)
        assert_ok(site.install(1))
        assert_same_host(clean, site.snapshot())
        assert site.serving()
