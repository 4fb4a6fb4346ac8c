"""Everything the CLI shows: results for humans and ``--json``, progress bars, the preflight.

Results go to stdout, notes and progress to stderr. ``--json`` prints a result's own
``to_json()``. rich is imported only where a table or a bar is drawn.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bundler.cli.output_delta import delta_line
from bundler.cli.output_elastic import show_elastic, show_kubernetes, show_release_elastic
from bundler.fmt import human
from bundler.progress import NullReporter, Reporter

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from bundler.build import DryRun, LockWritten, RemotePart
    from bundler.bundle.plan import BuildResult
    from bundler.bundle.policy import VerifyResult
    from bundler.describe import BundleInfo
    from bundler.install.options import Check, InstallResult
    from bundler.install.report import StatusReport
    from bundler.toolbundle.update import UpdateResult


def print_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2))


# -- progress and notes (stderr) -----------------------------------------------------------


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
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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


def note(message: str) -> None:
    click.echo(f"note: {message}", err=True)


def show_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


def show_keygen(keyfile: Path) -> None:
    click.echo(f"private key: {keyfile} (keep it on the connected side)", err=True)
    click.echo(f"public key:  {keyfile}.pub (give it to the air-gapped host)", err=True)


def render_checks(checks: Sequence[Check]) -> None:
    """The preflight table, on stderr."""
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "result", "detail", title="preflight")
    for c in checks:
        mark = {True: "[green]ok[/green]", False: "[red]FAIL[/red]", None: "[yellow]warn[/yellow]"}
        table.add_row(c.name, mark[c.ok], c.detail)
    Console(stderr=True).print(table)


# -- build, lock, fetch --------------------------------------------------------------------


def show_build(result: BuildResult) -> None:
    click.echo(
        f"built {result.index.name} v{result.index.version}: {len(result.index.files)} files, "
        f"{human(result.size)}, expires {result.index.expires}"
    )
    for p in result.outputs:
        click.echo(f"  {p}")
    click.echo(
        f"index sha256 {result.index_sha256}; signed by "
        + ", ".join(k[:16] for k in result.signers)
    )
    lic = result.index.lock.license
    if lic is not None:
        from bundler.sbom.licences import describe

        accepted = result.index.manifest.get("model", {}).get("license_accepted")
        note = f"; accepted: {accepted}" if accepted else ""
        click.echo(f"model licence: {describe(lic)}{note}")
    if result.sbom is not None:
        for line in result.sbom.summary.lines():
            click.echo(line)
    from bundler.bundle.plan import DeltaSummary

    if (d := DeltaSummary.of(result.index)) is not None:
        click.echo(delta_line(d))


def show_dry_run(plan: DryRun) -> None:
    for line in plan.lock_changes:
        click.echo(f"lock change: {line}")
    for what, n in plan.to_fetch:
        click.echo(f"  {human(n):>10}  {what}")
    click.echo(
        f"would download {len(plan.to_fetch)} files, {human(plan.bytes)}; "
        f"{plan.cached} already cached"
    )


def show_lock(written: LockWritten) -> None:
    pins = written.pins
    model = pins.hf_model
    if model is not None:
        click.echo(
            f"model {model.repo}@{model.revision} = {model.commit} ({len(model.files)} files)"
        )
    for role, img in (pins.images or {}).items():
        click.echo(f"image {role} {img.ref} = {img.manifest_digest} ({img.platform})")
    for f in pins.elastic_files:
        click.echo(f"elastic {f.name} sha256 {f.sha256}")
    click.echo(f"wrote {written.path}")


def show_fetched(part: RemotePart) -> None:
    total = sum(p.size for p in part.payloads)
    click.echo(
        f"{len(part.payloads)} files ({human(total)}) verified in the cache; "
        f"{human(part.downloaded)} downloaded now"
        + (f"; wrote {part.lock_file}" if part.lock_written else "")
    )


# -- verify, sign, inspect -----------------------------------------------------------------


def show_verified(result: VerifyResult) -> None:
    rate = result.bytes_read / result.seconds / 1e6 if result.seconds else 0.0
    click.echo(
        f"OK {result.index.name} v{result.index.version}: signed by {len(result.signers)} "
        f"trusted key(s) ({', '.join(k[:16] for k in result.signers)}); "
        f"{len(result.index.carried)} files, {human(result.bytes_read)} verified in "
        f"{result.seconds:.1f}s ({rate:.0f} MB/s); expires {result.index.expires}"
    )
    from bundler.bundle.plan import DeltaSummary

    if (d := DeltaSummary.of(result.index)) is not None:  # not verified here: where it will be
        click.echo(delta_line(d))


def show_checked_before_signing(result: VerifyResult) -> None:
    click.echo(
        f"verified {result.index.name} v{result.index.version}: signed by "
        f"{', '.join(k[:16] for k in result.signers)}; {human(result.bytes_read)} checked",
        err=True,
    )


def render_inspect(info: BundleInfo) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info.name}[/bold] v{info.version}  ({info.format}, {info.tool})")
    console.print(f"created {info.created}  expires {info.expires}")
    console.print(f"index sha256 {info.index_sha256}")
    console.print(
        "signers (not verified here; use `airgap verify`): " + (", ".join(info.signers) or "none")
    )
    m = info.model
    if m.section:
        console.print(f"model {m.served_name} from {m.source}: {m.files} files, {human(m.bytes)}")
    if info.carries_tool:
        console.print(f"tool: {info.carries_tool}")
    if info.images:
        t = Table("role", "ref", "digest", "platform", "layers", "size")
        for img in info.images:
            t.add_row(
                img.role,
                img.ref,
                img.digest[:19],
                img.platform,
                str(img.layers),
                human(img.bytes),
            )
        console.print(t)
    for e in info.elastic:
        console.print(f"elastic {e.path} {human(e.bytes)}")
    console.print(f"total: {info.files} files, {human(info.total_bytes)}")
    if info.base is not None:
        console.print(delta_line(info.base))
    from bundler.cli.fitview import render_fit

    render_fit(console, info)
    if info.license is not None:
        from bundler.sbom.licences import describe

        note = f"; accepted by the builder: {info.license_accepted}"
        note = note if info.license_accepted else ""
        console.print(f"model licence: {describe(info.license)}{note}", markup=False)
    none = ["SBOM: none in this bundle (or not readable here)"]
    for line in info.sbom.lines() if info.sbom else none:
        console.print(line, markup=False)


# -- install, status, rollback, uninstall --------------------------------------------------


def show_install(result: InstallResult) -> None:
    if result.status == "dry-run":
        click.echo(
            f"dry run: {result.name} v{result.version} would install into "
            f"{result.release}; nothing was changed"
        )
    elif result.status == "unchanged":
        click.echo(
            f"{result.name} v{result.version} is already installed and current; nothing changed"
        )
    elif result.status == "reactivated":
        click.echo(f"{result.name} v{result.version} was installed already; it is current again")
    else:
        click.echo(
            f"installed {result.name} v{result.version} into {result.release} "
            f"({human(result.bytes_read)} in {result.seconds:.1f}s)"
        )
        for img in result.images:
            click.echo(f"  image {img.role}: {img.ref} = {img.id}")
    if result.kubernetes:
        show_kubernetes(result.kubernetes)
    if result.serving and result.status != "dry-run":
        s = result.serving
        proof = "(answered a chat completion)" if not result.kubernetes else "(public URL)"
        click.echo(f"serving {s.model} at {s.url} {proof}")
        plan = (result.elastic or {}).get("plan") or {}
        who = "Elasticsearch" if plan.get("wiring") == "inference-endpoint" else "Kibana"
        click.echo(f"  trust this CA in {who}: {s.ca_cert}")
        click.echo("  bearer token: `airgap status --show-token` (stored 0600 under the prefix)")
    if result.elastic and result.status != "dry-run":
        show_elastic(result.elastic)


def show_status(report: StatusReport) -> None:
    click.echo(
        f"{report.prefix}: current {report.current or '(none)'} - "
        + ("healthy" if report.ok else "NOT healthy")
    )
    for rel in report.releases:
        mark = "*" if rel.active else " "
        state = "ok" if rel.healthy else "damaged"
        click.echo(f" {mark} {rel.release}  {state}  installed {rel.installed_at}")
        if rel.base_chain:
            click.echo(f"      delta of {' <- '.join(rel.base_chain)}")
        for img in rel.images:
            seen = "present" if img.present else "MISSING"
            click.echo(f"      {img.record.role}: {img.record.ref} {seen}")
        serving = rel.serving
        if serving:
            running = ", ".join(
                f"{k} {'running' if v else 'STOPPED'}" for k, v in serving.containers.items()
            )
            click.echo(
                f"      serving {serving.url}: {running}; /health through nginx: {serving.health}"
            )
        if rel.cluster:
            c = rel.cluster
            click.echo(
                f"      kubernetes {c['namespace']}/{c['deployment']}: base {c['base']} "
                f"{c['base_state']}; rollout {c['rollout']}"
                + (f"; images {c['images']}" if "images" in c else "")
            )
        show_release_elastic(rel.elastic.to_json() if rel.elastic else {}, rel.elastic_live)
    for t in report.es_truststores:
        detail = f": {t['detail']}" if t["detail"] else ""
        click.echo(f"  Elasticsearch trust store {t['store']}: {t['state']}{detail}")


def show_rollback(key: str, notes: Sequence[str]) -> None:
    click.echo(f"current is now {key}")
    for line in notes:
        click.echo(f"  {line}")


def show_removed(lines: Sequence[str]) -> None:
    for line in lines:
        click.echo(line if line.startswith("note:") else f"removed {line}")


def show_self_update(result: UpdateResult) -> None:
    for line in result.log.splitlines():
        click.echo(f"  {line}")
    entry = result.prefix / "bin" / "airgap"
    if result.status == "unchanged":
        click.echo(f"airgap {result.after} is current already in {result.prefix}; nothing changed")
    else:
        was = f" (was {result.before}; `airgap self-update --rollback` returns to it)"
        click.echo(f"{entry} is now airgap {result.after}{was if result.before else ''}")
