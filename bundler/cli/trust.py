"""Keys and proof: ``keygen``, ``sign``, ``verify``, ``inspect``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bundler.boundedio import DEFAULT_STALL_TIMEOUT, DEFAULT_START_TIMEOUT
from bundler.cli.options import (
    json_option,
    passphrase_option,
    read_passphrase,
    reporter,
    signed_by_options,
    state,
    trust_options,
)
from bundler.cli.output import (
    print_json,
    render_inspect,
    show_checked_before_signing,
    show_keygen,
    show_verified,
    show_warnings,
)
from bundler.cli.streamopts import stall_timeout_option

if TYPE_CHECKING:
    from bundler.bundle.policy import Sink, VerifyResult
    from bundler.cli.options import TrustInputs

bundle_argument = click.argument("bundle", type=str)


@click.command()
@click.argument("keyfile", type=click.Path(path_type=Path, dir_okay=False))
@passphrase_option
def keygen(keyfile: Path, passphrase_file: Path | None) -> None:
    """Create an Ed25519 signing key KEYFILE (0600) and its public key KEYFILE.pub."""
    from bundler.bundle.signing import generate_keypair

    keyid = generate_keypair(keyfile, read_passphrase(passphrase_file))
    click.echo(keyid)
    if not state().quiet:
        show_keygen(keyfile)


def verify_bundle(
    bundle: str,
    trust: TrustInputs,
    *,
    as_json: bool,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    sink: Sink | None = None,
) -> VerifyResult:
    """One verifying pass (signatures, threshold, every byte) with a progress bar;
    ``sink`` (optional) gets the payload as it streams (``airgap sbom`` keeps one member)."""
    from bundler.bundle.detached import collect_signatures
    from bundler.bundle.parts import locate_bundle
    from bundler.bundle.policy import TrustPolicy
    from bundler.bundle.reader import read_bundle

    trusted = trust.load()
    loc = locate_bundle(bundle)
    detached = collect_signatures(loc, trust.signatures)
    with reporter(as_json) as r:
        r.stage("verifying", sum(p.size for p in loc.parts) or None)
        return read_bundle(
            loc,
            TrustPolicy(trusted, trust.threshold),
            sink,
            detached=detached,
            progress=r.advance,
            stall_timeout=stall_timeout,
            start_timeout=start_timeout,
        )


@click.command()
@bundle_argument
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Co-signer's private key.",
)
@passphrase_option
@signed_by_options
@click.option(
    "--no-verify", is_flag=True, help="Sign without checking the bundle first (not advised)."
)
def sign(
    bundle: str, key: Path, passphrase_file: Path | None, trust: TrustInputs, no_verify: bool
) -> None:
    """Verify BUNDLE, then add a detached co-signature BUNDLE.<keyid>.sig.

    A co-signer vouches for the bytes: by default the bundle's existing signatures (by
    --trusted-key / --trust-dir) and every byte are checked first, as `airgap verify`
    does. The bundle itself is not rewritten.
    """
    from bundler.bundle.cosign import cosign, read_unverified
    from bundler.bundle.signing import load_signing_key

    if bundle == "-":
        raise click.UsageError("`airgap sign` needs the bundle file, not - (stdin)")
    signing = load_signing_key(key, read_passphrase(passphrase_file))
    if no_verify:
        loc, index_bytes = read_unverified(bundle)
    else:
        if not trust.given:
            raise click.UsageError(
                "give --trusted-key (or --trust-dir) with the key(s) that signed the bundle, "
                "so it is verified before you sign it (or --no-verify to sign unchecked)"
            )
        result = verify_bundle(bundle, trust, as_json=False)
        show_checked_before_signing(result)
        # Sign exactly what was verified: the index and parts list as read, not re-read.
        loc, index_bytes = result.location, result.index_bytes
    with reporter() as r:
        if loc.parts_list_bytes is not None:
            r.stage("hashing parts", sum(p.size for p in loc.parts))
        written = cosign(loc, index_bytes, signing, progress=r.advance)
    for p in written:
        click.echo(str(p))


@click.command()
@bundle_argument
@trust_options
@stall_timeout_option
@json_option
def verify(
    bundle: str, trust: TrustInputs, stall_timeout: float, start_timeout: float, as_json: bool
) -> None:
    """Verify BUNDLE (a file, its first .part-000, or - for stdin): signatures, every byte."""
    result = verify_bundle(
        bundle,
        trust,
        as_json=as_json,
        stall_timeout=stall_timeout,
        start_timeout=start_timeout,
    )
    show_warnings(result.warnings)
    if as_json:
        print_json(result.to_json())
    else:
        show_verified(result)


@click.command()
@bundle_argument
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--index",
    "raw_index",
    is_flag=True,
    help="Print the signed airgap/index.json exactly as it is in BUNDLE (its sha256 is "
    "the index sha256 that verify and the receipt report).",
)
def inspect(bundle: str, as_json: bool, raw_index: bool) -> None:
    """Show what BUNDLE carries (reads only its index; `airgap verify` proves it)."""
    from bundler.bundle.detached import collect_signatures
    from bundler.bundle.parts import locate_bundle
    from bundler.bundle.reader import read_head
    from bundler.describe import describe
    from bundler.sbom.member import sbom_summary

    if raw_index and as_json:
        raise click.UsageError("--index prints the index itself: drop --json")
    loc = locate_bundle(bundle)
    head = read_head(loc)
    if raw_index:
        sys.stdout.buffer.write(head.index_bytes)
        sys.stdout.buffer.flush()
        return
    signers = sorted({k for k, _ in head.embedded} | {k for k, _ in collect_signatures(loc)})
    info = describe(head.index, head.index_sha256, signers, sbom_summary(head))
    if as_json:
        print_json(info.to_json())
    else:
        render_inspect(info)
