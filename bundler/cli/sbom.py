"""``airgap sbom``: verify a bundle, then write its SBOM (CycloneDX as signed, or SPDX)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bundler.cli.options import trust_options
from bundler.cli.output import show_warnings
from bundler.cli.streamopts import stall_timeout_option
from bundler.cli.trust import bundle_argument, verify_bundle

if TYPE_CHECKING:
    from bundler.cli.options import TrustInputs


@click.command()
@bundle_argument
@trust_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["cyclonedx-json", "spdx-json"]),
    default="cyclonedx-json",
    show_default=True,
    help="cyclonedx-json: the signed member, byte for byte; spdx-json: SPDX 2.3 made from it.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here (atomically) instead of standard output.",
)
@stall_timeout_option
def sbom(
    bundle: str,
    trust: TrustInputs,
    fmt: str,
    output: Path | None,
    stall_timeout: float,
    start_timeout: float,
) -> None:
    """Verify BUNDLE (signatures and every byte), then write its SBOM.

    Hand the file to a scanner with an offline database on this side of the gap, e.g.
    `grype sbom:FILE`, `trivy sbom FILE`, or an upload to Dependency-Track.
    """
    from bundler.errors import UsageError
    from bundler.fsutil import atomic_write_bytes
    from bundler.sbom.generate import sbom_reference
    from bundler.sbom.member import SbomCapture, parse_sbom
    from bundler.sbom.model import SBOM_PATH, summarize

    capture = SbomCapture(SBOM_PATH)
    result = verify_bundle(
        bundle,
        trust,
        as_json=False,
        stall_timeout=stall_timeout,
        start_timeout=start_timeout,
        sink=capture,
    )
    show_warnings(result.warnings)
    if sbom_reference(result.index) is None or capture.data is None:
        raise UsageError(
            f"{result.location.label}: bundle {result.index.name} v{result.index.version} "
            f"carries no SBOM ({SBOM_PATH}); it was built by {result.index.tool}",
            hint="Rebuild it with an airgap that writes the SBOM (this one does).",
        )
    data = capture.data
    if fmt == "spdx-json":
        from bundler.sbom.spdx import to_spdx

        data = to_spdx(parse_sbom(data, result.location.label))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write_bytes(output, data)
    summary = summarize(parse_sbom(capture.data, result.location.label))
    click.echo(
        f"verified {result.index.name} v{result.index.version} "
        f"(index sha256 {result.index_sha256}); wrote {fmt} to {output or 'stdout'}",
        err=True,
    )
    for line in summary.lines():
        click.echo(line, err=True)
