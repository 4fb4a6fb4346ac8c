"""Upstream faults during ``fetch``: the registry, the hub or the Elastic file server,
each behind a proxy that answers 5xx, resets the connection mid-body, closes early with
the right Content-Length, sends wrong bytes, trickles, or stalls. A transient fault is
survived by retries (with resume: the next request asks only for the missing range);
wrong bytes are never cached, the fetch fails with a clear message, and a clean rerun
completes. Either way the cache ends as a clean fetch leaves it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from faults.connected import World
from faults.faultproxy import FAULTS, FaultProxy
from faults.hostkit import (
    HostState,
    assert_clean_error,
    assert_ok,
    assert_same_host,
    cache_is_trustworthy,
)

pytestmark = pytest.mark.integration
_CLEAN: list[HostState] = []


def target(world: World, upstream: str) -> tuple[FaultProxy, str]:
    """The proxy, and the largest pinned download it serves (a path regex)."""
    if upstream == "hub":
        return world.hub, r"/resolve/[0-9a-f]{40}/model\.safetensors$"
    if upstream == "registry":
        return world.registry, re.escape(f"/blobs/{world.vllm_layer}") + "$"
    return world.files, r"/elser/elser_model_2_linux-x86_64\.pt$"


def clean(world: World, tmp: Path) -> HostState:
    if not _CLEAN:
        cache = tmp / "clean"
        world.fresh(cache)
        assert_ok(world.fetch(cache), "clean fetch")
        _CLEAN.append(world.snapshot(cache))
        world.fresh(cache)
    return _CLEAN[0]


# Every fault on the Elastic file server; on the registry and the hub all but the one
# whose handling they share with it byte for byte (the downloader's read loop).
MATRIX = [
    *[("registry", f) for f in FAULTS if f != "trickle"],
    *[("hub", f) for f in FAULTS if f != "stall"],
    *[("elastic files", f) for f in FAULTS],
]


@pytest.mark.fault("upstream: fetch")
@pytest.mark.parametrize("upstream, fault", MATRIX, ids=[f"{u}-{f}" for u, f in MATRIX])
def test_upstream_fault_is_retried_or_refused_never_cached(
    connected: World, tmp_path: Path, upstream: str, fault: str
) -> None:
    reference = clean(connected, tmp_path)
    proxy, path = target(connected, upstream)
    cache = tmp_path / "cache"
    connected.fresh(cache)
    proxy.inject(path, fault, times=2 if fault == "5xx" else 1)
    r = connected.fetch(cache)
    assert proxy.hits(fault) == (2 if fault == "5xx" else 1), proxy.served
    cache_is_trustworthy(cache)
    if fault == "wrong":
        assert_clean_error(r, "the served bytes are not the published file", "nothing was cached")
        assert_ok(connected.fetch(cache), "rerun")
    else:
        assert_ok(r, f"fetch through a {fault} fault")
        tries = [s for s in proxy.served if re.search(path, s[1])]
        if fault in ("reset", "short"):
            # resumed: the retry asked only for the bytes that were missing (the cut
            # comes after the first 1 MiB, which the downloader has written by then)
            assert len(tries) == 2 and re.fullmatch(r"bytes=[1-9]\d*-", tries[1][3]), tries
        elif fault == "stall":
            assert len(tries) == 2, tries  # given up after the read timeout, then again
    cache_is_trustworthy(cache)
    assert_same_host(reference, connected.snapshot(cache))


@pytest.mark.fault("upstream: fetch (resolving)")
@pytest.mark.parametrize("fault", ["5xx", "reset"])
@pytest.mark.parametrize("upstream", ["registry manifest", "elser metadata"])
def test_transient_fault_while_resolving_is_retried(
    connected: World, tmp_path: Path, upstream: str, fault: str
) -> None:
    """The small documents read to resolve the pins (an image manifest, ELSER's
    metadata) are retried like the downloads."""
    reference = clean(connected, tmp_path)
    if upstream == "registry manifest":
        proxy, path = connected.registry, r"/v2/demo/vllm/manifests/1$"
    else:
        proxy, path = connected.files, r"\.metadata\.json$"
    cache = tmp_path / "cache"
    connected.fresh(cache)
    proxy.inject(path, fault)
    r = connected.fetch(cache)
    assert proxy.hits(fault) == 1, proxy.served
    assert_ok(r, f"fetch through a {fault} fault")
    cache_is_trustworthy(cache)
    assert_same_host(reference, connected.snapshot(cache))
