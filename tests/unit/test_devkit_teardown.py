"""The test services' teardown kills what a dead service left running from its private root.

A Podman pod's conmon and container processes are not children of the Podman service, so
stopping the service (or its dying) leaves them running; ``kill_leftovers`` finds them by
the service's private root on their command line and kills them and their children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from devkit.services import kill_leftovers

PARENT = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "600"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kills_processes_under_the_root_and_their_children(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    root.mkdir()
    # Like conmon: the private root on its command line, a child (the container) without.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(root / "run" / "conmon.pid")],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)  # not under the root
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(parent.pid) and _alive(child)
        killed = kill_leftovers(root)
        assert sorted(killed) == sorted([parent.pid, child])
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
        assert _alive(other.pid)  # negative control: what is not ours is left alone
        assert kill_leftovers(root) == []
    finally:
        for p in (parent, other):
            if p.poll() is None:
                os.kill(p.pid, 9)
                p.wait()
