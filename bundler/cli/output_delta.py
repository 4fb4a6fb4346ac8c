"""How a delta bundle is shown: what it carries and what its base gives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from bundler.fmt import human

if TYPE_CHECKING:
    from bundler.bundle.delta import DeltaPreview
    from bundler.bundle.plan import DeltaSummary


def delta_line(d: DeltaSummary) -> str:
    """What a delta carries and what its base must give, in one line."""
    return (
        f"delta of {d.name} v{d.version} (index sha256 {d.index_sha256}): carries "
        f"{d.carried_files} files ({human(d.carried_bytes)}); {d.reused_files} files "
        f"({human(d.reused_bytes)}) come from that base at install (its installed release, "
        "the engine, or --base-bundle), re-hashed there"
    )


def show_delta_preview(delta: DeltaPreview) -> None:
    base = delta.base
    click.echo(f"delta against {base.release} (index sha256 {base.sha256}):")
    for what, rows in (("carry", delta.carried), ("reuse", delta.reused)):
        for path, n in rows:
            click.echo(f"  {what}  {human(n):>10}  {path}")
    click.echo(
        f"would carry {len(delta.carried)} files, {human(delta.carried_bytes)}; reuse "
        f"{len(delta.reused)} files, {human(delta.reused_bytes)}, from the base"
    )
