"""The architecture STYLE.md asks for: the core never prints, exits or imports click, and
the shipped package never needs the demo/test kit. (ruff and mypy run in scripts/lint.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


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


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_in_bundler_imports_the_devkit() -> None:
    """devkit/ is not in the wheel: an import of it would fail on every installed host."""
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "bundler").rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name == "devkit" or name.startswith("devkit.")
    ]
    assert offenders == []
    # the check sees imports: the test kit's own files import devkit and bundler
    assert "devkit.standins._http" in imported_modules(REPO / "devkit/standins/kibana.py")


def test_the_connected_side_never_imports_the_installer() -> None:
    """The two wings meet only in bundle/, oci/ and the ground floor: building a bundle
    never needs the air-gapped side's code (and its imports of it would hide a cycle)."""
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "bundler").rglob("*.py"))
        if not {"install", "cli"} & set(path.relative_to(REPO / "bundler").parts)
        for name in sorted(imported_modules(path))
        if name == "bundler.install" or name.startswith("bundler.install.")
    ]
    assert offenders == []
    # the check sees imports, lazy ones too
    assert "bundler.oci.engine" in imported_modules(REPO / "bundler/fetch/engine_export.py")


def test_only_the_engine_seam_imports_docker() -> None:
    """Every docker-py call and error translation lives in bundler/oci/engine.py."""
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "bundler").rglob("*.py"))
        if path != REPO / "bundler/oci/engine.py"
        for name in sorted(imported_modules(path))
        if name == "docker" or name.startswith("docker.")
    ]
    assert offenders == []
    assert "docker.errors" in imported_modules(REPO / "bundler/oci/engine.py")


def test_no_file_outgrows_its_room() -> None:
    """The standing rule: at most 500 lines in bundler/, 350 in install/ and cli/."""
    offenders = []
    for path in sorted((REPO / "bundler").rglob("*.py")):
        room = path.relative_to(REPO / "bundler").parts[0]
        limit = 350 if room in ("install", "cli") else 500
        lines = len(path.read_text().splitlines())
        if lines > limit:
            offenders.append(f"{path.relative_to(REPO)}: {lines} > {limit}")
    assert offenders == []


def test_no_merge_leftovers() -> None:
    """A conflict marker once reached the README's command table; none may land again."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    offenders = [
        name
        for name in tracked
        if name.endswith((".py", ".md", ".sh", ".yaml", ".toml", ".cfg", ".txt"))
        and (REPO / name).is_file()
        and marker.search((REPO / name).read_text(errors="replace"))
    ]
    assert offenders == []
