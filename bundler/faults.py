"""Named fault points, for the fault-injection test tier (``tests/faults``) only.

The code calls :func:`point` at the phases where a crash matters (a blob fetched but
not committed, a bundle written but not renamed, images loaded but not tagged, …).
Nothing happens unless ``AIRGAP_FAULT_POINT=<name>`` (or ``<name>:<n>``, the n-th time
that point is reached) was set when the process started: then the process kills itself
with SIGKILL at that point — no handler, no ``finally``, no flush, exactly like
``kill -9`` or a power cut, so the tests can prove that the next run recovers.
``AIRGAP_FAULT_ACTION=stop`` stops it with SIGSTOP instead, so a test can break
something outside (the engine) while the process waits, then let it go on (SIGCONT).

Unset, a point costs one comparison: the variables are read once, at import.
"""

from __future__ import annotations

import os
import signal
import threading

from bundler import env

_WANTED, _ACTION = env.fault_point()
_NAME, _SEP, _NTH = (_WANTED or "").rpartition(":")
if not (_SEP and _NTH.isdigit()):
    _NAME, _NTH = _WANTED or "", "1"
_TARGET = max(1, int(_NTH))
_hits = 0
_lock = threading.Lock()


def point(name: str) -> None:
    """A named phase boundary; see the module docstring (a no-op in real runs)."""
    if _WANTED is None or name != _NAME:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits != _TARGET:
            return
    # One line on stderr so a test can tell this kill from any other.
    os.write(2, f"airgap: fault point {name}:{_TARGET} reached ({_ACTION})\n".encode())
    os.kill(os.getpid(), signal.SIGSTOP if _ACTION == "stop" else signal.SIGKILL)
