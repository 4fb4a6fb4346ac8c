"""The wheel carries what an air-gapped host runs: ``bundler/`` and its metadata, nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# what a checkout holds besides its sources (never part of a build)
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def test_wheel_holds_only_the_bundler_package(tmp_path: Path) -> None:
    # Built from a copy: setuptools' in-tree build/ would keep files a move left behind.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE, symlinks=True)
    assert (src / "devkit" / "standins").is_dir()  # the kit is there to be left out
    out = tmp_path / "wheels"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("airgap_bundler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    (dist_info,) = (t for t in tops if t.endswith(".dist-info"))
    assert tops == {"bundler", dist_info}
    assert "bundler/cli/main.py" in names and "bundler/py.typed" in names
    assert "bundler/sbom/spdx-licenses.json" in names  # the SPDX licence list, offline
    # what `airgap tool-bundle` renders into every tool bundle
    assert {"bundler/toolbundle/install.sh", "bundler/toolbundle/README.txt"} <= set(names)
    assert not [n for n in names if "standins" in n or "demo" in n or "stub" in n]
