"""The code stays as STYLE.md asks: ruff clean, mypy strict clean, core never prints or exits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_ruff_and_mypy_strict_are_clean() -> None:
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "bundler", "tests", "scripts", "devkit"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "bundler"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_core_code_never_prints_exits_or_imports_click() -> None:
    offenders = []
    for path in (REPO / "bundler").rglob("*.py"):
        # the CLI and the entry point
        if "cli" in path.relative_to(REPO / "bundler").parts or path.name == "__main__.py":
            continue
        text = path.read_text()
        for pattern in (r"^\s*print\(", r"sys\.exit\(", r"^\s*import click", r"^from click"):
            if re.search(pattern, text, re.MULTILINE):
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert offenders == []
