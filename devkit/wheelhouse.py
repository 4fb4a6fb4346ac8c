"""A wheelhouse cached in the checkout (``.cache/wheelhouse``) for the tests and the demo.

``scripts/setup`` fills it once, through airgap's own download path (pip with its
cross-platform options), with every dependency airgap needs for each Python the tool
bundle claims, on this machine's platform. The tests and the demo then build tool
bundles from it with ``--no-index --find-links`` (no network, a few seconds), and the
demo skips its tool-bundle step with a clear line when it is missing. A stamp names
what it was filled for (the dependencies in pyproject.toml, Pythons, platform); when
they change it is filled again.

    python -m devkit.wheelhouse     # fill it (network), print its path
"""

from __future__ import annotations

import hashlib
import os
import platform
import pwd
import re
import shutil
import tempfile
from pathlib import Path

from bundler.toolbundle import DEFAULT_PYTHONS
from bundler.toolbundle.wheelhouse import WheelhouseOptions, build_own_wheel, download

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
WHEELHOUSE = CACHE / "wheelhouse"


def host_platform() -> str:
    return f"manylinux2014_{platform.machine()}"


def _stamp(pythons: tuple[str, ...], plat: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    key = f"{deps[1] if deps else text}|{','.join(pythons)}|{plat}"
    return hashlib.sha256(key.encode()).hexdigest() + "\n"


def cached(pythons: tuple[str, ...] = DEFAULT_PYTHONS) -> Path | None:
    """The wheelhouse, when it was filled for ``pythons`` and today's dependencies."""
    stamp = WHEELHOUSE / ".stamp"
    if stamp.is_file() and stamp.read_text() == _stamp(pythons, host_platform()):
        return WHEELHOUSE
    return None


def ensure(pythons: tuple[str, ...] = DEFAULT_PYTHONS) -> Path:
    """The wheelhouse, downloaded first if it is missing or stale (needs the index)."""
    if (ready := cached(pythons)) is not None:
        return ready
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheelhouse-", dir=CACHE) as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        own = build_own_wheel(REPO, work, work)
        opts = WheelhouseOptions(
            pythons=pythons, platforms=(host_platform(),), pip_cache=CACHE / "pip"
        )
        download(own, opts, out, work)
        for w in out.glob("airgap_bundler-*.whl"):
            w.unlink()  # built afresh by every tool bundle; only the dependencies are cached
        (out / ".stamp").write_text(_stamp(pythons, host_platform()))
        shutil.rmtree(WHEELHOUSE, ignore_errors=True)
        os.replace(out, WHEELHOUSE)
    return WHEELHOUSE


def pythons_here(versions: tuple[str, ...] = DEFAULT_PYTHONS) -> dict[str, Path]:
    """An interpreter for each claimed version that this machine has: the OS's own
    (``/usr/bin/python3.X``) first, else a pyenv build, else one on PATH (not a shim)."""
    found: dict[str, Path] = {}
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path(pwd.getpwuid(os.getuid()).pw_dir, ".pyenv"))
    for v in versions:
        candidates = [Path(f"/usr/bin/python{v}")]
        candidates += sorted(pyenv.glob(f"versions/{v}.*/bin/python{v}"), reverse=True)
        if (on_path := shutil.which(f"python{v}")) is not None:
            candidates.append(Path(on_path))
        for c in candidates:
            if c.is_file() and os.access(c, os.X_OK) and "shims" not in c.parts:
                found[v] = c
                break
    return found


if __name__ == "__main__":
    print(ensure())
