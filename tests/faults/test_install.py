"""Kill -9 on the air-gapped side: ``install``, ``rollback`` and ``uninstall`` die by
SIGKILL at a named point; the same command run again completes, and the host ends
exactly as a clean run leaves it: files under the prefix, the receipt, the engine's
images, tags and containers, the Kibana connector and the Elasticsearch endpoint.

Scenarios are ordered so that each starts where the previous one ended (a clean
state, proven equal to its reference): fewer set-ups, and every end state is checked
before the next scenario builds on it.
"""

from __future__ import annotations

import json
import os

import pytest

from faults.hostkit import assert_killed_at, assert_ok, assert_same_host
from faults.site import Site

pytestmark = pytest.mark.integration

# (start state, fault point, end state): the command is the one that leads to the end
SCENARIOS = [
    ("empty", "install.preflight-done", "v1"),
    ("v1", "install.images-loaded", "v2"),
    ("v2", "rollback.served", "rolled-back"),
    ("empty", "install.file-written:2", "v1"),
    ("v1", "serve.container-created:2", "v2"),
    ("v2", "uninstall.containers-removed", "uninstalled"),
    ("empty", "install.layer-fed", "v1"),
    ("v1", "install.served", "v2"),
    ("v2", "rollback.switched", "rolled-back"),
    ("empty", "install.images-tagged", "v1"),
    ("v1", "write.receipt.json:2", "v2"),
    ("v2", "uninstall.images-removed", "uninstalled"),
    ("empty", "install.kibana-done", "v1"),
    ("v1", "serve.container-created", "v2"),
    ("v2", "uninstall.release-removed", "uninstalled"),
    ("v2", "serve.container-created:2", "rolled-back"),
]
COMMAND = {"v1": "install", "v2": "install", "rolled-back": "rollback", "uninstalled": "uninstall"}


def nothing_half_trusted(site: Site) -> None:
    """After the kill: the receipt is whole JSON, and ``current`` (if any) is a release
    with its signed index (the files a later run trusts are never half-written)."""
    receipt = site.prefix / "state" / "receipt.json"
    if receipt.exists():
        json.loads(receipt.read_text())
    current = site.prefix / "current"
    if current.is_symlink():
        assert (current / "airgap" / "index.json").is_file(), os.readlink(current)


@pytest.mark.fault("kill -9: install/rollback/uninstall")
@pytest.mark.parametrize(
    "start, point, end",
    SCENARIOS,
    ids=[f"{COMMAND[e]}@{p}({s}->{e})" for s, p, e in SCENARIOS],
)
def test_killed_then_rerun_ends_as_a_clean_run(
    airgapped: Site, start: str, point: str, end: str
) -> None:
    site = airgapped
    clean = site.ref(end)
    site.reach(start)
    assert_killed_at(site.step(end, point=point), point)
    nothing_half_trusted(site)
    assert_ok(site.step(end))
    assert_same_host(clean, site.snapshot())
    if end in ("v1", "v2", "rolled-back"):
        assert site.serving()
    site.at = end


@pytest.mark.fault("kill -9: install/rollback/uninstall")
def test_uninstall_after_a_killed_rollback_removes_everything(airgapped: Site) -> None:
    """The operator gives up after a kill and uninstalls: nothing of the killed run stays
    (the containers it started are on no record, the ones it stopped are renamed)."""
    site = airgapped
    clean = site.ref("uninstalled")
    site.reach("v2")
    point = "serve.container-created:2"
    assert_killed_at(site.step("rolled-back", point=point), point)
    assert_ok(site.uninstall(), "uninstall")
    assert_same_host(clean, site.snapshot())
    site.at = "uninstalled"
