"""airgap itself across the gap: ``tool-bundle`` (connected side) and ``self-update``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bundler.cli.options import (
    dir_option,
    json_option,
    passphrase_option,
    read_passphrase,
    reporter,
    signed_by_options,
)
from bundler.cli.output import print_json, show_build, show_self_update

if TYPE_CHECKING:
    from bundler.cli.options import TrustInputs


@click.command("tool-bundle")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Tool bundle to write, e.g. airgap-tool-0.1.0.tar.",
)
@click.option(
    "--key",
    "keys",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    required=True,
    help="Signing key (repeat for several signers).",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="TAG",
    help="Wheel platform of the air-gapped hosts (repeatable; default manylinux2014_x86_64).",
)
@click.option(
    "--python",
    "pythons",
    multiple=True,
    metavar="X.Y",
    help="CPython version to carry wheels for (repeatable; default 3.11, 3.12 and 3.13).",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="airgap's source tree or a built airgap wheel (default: this checkout).",
)
@click.option(
    "--find-links",
    "find_links",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Directory of wheels pip may use (repeatable).",
)
@click.option("--no-index", is_flag=True, help="Use only --find-links: no package index.")
@dir_option("--cache-dir", "Cache directory (pip's cache goes in its pip/ folder).")
@click.option(
    "--expires-days",
    type=click.IntRange(1, 3650),
    default=365,
    show_default=True,
    help="Validity of the signed index.",
)
@passphrase_option
@json_option
def tool_bundle(
    output: Path,
    keys: tuple[Path, ...],
    platforms: tuple[str, ...],
    pythons: tuple[str, ...],
    source: Path | None,
    find_links: tuple[Path, ...],
    no_index: bool,
    cache_dir: Path | None,
    expires_days: int,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Write airgap itself as a signed, offline-installable tool bundle.

    It carries airgap's wheel and every dependency for each --platform and --python,
    tool/install.sh (POSIX sh: checks the bundle with openssl and sha256sum, then
    installs into a virtualenv) and tool/README.txt.
    """
    from bundler import env
    from bundler.bundle.signing import load_signing_key
    from bundler.toolbundle import DEFAULT_PLATFORMS, DEFAULT_PYTHONS
    from bundler.toolbundle.build import ToolBundleOptions, build_tool_bundle
    from bundler.toolbundle.wheelhouse import WheelhouseOptions

    wheelhouse = WheelhouseOptions(
        pythons=tuple(dict.fromkeys(pythons)) or DEFAULT_PYTHONS,
        platforms=tuple(dict.fromkeys(platforms)) or DEFAULT_PLATFORMS,
        find_links=tuple(p.absolute() for p in find_links),
        no_index=no_index,
        pip_cache=(cache_dir or env.cache_dir()).absolute() / "pip",
    )
    pw = read_passphrase(passphrase_file)
    opts = ToolBundleOptions(
        output=output,
        keys=tuple(load_signing_key(k, pw) for k in keys),
        wheelhouse=wheelhouse,
        source=source,
        expires_days=expires_days,
    )
    with reporter(as_json) as r:
        result = build_tool_bundle(opts, r)
    if as_json:
        print_json(result.to_json())
    else:
        show_build(result)


@click.command("self-update")
@click.argument("tool_bundle_file", metavar="TOOL-BUNDLE", required=False)
@signed_by_options
@click.option(
    "--prefix",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where install.sh installed airgap (default: where this airgap runs from).",
)
@click.option("--python", default=None, help="System Python for the new version's venv.")
@click.option("--allow-downgrade", is_flag=True, help="Install an older version on purpose.")
@click.option("--rollback", is_flag=True, help="Switch back to the version before the last update.")
@json_option
def self_update(
    tool_bundle_file: str | None,
    trust: TrustInputs,
    prefix: Path | None,
    python: str | None,
    allow_downgrade: bool,
    rollback: bool,
    as_json: bool,
) -> None:
    """Verify TOOL-BUNDLE and install the airgap it carries beside this one.

    The new version goes into PREFIX/versions/<version>; PREFIX/current switches to it
    in one step and the version before stays for --rollback. Releases installed by
    the old version keep working.
    """
    from bundler.toolbundle import update

    if rollback:
        if tool_bundle_file is not None:
            raise click.UsageError("--rollback takes no TOOL-BUNDLE")
        result = update.rollback(prefix)
    else:
        if tool_bundle_file is None:
            raise click.UsageError("give the TOOL-BUNDLE to install (or --rollback)")
        if not trust.given:
            raise click.UsageError("give --trusted-key (or --trust-dir): the tool bundle's signer")
        keys = list(trust.trusted_keys)
        if trust.trust_dir is not None:
            keys += sorted(trust.trust_dir.glob("*.pub"))
        result = update.self_update(
            tool_bundle_file,
            trust.load(),
            keys,
            threshold=trust.threshold,
            prefix=prefix,
            python=python,
            allow_downgrade=allow_downgrade,
        )
    if as_json:
        print_json(result.to_json())
    else:
        show_self_update(result)
