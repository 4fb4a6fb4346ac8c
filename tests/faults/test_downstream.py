"""Downstream faults during ``install``: the engine dies (SIGKILL to dockerd) while the
images stream into it or just after they loaded; Kibana or Elasticsearch goes down
between the steps; vLLM never becomes healthy. The install fails with one clean error;
what served before serves again (or nothing serves, when nothing did); and once the
fault is gone, the same command completes and the host ends as a clean run leaves it.

The Elastic steps come after the new release proved healthy, on purpose (Kibana's test
call must reach it): when Kibana or Elasticsearch is down, the new release stays
installed and serving, and the rerun repeats only the Elastic steps (README, "Kibana
and Elasticsearch").
"""

from __future__ import annotations

import json
import threading

import pytest

from faults.hostkit import (
    airgap_paused,
    assert_clean_error,
    assert_ok,
    assert_same_host,
    wait_for,
)
from faults.site import Site

pytestmark = pytest.mark.integration


def current(site: Site) -> str | None:
    receipt = site.prefix / "state" / "receipt.json"
    link = site.prefix / "current"
    on_disk = link.resolve().name if link.is_symlink() else None
    recorded = json.loads(receipt.read_text())["current"] if receipt.exists() else None
    assert on_disk == recorded, f"current -> {on_disk}, the receipt says {recorded}"
    return recorded


def nothing_serves(site: Site) -> None:
    state = site.engine.state()
    assert state["containers"] == [], state["containers"]
    assert state["images"] == {}, state["images"]
    assert current(site) is None
    assert not site.serving()


@pytest.mark.fault("downstream: install")
@pytest.mark.parametrize(
    "start, point",
    [("v1", "install.layer-fed"), ("empty", "install.layer-fed"), ("v1", "install.images-loaded")],
    ids=["mid-load, upgrade", "mid-load, first install", "after load, upgrade"],
)
def test_engine_dies(airgapped: Site, start: str, point: str) -> None:
    site = airgapped
    end = "v2" if start == "v1" else "v1"
    clean = site.ref(end)
    site.reach(start)
    site.at = None
    r = airgap_paused(
        "install",
        *site.install_args(2 if end == "v2" else 1),
        env=site.env,
        point=point,
        while_stopped=site.engine.kill,
    )
    assert_clean_error(r, site.engine.url)
    site.engine.start()  # the engine comes back; containers with a restart policy too
    if start == "v1":
        wait_for(site.serving, "the previous release to serve again", 60)
        assert current(site) == "demo-1"
    else:
        nothing_serves(site)
    assert_ok(site.step(end))
    assert_same_host(clean, site.snapshot())
    site.at = end


@pytest.mark.fault("downstream: install")
def test_kibana_goes_down_after_the_release_serves(airgapped: Site) -> None:
    site = airgapped
    clean = site.ref("v1")
    site.reach("empty")
    r = airgap_paused(
        "install",
        *site.install_args(1),
        env=site.env,
        point="install.served",
        while_stopped=lambda: site.down("kibana"),
    )
    site.at = None
    try:
        assert_clean_error(
            r, "installed and serving, but an Elastic step failed", "again repeats only"
        )
        assert current(site) == "demo-1" and site.serving()
    finally:
        site.up("kibana")
    assert_ok(site.install(1))
    assert_same_host(clean, site.snapshot())
    site.at = "v1"


@pytest.mark.fault("downstream: install")
def test_elasticsearch_down_for_seconds_is_waited_for(airgapped: Site) -> None:
    """Elasticsearch goes away once the connector exists and comes back 2.5 s later:
    the endpoint is created by the retries, and the install completes."""
    site = airgapped
    clean = site.ref("v1")
    site.reach("empty")
    back = threading.Timer(2.5, site.up, args=("es",))

    def outage() -> None:
        site.down("es")
        back.start()

    r = airgap_paused(
        "install",
        *site.install_args(1),
        env=site.env,
        point="install.kibana-done",
        while_stopped=outage,
    )
    site.at = None
    back.join()
    assert_ok(r, "install through an Elasticsearch outage")
    assert_same_host(clean, site.snapshot())
    site.at = "v1"


@pytest.mark.fault("downstream: install")
@pytest.mark.parametrize("start", ["v1", "empty"], ids=["upgrade", "first install"])
def test_vllm_never_healthy(airgapped: Site, start: str) -> None:
    site = airgapped
    end = "v2" if start == "v1" else "v1"
    clean, before = site.ref(end), site.ref(start)
    site.reach(start)
    r = site.install(
        2 if end == "v2" else 1, "--vllm-arg=--stub-never-healthy", "--health-timeout", "3"
    )
    site.at = None
    assert_clean_error(r, "vLLM was not healthy after 3s", "--health-timeout")
    if start == "v1":
        assert site.serving() and current(site) == "demo-1"
        assert_same_host(before, site.snapshot())  # nothing of the failed upgrade is left
    else:
        nothing_serves(site)
    assert_ok(site.step(end))
    assert_same_host(clean, site.snapshot())
    site.at = end
