"""``airgap elastic-truststore``: make an Elasticsearch node's JVM trust the endpoint's CA."""

from __future__ import annotations

from pathlib import Path

import click

from bundler.cli.options import dir_option, file_option, json_option
from bundler.cli.output import print_json


@click.command("elastic-truststore")
@dir_option("--es-home", help="The node's Elasticsearch home, with the bundled jdk/ in it.")
@dir_option("--es-path-conf", help="The node's config directory (holds elasticsearch.yml).")
@file_option("--ca", exists=True, help="The CA to trust (default: the one installed here).")
@click.option(
    "--prefix",
    type=click.Path(path_type=Path, file_okay=False),
    default="/opt/airgap",
    show_default=True,
    help="The install whose CA is the default, and where status finds this node again.",
)
@click.option(
    "--print-docker",
    is_flag=True,
    help="Print the container-image lines instead (update-ca-trust / update-ca-certificates).",
)
@file_option("--write-script", help="Write the self-contained es-truststore.sh here instead.")
@json_option
def elastic_truststore(
    es_home: Path | None,
    es_path_conf: Path | None,
    ca: Path | None,
    prefix: Path,
    print_docker: bool,
    write_script: Path | None,
    as_json: bool,
) -> None:
    """Build the node's inference trust store: a copy of its bundled JDK's cacerts plus the
    CA, made with the node's own keytool, and the jvm.options.d file that points the JVM
    at it. Elasticsearch calls inference services (the model) through that trust store
    only. Run it on every node, then restart them one at a time."""
    from bundler.install.elastic import truststore_script as script
    from bundler.install.elastic.truststore import build_truststore
    from bundler.install.elastic.truststore_state import installed_ca, record_node

    if print_docker and write_script:
        raise click.UsageError("--print-docker and --write-script: choose one")
    ca = ca or installed_ca(prefix)
    if print_docker:
        click.echo(script.docker_lines(ca), nl=False)
        return
    if write_script:
        path = script.write_script(write_script, ca)
        if as_json:
            print_json({"script": str(path), "ca": str(ca)})
        else:
            click.echo(f"wrote {path} (the CA {ca} inlined)")
            click.echo(f"next: {script.node_command(path)}")
        return
    if es_home is None or es_path_conf is None:
        raise click.UsageError("--es-home and --es-path-conf are required (or --write-script)")
    result = build_truststore(es_home, es_path_conf, ca)
    recorded = record_node(prefix, es_home, result)
    if as_json:
        print_json(
            {
                "store": str(result.store),
                "options_file": str(result.options_file),
                "alias": result.alias,
                "fingerprint": result.fingerprint,
                "action": result.action,
                "notes": list(result.notes),
                "recorded": str(recorded) if recorded else None,
                "next": result.restart_step,
            }
        )
        return
    click.echo(f"trust store {result.store}: {result.action} (CA {ca} as {result.alias})")
    click.echo(f"JVM options {result.options_file} (0640, the config directory's group)")
    for line in result.notes:
        click.echo(f"warning: {line}", err=True)
    if recorded is None:
        click.echo(
            f"note: no install under {prefix}, so `airgap status` will not watch this store; "
            "rerun this command after every Elasticsearch upgrade",
            err=True,
        )
    click.echo(f"next: {result.restart_step}")
