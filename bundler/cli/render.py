"""Rendering for humans: rich progress bars and tables (off when quiet or not a TTY)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from bundler.fmt import human
from bundler.progress import NullReporter, Reporter


class RichReporter:
    """A progress bar per stage, on stderr; thread-safe ``advance``."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._lock = threading.Lock()

    def stage(self, name: str, total: int | None = None) -> None:
        with self._lock:
            if self._task is not None:
                self._progress.update(self._task, visible=True)
                self._progress.stop_task(self._task)
            self._task = self._progress.add_task(name, total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def note(self, message: str) -> None:
        self._progress.console.print(message)


@contextmanager
def make_reporter(quiet: bool) -> Iterator[Reporter]:
    stderr = Console(stderr=True)
    if quiet or not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        yield NullReporter()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        yield RichReporter(progress)


def render_inspect(info: dict[str, Any]) -> None:
    console = Console()
    console.print(
        f"[bold]{info['name']}[/bold] v{info['version']}  ({info['format']}, {info['tool']})"
    )
    console.print(f"created {info['created']}  expires {info['expires']}")
    console.print(f"index sha256 {info['index_sha256']}")
    console.print(
        "signers (not verified here; use `airgap verify`): "
        + (", ".join(info["signers"]) or "none")
    )
    m = info["model"]
    src = (
        f"{m.get('repo')}@{m.get('commit', m.get('revision'))}" if m.get("repo") else m.get("path")
    )
    console.print(
        f"model {m.get('served_name')} from {src}: {m['files']} files, {human(m['bytes'])}"
    )
    if info["images"]:
        t = Table("role", "ref", "digest", "platform", "layers", "size")
        for img in info["images"]:
            t.add_row(
                img["role"],
                img["ref"],
                img["digest"][:19],
                img["platform"],
                str(img["layers"]),
                human(img["bytes"]),
            )
        console.print(t)
    for e in info["elastic"]:
        console.print(f"elastic {e['path']} {human(e['bytes'])}")
    console.print(f"total: {info['files']} files, {human(info['total_bytes'])}")


def render_checks(checks: list[Any]) -> None:
    """The preflight table, on stderr."""
    table = Table("check", "result", "detail", title="preflight")
    for c in checks:
        mark = {True: "[green]ok[/green]", False: "[red]FAIL[/red]", None: "[yellow]warn[/yellow]"}
        table.add_row(c.name, mark[c.ok], c.detail)
    Console(stderr=True).print(table)
