"""The fault-injection tier (``scripts/test-faults``): fixtures, and the table of faults
tried, survived and lost that ends every run.

Every test here injects one fault and is marked ``@pytest.mark.fault(kind)``; its
parameter id names the fault. A test that passes is a fault survived (the run failed
cleanly or died where it was told to, and the host then ended as a clean run leaves
it); one that fails or errors is a fault lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from faults.connected import World, world
from faults.site import Site, site

from conftest import Keys, make_key

_LEDGER: dict[str, tuple[str, str, bool]] = {}  # nodeid -> (kind, fault, survived)
_STARTED = time.monotonic()


@pytest.fixture(scope="session", autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the fault-injection tier needs root: it mounts small tmpfs file systems "
            "(disk full) and starts and kills its own dockerd. Run scripts/test-faults "
            "as root (CI does).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def fault_key(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def airgapped(tmp_path_factory: pytest.TempPathFactory, fault_key: Keys) -> Iterator[Site]:
    with site(tmp_path_factory.mktemp("site"), fault_key) as s:
        yield s


@pytest.fixture(scope="session")
def connected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("world")) as w:
        yield w


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    marker = item.get_closest_marker("fault")
    if marker is None:
        return
    callspec = getattr(item, "callspec", None)
    name = callspec.id if callspec is not None else item.name.removeprefix("test_")
    kind = str(marker.args[0])
    failed = call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception)
    if call.when == "setup" and failed:
        _LEDGER[item.nodeid] = (kind, name, False)
    elif call.when == "call":
        _LEDGER[item.nodeid] = (kind, name, not failed)
    elif call.when == "teardown" and failed and item.nodeid in _LEDGER:
        _LEDGER[item.nodeid] = (kind, name, False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _LEDGER:
        return
    kinds: dict[str, list[tuple[str, bool]]] = {}
    for kind, name, survived in _LEDGER.values():
        kinds.setdefault(kind, []).append((name, survived))
    w = terminalreporter
    w.section("faults: tried / survived / lost")
    w.write_line(f"| {'fault class':<34} | tried | survived | lost |")
    w.write_line(f"|{'-' * 36}|-------|----------|------|")
    total = [0, 0, 0]
    for kind in sorted(kinds):
        rows = kinds[kind]
        ok = sum(1 for _, s in rows if s)
        total = [total[0] + len(rows), total[1] + ok, total[2] + len(rows) - ok]
        w.write_line(f"| {kind:<34} | {len(rows):>5} | {ok:>8} | {len(rows) - ok:>4} |")
    w.write_line(f"| {'all':<34} | {total[0]:>5} | {total[1]:>8} | {total[2]:>4} |")
    lost = [f"{k}: {n}" for k, n, s in _LEDGER.values() if not s]
    if lost:
        w.write_line("lost: " + "; ".join(sorted(lost)))
    w.write_line(f"tier time: {time.monotonic() - _STARTED:.0f} s")
