"""What is installed: ``status``, ``rollback``, ``uninstall``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bundler.cli.k8s_options import apply_option
from bundler.cli.options import elastic_access_options, host_options
from bundler.cli.output import print_json, show_removed, show_rollback, show_status
from bundler.errors import EXIT_FAILURE

if TYPE_CHECKING:
    from bundler.cli.options import HostInputs
    from bundler.install.elastic.steps import ElasticAccess


@click.command()
@host_options
@elastic_access_options
@click.option("--deep", is_flag=True, help="Also re-hash every installed file.")
@click.option("--show-token", is_flag=True, help="Print the bearer token Kibana must send.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@apply_option
def status(
    host: HostInputs,
    access: ElasticAccess,
    deep: bool,
    show_token: bool,
    as_json: bool,
    apply: bool,
) -> None:
    """What is installed under --prefix, checked against what is really there (with
    Kibana/Elasticsearch credentials, also the connector, endpoint and default model)."""
    from bundler.install.layout import Layout
    from bundler.install.manage import status as run_status

    report = run_status(
        host.prefix, host.runtime, host.runtime_url, deep=deep, access=access, check_cluster=apply
    )
    if show_token:
        token_file = Layout(host.prefix).token_file
        if not token_file.exists():
            raise click.UsageError(f"{token_file}: no token (nothing is served here)")
        click.echo(token_file.read_text().strip())
        return
    if as_json:
        print_json(report.to_json())
    else:
        show_status(report)
    if not report.ok:
        sys.exit(EXIT_FAILURE)


@click.command()
@click.option(
    "--prefix",
    type=click.Path(path_type=Path, file_okay=False),
    default="/opt/airgap",
    show_default=True,
)
@click.option("--runtime-url", default=None, help="Engine API socket (default: as installed).")
@apply_option
def rollback(prefix: Path, runtime_url: str | None, apply: bool) -> None:
    """Make the previously active release current again, serving it as it was served (on
    Kubernetes: its base back in -o DIR, applied with --apply)."""
    from bundler.install.manage import rollback as run_rollback

    key, notes = run_rollback(prefix, runtime_url, apply=apply)
    show_rollback(key, notes)


@click.command()
@host_options
@elastic_access_options
@click.option(
    "--keep-elastic",
    is_flag=True,
    help="Leave the Kibana connector and the ELSER endpoint airgap created.",
)
@apply_option
def uninstall(host: HostInputs, access: ElasticAccess, keep_elastic: bool, apply: bool) -> None:
    """Remove what airgap installed under --prefix (and only that), including the Kibana
    connector and inference endpoint it created."""
    from bundler.install.manage import uninstall as run_uninstall

    access = dataclasses.replace(access, keep=keep_elastic)
    show_removed(run_uninstall(host.prefix, host.runtime, host.runtime_url, access, apply))
