"""``airgap`` command line: the group, the commands of each stage, and the one error handler.

Each stage lives in its own module and only parses options, calls one core function
and renders its result (:mod:`bundler.cli.output`). All errors are rendered here, in
one place: one line naming what failed, one line with the fix, and the exit code from
:mod:`bundler.errors`' table. An exception that is none of ours is a bug (or an input
no check caught yet): it too becomes one ``internal error`` line, and its traceback is
shown only with ``--debug`` (or ``AIRGAP_DEBUG=1``).
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from bundler import __version__, env
from bundler.cli import build, elastic_trust, install, manage, sbom, tool, trust
from bundler.cli.options import State
from bundler.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, AirgapError

DEBUG_HINT = "rerun with `airgap --debug …` (or AIRGAP_DEBUG=1) to see the traceback"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="airgap")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; errors only on stderr.")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the Python traceback of an unexpected error, and debug logging "
    "(also AIRGAP_DEBUG=1).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Carry a private LLM stack for Elastic into an air-gapped network, verified.

    \b
    Exit codes: 0 ok · 1 operational failure · 2 usage or invalid input
                3 verification/trust failure (signature, expiry, damaged bundle) · 130 interrupted
    """
    level = logging.DEBUG if debug else logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = State(verbose, quiet)


# The connected side (cli/build.py).
for command in (build.validate, build.schema, build.lock, build.fetch, build.build):
    cli.add_command(command)
# airgap itself across the gap (cli/tool.py): tool-bundle here, self-update there.
cli.add_command(tool.tool_bundle)
cli.add_command(tool.self_update)
# Keys and proof (cli/trust.py). `sbom` (a bundle's contents, for auditors) goes here,
# beside inspect.
for command in (trust.keygen, trust.sign, trust.verify, trust.inspect, sbom.sbom):
    cli.add_command(command)
# The air-gapped side (cli/install.py, cli/manage.py, cli/elastic_trust.py).
cli.add_command(install.install)
for command in (manage.status, manage.rollback, manage.uninstall):
    cli.add_command(command)
cli.add_command(elastic_trust.elastic_truststore)


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def _internal_error(e: BaseException, debug: bool) -> None:
    """An exception none of our checks turned into an AirgapError: one line, exit 1."""
    if debug:
        traceback.print_exception(e)
    what = None
    if isinstance(e, RecursionError):
        what = "input nested too deeply to process"
    elif isinstance(e, MemoryError):
        what = "out of memory"
    elif isinstance(e, UnicodeError):
        what = "text that is not valid UTF-8 (or cannot become it)"
    detail = _one_line(str(e)) or "(no message)"
    click.echo(
        f"error: internal error: {type(e).__name__}: {detail}" + (f" ({what})" if what else ""),
        err=True,
    )
    click.echo(
        f"hint: airgap did not expect this; {DEBUG_HINT}, and report it with the command "
        "that caused it.",
        err=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the one place errors become messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    options = args[: args.index("--")] if "--" in args else args
    debug = env.debug() or "--debug" in options
    try:
        rv = cli.main(args=argv, prog_name="airgap", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code if e.exit_code else EXIT_USAGE)
    except AirgapError as e:
        if debug:
            traceback.print_exception(e)
        click.echo(f"error: {e.message}", err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was left half-written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:  # an I/O failure no core function translated: still one clear line
        if debug:
            traceback.print_exception(e)
        from bundler import net

        if net.from_http_client(e) and net.kind_of(e) != "other":
            click.echo(f"error: network: {net.describe(e)}", err=True)
            click.echo(
                f"hint: check the address, the network and any proxy; {DEBUG_HINT}.", err=True
            )
            sys.exit(EXIT_FAILURE)
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{_one_line(e.strerror or str(e))}", err=True)
        click.echo(
            "hint: check free space, permissions and the device; nothing was switched "
            "in, so running the same command again is safe.",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    except Exception as e:  # the backstop: never a traceback unless asked for
        _internal_error(e, debug)
        sys.exit(EXIT_FAILURE)
