"""``airgap`` command line: parse options, call one core function, render the result.

All errors are rendered here, in one place: one line naming what failed, one
line with the fix, and the exit code from :mod:`bundler.errors`' table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bundler import __version__, env
from bundler.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, AirgapError
from bundler.fmt import human
from bundler.progress import NullReporter

if TYPE_CHECKING:
    from bundler.bundle.parts import BundleLocation
    from bundler.bundle.reader import VerifyResult

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("bundler")

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4G`` -> 4 GiB. Suffixes K, M, G, T are binary (powers of 1024)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size like 4G, 700M or 1073741824")
    factor = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * factor)


class _State:
    def __init__(self, verbose: int, quiet: bool) -> None:
        self.verbose = verbose
        self.quiet = quiet


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="airgap")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; errors only on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Carry a private LLM stack for Elastic into an air-gapped network, verified.

    \b
    Exit codes: 0 ok · 1 operational failure · 2 usage or invalid input
                3 verification/trust failure (signature, expiry, damaged bundle) · 130 interrupted
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = _State(verbose, quiet)


def _state() -> _State:
    obj = click.get_current_context().find_root().obj
    assert isinstance(obj, _State)
    return obj


@contextmanager
def _reporter(quiet: bool = False) -> Iterator[Any]:
    """Progress bars on an interactive stderr only; rich is not even imported otherwise."""
    if quiet or _state().quiet or not sys.stderr.isatty() or env.no_color():
        yield NullReporter()
        return
    from bundler.cli.render import make_reporter

    with make_reporter(False) as r:
        yield r


def _passphrase(passphrase_file: Path | None) -> bytes | None:
    from bundler.bundle.signing import read_passphrase

    return read_passphrase(passphrase_file)


passphrase_option = click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the key passphrase (else AIRGAP_KEY_PASSPHRASE; never on the command line).",
)


@cli.command()
@click.argument("keyfile", type=click.Path(path_type=Path, dir_okay=False))
@passphrase_option
def keygen(keyfile: Path, passphrase_file: Path | None) -> None:
    """Create an Ed25519 signing key KEYFILE (0600) and its public key KEYFILE.pub."""
    from bundler.bundle.signing import generate_keypair

    keyid = generate_keypair(keyfile, _passphrase(passphrase_file))
    click.echo(keyid)
    if not _state().quiet:
        click.echo(f"private key: {keyfile} (keep it on the connected side)", err=True)
        click.echo(f"public key:  {keyfile}.pub (give it to the air-gapped host)", err=True)


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
def validate(manifest: Path) -> None:
    """Check a manifest without fetching anything."""
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    click.echo(f"{manifest}: ok ({m.name} v{m.version}, model {m.model.served_name})")


@cli.command()
def schema() -> None:
    """Print the manifest's JSON Schema."""
    from bundler.manifest import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


def fetch_options(f: F) -> F:
    f = click.option(
        "--images-from",
        type=click.Choice(["registry", "docker"]),
        default="registry",
        show_default=True,
        help="Pull image references from their registries, or export them from "
        "the local Docker engine (DOCKER_HOST) where a daemon login is "
        "needed.",
    )(f)
    f = click.option(
        "--jobs",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Parallel downloads.",
    )(f)
    f = click.option(
        "--registry-ca",
        "fetch_registry_ca",
        default=None,
        type=click.Path(path_type=Path, dir_okay=False),
        help="CA bundle for registries with a private CA.",
    )(f)
    f = click.option(
        "--insecure-registry",
        "insecure_registries",
        multiple=True,
        metavar="HOST[:PORT]",
        help="Registry to reach over plain HTTP (loopback ones always are).",
    )(f)
    return click.option(
        "--cache-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Cache directory (default: AIRGAP_CACHE_DIR or ~/.cache/airgap).",
    )(f)


def _fetch_opts(
    jobs: int, insecure: tuple[str, ...], ca: Path | None, images_from: str = "registry"
) -> Any:
    from bundler.fetch.remote import FetchOptions

    return FetchOptions(
        jobs=jobs, insecure_registries=frozenset(insecure), registry_ca=ca, images_from=images_from
    )


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Bundle file to write (split parts get .part-NNN appended).",
)
@click.option(
    "--key",
    "keys",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    required=True,
    help="Signing key (repeat for several signers).",
)
@click.option("--split-size", type=str, default=None, help="Cut the bundle into parts, e.g. 4G.")
@click.option(
    "--expires-days",
    type=click.IntRange(1, 3650),
    default=None,
    help="Validity of the signed index (overrides the manifest).",
)
@click.option(
    "--chunk-size",
    type=str,
    default="64M",
    show_default=True,
    help="Verification chunk (power of two, 64K..1G).",
)
@fetch_options
@click.option(
    "--no-hash-cache",
    is_flag=True,
    help="Hash every local source again instead of reusing remembered digests.",
)
@click.option(
    "--update-lock",
    is_flag=True,
    help="Accept upstream changes since the lock (a moved tag or branch) and rewrite it.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve and list what would be downloaded, with sizes; build nothing.",
)
@passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(
    manifest: Path,
    output: Path,
    keys: tuple[Path, ...],
    split_size: str | None,
    expires_days: int | None,
    chunk_size: str,
    cache_dir: Path | None,
    insecure_registries: tuple[str, ...],
    fetch_registry_ca: Path | None,
    jobs: int,
    images_from: str,
    no_hash_cache: bool,
    update_lock: bool,
    dry_run: bool,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Build a signed bundle from MANIFEST (SOURCE_DATE_EPOCH sets its creation time).

    Remote sources are resolved against MANIFEST's lock (<name>.lock.json, written on
    first use), fetched into the cache (resumable, verified), then bundled.
    """
    from bundler.build import BuildOptions
    from bundler.build import build as run_build
    from bundler.bundle.signing import load_signing_key
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    opts = BuildOptions(
        output=output,
        keys=(),
        split_size=parse_size(split_size) if split_size else None,
        expires_days=expires_days,
        chunk_size=parse_size(chunk_size),
        cache_dir=cache_dir or env.cache_dir(),
        no_hash_cache=no_hash_cache,
        update_lock=update_lock,
        fetch=_fetch_opts(jobs, insecure_registries, fetch_registry_ca, images_from),
    )
    if dry_run:
        _show_dry_run(m, opts, as_json)
        return
    pw = _passphrase(passphrase_file)
    opts = dataclasses.replace(opts, keys=tuple(load_signing_key(k, pw) for k in keys))
    with _reporter(as_json) as reporter:
        result = run_build(m, opts, reporter)
    out = {
        "name": result.index.name,
        "version": result.index.version,
        "outputs": [str(p) for p in result.outputs],
        "bytes": result.size,
        "files": len(result.index.files),
        "index_sha256": result.index_sha256,
        "signers": list(result.signers),
        "expires": result.index.expires,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"built {out['name']} v{out['version']}: {len(result.index.files)} files, "
        f"{human(result.size)}, expires {out['expires']}"
    )
    for p in result.outputs:
        click.echo(f"  {p}")
    click.echo(
        f"index sha256 {result.index_sha256}; signed by "
        + ", ".join(k[:16] for k in result.signers)
    )


def _show_dry_run(m: Any, opts: Any, as_json: bool) -> None:
    from bundler.build import DryRun, fetch_remote, has_remote
    from bundler.fetch.cache import Cache

    if not has_remote(m):
        click.echo("all sources are local: nothing to download")
        return
    cache = Cache(opts.cache_dir)
    try:
        report = fetch_remote(m, opts, cache, dry_run=True)
    finally:
        cache.close()
    assert isinstance(report, DryRun)
    total = sum(n for _, n in report.to_fetch)
    if as_json:
        doc = {
            "lock": str(report.lock_file),
            "lock_changes": report.lock_changes,
            "to_fetch": [{"what": w, "bytes": n} for w, n in report.to_fetch],
            "bytes": total,
            "cached": report.cached,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for line in report.lock_changes:
        click.echo(f"lock change: {line}")
    for what, n in report.to_fetch:
        click.echo(f"  {human(n):>10}  {what}")
    click.echo(
        f"would download {len(report.to_fetch)} files, {human(total)}; "
        f"{report.cached} already cached"
    )


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@fetch_options
def lock(
    manifest: Path,
    cache_dir: Path | None,
    insecure_registries: tuple[str, ...],
    fetch_registry_ca: Path | None,
    jobs: int,
    images_from: str,
) -> None:
    """Resolve MANIFEST's remote sources and write <manifest>.lock.json (pins only)."""
    from bundler.build import has_remote
    from bundler.fetch.cache import Cache
    from bundler.fetch.remote import Fetcher
    from bundler.lock import lock_path, save_lock
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    if not has_remote(m):
        click.echo("all sources are local: no lock needed")
        return
    cache = Cache(cache_dir or env.cache_dir())
    try:
        pins = Fetcher(
            cache,
            64 * 1024 * 1024,
            _fetch_opts(jobs, insecure_registries, fetch_registry_ca, images_from),
        ).resolve(m)
    finally:
        cache.close()
    path = lock_path(manifest)
    save_lock(path, pins, name=m.name, platform=m.platform)
    model = pins.get("model", {})
    if model:
        click.echo(
            f"model {model['repo']}@{model['revision']} = {model['commit']} "
            f"({len(model['files'])} files)"
        )
    for role, img in (pins.get("images") or {}).items():
        click.echo(f"image {role} {img['ref']} = {img['manifest_digest']} ({img['platform']})")
    for f in (pins.get("elastic") or {}).get("files", []):
        click.echo(f"elastic {f['name']} sha256 {f['sha256']}")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@fetch_options
@click.option("--update-lock", is_flag=True, help="Accept upstream changes since the lock.")
def fetch(
    manifest: Path,
    cache_dir: Path | None,
    insecure_registries: tuple[str, ...],
    fetch_registry_ca: Path | None,
    jobs: int,
    images_from: str,
    update_lock: bool,
) -> None:
    """Download MANIFEST's remote sources into the cache (verified), without bundling."""
    from bundler.build import BuildOptions, RemotePart, fetch_remote, has_remote
    from bundler.fetch.cache import Cache
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    if not has_remote(m):
        click.echo("all sources are local: nothing to fetch")
        return
    opts = BuildOptions(
        output=Path("unused"),
        keys=(),
        cache_dir=cache_dir or env.cache_dir(),
        update_lock=update_lock,
        fetch=_fetch_opts(jobs, insecure_registries, fetch_registry_ca, images_from),
    )
    cache = Cache(opts.cache_dir or env.cache_dir())
    try:
        with _reporter() as reporter:
            part = fetch_remote(m, opts, cache, reporter)
    finally:
        cache.close()
    assert isinstance(part, RemotePart)
    total = sum(p.size for p in part.payloads)
    click.echo(
        f"{len(part.payloads)} files ({human(total)}) verified in the cache; "
        f"{human(part.downloaded)} downloaded now"
        + (f"; wrote {part.lock_file}" if part.lock_written else "")
    )


def _verify_bundle(
    bundle: str,
    trusted_keys: tuple[Path, ...],
    trust_dir: Path | None,
    require_signatures: int,
    signatures: tuple[Path, ...],
    *,
    as_json: bool,
) -> tuple[VerifyResult, BundleLocation]:
    """One verifying pass (signatures, threshold, every byte) with a progress bar."""
    from bundler.bundle.parts import locate_bundle
    from bundler.bundle.reader import (
        TrustPolicy,
        find_detached_signatures,
        read_bundle,
        read_detached,
    )
    from bundler.bundle.signing import load_trust

    trusted = load_trust(trusted_keys, trust_dir)
    loc = locate_bundle(bundle)
    detached = read_detached(find_detached_signatures(loc) + list(signatures))
    with _reporter(as_json) as reporter:
        reporter.stage("verifying", sum(p.size for p in loc.parts) or None)
        result = read_bundle(
            loc,
            TrustPolicy(trusted, require_signatures),
            None,
            detached=detached,
            progress=reporter.advance,
        )
    return result, loc


@cli.command()
@click.argument("bundle", type=str)
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Co-signer's private key.",
)
@passphrase_option
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Public key of a signer already on the bundle (repeatable).",
)
@click.option(
    "--trust-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of trusted *.pub keys.",
)
@click.option(
    "--require-signatures",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Distinct trusted signatures the bundle must already carry.",
)
@click.option(
    "--no-verify", is_flag=True, help="Sign without checking the bundle first (not advised)."
)
def sign(
    bundle: str,
    key: Path,
    passphrase_file: Path | None,
    trusted_keys: tuple[Path, ...],
    trust_dir: Path | None,
    require_signatures: int,
    no_verify: bool,
) -> None:
    """Verify BUNDLE, then add a detached co-signature BUNDLE.<keyid>.sig.

    A co-signer vouches for the bytes: by default the bundle's existing signatures (by
    --trusted-key / --trust-dir) and every byte are checked first, as `airgap verify`
    does. The bundle itself is not rewritten.
    """
    from bundler.bundle.cosign import cosign
    from bundler.bundle.signing import load_signing_key

    signing = load_signing_key(key, _passphrase(passphrase_file))
    verified_index: str | None = None
    if not no_verify:
        if not trusted_keys and trust_dir is None:
            raise click.UsageError(
                "give --trusted-key (or --trust-dir) with the key(s) that signed the bundle, "
                "so it is verified before you sign it (or --no-verify to sign unchecked)"
            )
        result, _ = _verify_bundle(
            bundle, trusted_keys, trust_dir, require_signatures, (), as_json=False
        )
        click.echo(
            f"verified {result.index.name} v{result.index.version}: signed by "
            f"{', '.join(k[:16] for k in result.signers)}; {human(result.bytes_read)} checked",
            err=True,
        )
        verified_index = result.index_sha256
    for p in cosign(bundle, signing, verified_index):
        click.echo(str(p))


def trust_options(f: F) -> F:
    f = click.option(
        "--require-signatures",
        type=click.IntRange(1, 64),
        default=1,
        show_default=True,
        help="Distinct trusted signers required.",
    )(f)
    f = click.option(
        "--trust-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Directory of trusted *.pub keys.",
    )(f)
    f = click.option(
        "--trusted-key",
        "trusted_keys",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False),
        help="A trusted public key (repeatable).",
    )(f)
    return click.option(
        "--signature",
        "signatures",
        multiple=True,
        type=click.Path(path_type=Path, dir_okay=False),
        help="Extra detached signature <name>.<keyid>.sig (for stdin input).",
    )(f)


@cli.command()
@click.argument("bundle", type=str)
@trust_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    bundle: str,
    trusted_keys: tuple[Path, ...],
    trust_dir: Path | None,
    require_signatures: int,
    signatures: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Verify BUNDLE (a file, its first .part-000, or - for stdin): signatures, every byte."""
    result, loc = _verify_bundle(
        bundle, trusted_keys, trust_dir, require_signatures, signatures, as_json=as_json
    )
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    rate = result.bytes_read / result.seconds / 1e6 if result.seconds else 0.0
    out = {
        "ok": True,
        "name": result.index.name,
        "version": result.index.version,
        "expires": result.index.expires,
        "index_sha256": result.index_sha256,
        "signers": list(result.signers),
        "untrusted_signers": list(result.untrusted_signers),
        "files": len(result.index.files),
        "bytes": result.bytes_read,
        "seconds": round(result.seconds, 3),
        "parts": [p.path.name for p in loc.parts] if loc.split else [],
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"OK {out['name']} v{out['version']}: signed by {len(result.signers)} trusted key(s) "
        f"({', '.join(k[:16] for k in result.signers)}); {out['files']} files, "
        f"{human(result.bytes_read)} verified in {result.seconds:.1f}s ({rate:.0f} MB/s); "
        f"expires {out['expires']}"
    )


@cli.command()
@click.argument("bundle", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(bundle: str, as_json: bool) -> None:
    """Show what BUNDLE carries (reads only its index; `airgap verify` proves it)."""
    from bundler.bundle.parts import locate_bundle
    from bundler.bundle.reader import find_detached_signatures, read_detached, read_head
    from bundler.describe import describe

    loc = locate_bundle(bundle)
    head = read_head(loc)
    signers = sorted(
        {k for k, _ in head.embedded} | {k for k, _ in read_detached(find_detached_signatures(loc))}
    )
    info = describe(head.index, head.index_sha256, signers)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from bundler.cli.render import render_inspect

    render_inspect(info)


def runtime_options(f: F) -> F:
    f = click.option(
        "--runtime-url",
        default=None,
        help="Engine API socket (default: DOCKER_HOST, or the engine's usual socket).",
    )(f)
    f = click.option(
        "--runtime",
        type=click.Choice(["docker", "podman"]),
        default="docker",
        show_default=True,
        help="Container engine that receives the images.",
    )(f)
    return click.option(
        "--prefix",
        type=click.Path(path_type=Path, file_okay=False),
        default="/opt/airgap",
        show_default=True,
        help="Where releases, state and the receipt live.",
    )(f)


def elastic_access_options(f: F) -> F:
    """Kibana/Elasticsearch credentials and TLS: from files or env, never the command line."""
    for product, env_name in (("es", "AIRGAP_ES_API_KEY"), ("kibana", "AIRGAP_KIBANA_API_KEY")):
        name = "Elasticsearch" if product == "es" else "Kibana"
        f = click.option(
            f"--{product}-insecure",
            is_flag=True,
            help=f"Do not verify {name}'s TLS certificate (test systems only).",
        )(f)
        f = click.option(
            f"--{product}-ca",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            default=None,
            help=f"CA bundle that signs {name}'s TLS certificate.",
        )(f)
        f = click.option(
            f"--{product}-credentials-file",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            default=None,
            help=f"File with one line user:password for {name} (mode 0600).",
        )(f)
        f = click.option(
            f"--{product}-api-key-file",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            default=None,
            help=f"File with a {name} API key (encoded form). Or set {env_name}.",
        )(f)
    return f


def _access(kw: dict[str, Any]) -> Any:
    from bundler import env
    from bundler.install.elastic.api import load_credentials
    from bundler.install.elastic.steps import ElasticAccess

    return ElasticAccess(
        kibana=load_credentials(
            "Kibana",
            "AIRGAP_KIBANA_API_KEY",
            env.kibana_api_key(),
            kw.pop("kibana_api_key_file"),
            kw.pop("kibana_credentials_file"),
        ),
        kibana_ca=kw.pop("kibana_ca"),
        kibana_insecure=kw.pop("kibana_insecure"),
        es=load_credentials(
            "Elasticsearch",
            "AIRGAP_ES_API_KEY",
            env.es_api_key(),
            kw.pop("es_api_key_file"),
            kw.pop("es_credentials_file"),
        ),
        es_ca=kw.pop("es_ca"),
        es_insecure=kw.pop("es_insecure"),
    )


@cli.command()
@click.argument("bundle", type=str)
@trust_options
@runtime_options
@click.option("--dry-run", is_flag=True, help="Verify trust and run the preflight; change nothing.")
@click.option("--allow-downgrade", is_flag=True, help="Install a lower version on purpose.")
@click.option("--no-gpu", is_flag=True, help="Do not expect a GPU (CPU images, tests).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8443,
    show_default=True,
    help="Nginx's TLS port: the only one published.",
)
@click.option(
    "--internal-port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="vLLM's port behind Nginx (loopback with host networking).",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="DNS name Kibana uses for this host (certificate SAN; repeatable).",
)
@click.option("--ip", "ips", multiple=True, help="IP address for the certificate (repeatable).")
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Your certificate (PEM, with chain) instead of a generated one.",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The key of --tls-cert.",
)
@click.option("--rotate-token", is_flag=True, help="Replace the bearer token and vLLM key.")
@click.option(
    "--gpus",
    default="all",
    show_default=True,
    help="GPUs for vLLM: all, or a list like 0,1 (--no-gpu for none).",
)
@click.option(
    "--health-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds to wait for vLLM to load the model and answer.",
)
@click.option(
    "--network",
    default="host",
    show_default=True,
    help="host, or a Docker network to create/use for the two containers.",
)
@click.option(
    "--vllm-arg",
    "vllm_args",
    multiple=True,
    help="An extra vLLM flag at install time (repeatable), after the manifest's.",
)
@click.option(
    "--no-serve", is_flag=True, help="Put files and images in place but start no container."
)
@click.option(
    "--registry",
    default=None,
    metavar="HOST[:PORT][/PREFIX]",
    help="Push the images to this OCI registry instead of loading them.",
)
@click.option(
    "--registry-insecure",
    is_flag=True,
    help="Plain HTTP to --registry (always so for loopback registries).",
)
@click.option(
    "--registry-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA bundle that signs --registry's TLS certificate.",
)
@click.option(
    "--replace-tags",
    is_flag=True,
    help="Let install move an existing image tag (engine) or registry tag that points at "
    "a different image; refused by default.",
)
@click.option(
    "--tag-source-refs",
    is_flag=True,
    help="Also tag loaded images with the references the bundle was built from (e.g. "
    "docker.io/vllm/vllm-openai:v0.9.1), not only localhost/airgap/<bundle>/<role>:<version>.",
)
@click.option(
    "--artifacts-port",
    type=click.IntRange(0, 65535),
    default=8081,
    show_default=True,
    help="Plain-HTTP port where Nginx serves ELSER and product docs (0: TLS port only).",
)
@click.option("--kibana-url", default=None, help="Register the connector in this Kibana.")
@click.option("--kibana-space", default="default", show_default=True, help="Kibana space.")
@click.option(
    "--kibana-mode",
    type=click.Choice(["api", "preconfigured"]),
    default="api",
    show_default=True,
    help="api: create/update through Kibana's API; preconfigured: write a kibana.yml snippet.",
)
@click.option(
    "--kibana-version",
    default=None,
    help="preconfigured mode: the Kibana version to write config keys for (default 8.16).",
)
@click.option(
    "--kibana-verification",
    type=click.Choice(["full", "certificate", "none"]),
    default="full",
    show_default=True,
    help="How Kibana checks the endpoint's certificate (Kibana 8.19+/9.1+).",
)
@click.option("--no-kibana-test", is_flag=True, help="Skip the connector's _execute test.")
@click.option("--es-url", default=None, help="Create the ELSER inference endpoint here.")
@click.option(
    "--es-inference-id", default="airgap-elser", show_default=True, help="Its endpoint id."
)
@click.option(
    "--es-timeout",
    type=float,
    default=1200.0,
    show_default=True,
    help="Seconds to wait for ELSER to download and deploy.",
)
@click.option(
    "--elser-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Copy ELSER into this dir (Elasticsearch's config/models) for a file:// repository.",
)
@click.option(
    "--product-docs-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Copy product docs and an index.xml into this dir for a file:// repository.",
)
@elastic_access_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def install(
    bundle: str,
    trusted_keys: tuple[Path, ...],
    trust_dir: Path | None,
    require_signatures: int,
    signatures: tuple[Path, ...],
    prefix: Path,
    runtime: str,
    runtime_url: str | None,
    dry_run: bool,
    allow_downgrade: bool,
    no_gpu: bool,
    port: int,
    internal_port: int,
    server_names: tuple[str, ...],
    ips: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
    rotate_token: bool,
    gpus: str,
    health_timeout: float,
    network: str,
    vllm_args: tuple[str, ...],
    no_serve: bool,
    registry: str | None,
    registry_insecure: bool,
    registry_ca: Path | None,
    replace_tags: bool,
    tag_source_refs: bool,
    artifacts_port: int,
    kibana_url: str | None,
    kibana_space: str,
    kibana_mode: str,
    kibana_version: str | None,
    kibana_verification: str,
    no_kibana_test: bool,
    es_url: str | None,
    es_inference_id: str,
    es_timeout: float,
    elser_dir: Path | None,
    product_docs_dir: Path | None,
    as_json: bool,
    **access_kw: Any,
) -> None:
    """Verify BUNDLE and install it: files into a release, images into the engine, then
    serve the model and register it with Kibana (and ELSER with Elasticsearch)."""
    from bundler.bundle.parts import locate_bundle
    from bundler.bundle.reader import find_detached_signatures, read_detached
    from bundler.bundle.signing import load_trust
    from bundler.install.elastic.elasticsearch import EsOptions
    from bundler.install.elastic.kibana import KibanaOptions
    from bundler.install.installer import install as run_install
    from bundler.install.options import InstallOptions
    from bundler.install.records import ServeOptions

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")

    access = _access(access_kw)
    if (kibana_url or kibana_mode == "preconfigured") and (no_serve or registry):
        raise click.UsageError(
            "the Kibana connector needs the served endpoint: drop --no-serve/--registry"
        )
    kibana = None
    if kibana_version:
        from bundler.install.elastic.connector import parse_version

        parse_version(kibana_version)  # a typo is refused now, not after the install
    if kibana_url or kibana_mode == "preconfigured":
        kibana = KibanaOptions(
            url=kibana_url,
            credentials=access.kibana,
            space=kibana_space,
            ca=access.kibana_ca,
            insecure=access.kibana_insecure,
            mode=kibana_mode,  # type: ignore[arg-type]
            version=kibana_version,
            verification=kibana_verification,  # type: ignore[arg-type]
            test=not no_kibana_test,
        )
    es = None
    if es_url:
        es = EsOptions(
            es_url,
            access.es,
            ca=access.es_ca,
            insecure=access.es_insecure,
            endpoint_id=es_inference_id,
            timeout=es_timeout,
        )
    trusted = load_trust(trusted_keys, trust_dir)
    loc = locate_bundle(bundle)
    detached = read_detached(find_detached_signatures(loc) + list(signatures))
    opts = InstallOptions(
        bundle=bundle,
        trusted=trusted,
        threshold=require_signatures,
        detached=tuple(detached),
        prefix=prefix,
        runtime=runtime,
        runtime_url=runtime_url,
        dry_run=dry_run,
        allow_downgrade=allow_downgrade,
        registry=registry,
        registry_insecure=registry_insecure,
        registry_ca=registry_ca,
        replace_tags=replace_tags,
        tag_source_refs=tag_source_refs,
        no_gpu=no_gpu,
        ports=() if (no_serve or registry) else (port,),
        serve=None
        if (no_serve or registry)
        else ServeOptions(
            port=port,
            internal_port=internal_port,
            server_names=server_names,
            ips=ips,
            tls_cert=tls_cert,
            tls_key=tls_key,
            rotate_token=rotate_token,
            gpus=gpus,
            health_timeout=health_timeout,
            network=network,
            extra_vllm_args=vllm_args,
            artifacts_port=artifacts_port or None,
        ),
        kibana=kibana,
        elasticsearch=es,
        elser_dir=elser_dir,
        product_docs_dir=product_docs_dir,
    )
    with _reporter(as_json) as reporter:

        def show(checks: list[Any]) -> None:
            if not as_json and not _state().quiet:
                from bundler.cli.render import render_checks

                render_checks(checks)
            reporter.stage("installing", sum(p.size for p in loc.parts) or None)

        result = run_install(
            opts,
            on_preflight=show,
            progress=reporter.advance,
            notes=lambda m: click.echo(f"note: {m}", err=True),
        )
    out = {
        "status": result.status,
        "name": result.name,
        "version": result.version,
        "release": str(result.release),
        "index_sha256": result.index_sha256,
        "images": result.images,
        "serving": result.serving,
        "elastic": result.elastic,
        "bytes": result.bytes_read,
        "seconds": round(result.seconds, 3),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
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
            click.echo(f"  image {img['role']}: {img['ref']} = {img['id']}")
    if result.serving and result.status != "dry-run":
        s = result.serving
        click.echo(f"serving {s['model']} at {s['url']} (answered a chat completion)")
        click.echo(f"  trust this CA in Kibana: {s['ca_cert']}")
        click.echo("  bearer token: `airgap status --show-token` (stored 0600 under the prefix)")
    if result.elastic and result.status != "dry-run":
        _show_elastic(result.elastic)


def _show_elastic(el: dict[str, Any]) -> None:
    k = el.get("kibana")
    if k and k.get("mode") == "api":
        verb = k.get("action", "updated")
        click.echo(
            f"kibana: connector {k['name']!r} ({k['connector_id']}) {verb} in "
            f"{k['url']} space {k['space']} (Kibana {k['kibana_version']})"
        )
        if "test_reply" in k:
            click.echo(f"  Kibana's own test call answered: {k['test_reply']!r}")
    elif k:
        click.echo(f"kibana: preconfigured connector written to {k['snippet']} (0600)")
        click.echo("  add it to kibana.yml and restart Kibana")
    e = el.get("elasticsearch")
    if e:
        click.echo(
            f"elasticsearch: inference endpoint {e['endpoint_id']} ({e['model_id']}) "
            f"{e.get('action', 'kept')}, deployment {e['state']}, in {e['url']}"
        )
    for key in ("elser_dir", "product_docs_dir"):
        if el.get(key):
            click.echo(f"copied {len(el[key]['files'])} verified file(s) into {el[key]['path']}")
    if el.get("settings"):
        click.echo("settings for Elastic (also in " + str(el.get("settings_file")) + "):")
        for target, line in el["settings"]:
            first = line.splitlines()[0]
            more = " ..." if "\n" in line.rstrip("\n") else ""
            click.echo(f"  {target}: {first}{more}")


@cli.command()
@runtime_options
@click.option("--deep", is_flag=True, help="Also re-hash every installed file.")
@click.option("--show-token", is_flag=True, help="Print the bearer token Kibana must send.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(
    prefix: Path,
    runtime: str,
    runtime_url: str | None,
    deep: bool,
    show_token: bool,
    as_json: bool,
) -> None:
    """What is installed under --prefix, checked against what is really there."""
    from bundler.install.layout import Layout
    from bundler.install.manage import status as run_status

    report = run_status(prefix, runtime, runtime_url, deep=deep)
    if show_token:
        token_file = Layout(prefix).token_file
        if not token_file.exists():
            raise click.UsageError(f"{token_file}: no token (nothing is served here)")
        click.echo(token_file.read_text().strip())
        return
    if as_json:
        click.echo(
            json.dumps(
                {
                    "prefix": str(report.prefix),
                    "current": report.current,
                    "ok": report.ok,
                    "releases": report.releases,
                },
                indent=2,
            )
        )
    else:
        click.echo(
            f"{report.prefix}: current {report.current or '(none)'} - "
            + ("healthy" if report.ok else "NOT healthy")
        )
        for rel in report.releases:
            mark = "*" if rel["active"] else " "
            state = "ok" if rel["healthy"] else "damaged"
            click.echo(f" {mark} {rel['release']}  {state}  installed {rel['installed_at']}")
            for img in rel["images"]:
                click.echo(
                    f"      {img['role']}: {img['ref']} "
                    f"{'present' if img['present'] else 'MISSING'}"
                )
            serving = rel.get("serving")
            if serving:
                running = ", ".join(
                    f"{k} {'running' if v else 'STOPPED'}" for k, v in serving["containers"].items()
                )
                click.echo(
                    f"      serving {serving['url']}: {running}; /health through nginx: "
                    f"{serving['health']}"
                )
            el = rel.get("elastic") or {}
            k = el.get("kibana") or {}
            if k.get("mode") == "api":
                click.echo(
                    f"      kibana connector {k['connector_id']} in {k['url']} "
                    f"space {k.get('space', 'default')}"
                )
            elif k:
                click.echo(f"      kibana preconfigured snippet {k['snippet']}")
            e = el.get("elasticsearch") or {}
            if e:
                click.echo(f"      inference endpoint {e['endpoint_id']} in {e['url']}")
            if el.get("settings_file"):
                click.echo(f"      Elastic settings to add: {el['settings_file']}")
    if not report.ok:
        sys.exit(EXIT_FAILURE)


@cli.command()
@runtime_options
@elastic_access_options
@click.option(
    "--keep-elastic",
    is_flag=True,
    help="Leave the Kibana connector and the ELSER endpoint airgap created.",
)
def uninstall(
    prefix: Path, runtime: str, runtime_url: str | None, keep_elastic: bool, **access_kw: Any
) -> None:
    """Remove what airgap installed under --prefix (and only that), including the Kibana
    connector and inference endpoint it created."""
    import dataclasses

    from bundler.install.manage import uninstall as run_uninstall

    access = dataclasses.replace(_access(access_kw), keep=keep_elastic)
    for line in run_uninstall(prefix, runtime, runtime_url, access):
        click.echo(line if line.startswith("note:") else f"removed {line}")


@cli.command()
@click.option(
    "--prefix",
    type=click.Path(path_type=Path, file_okay=False),
    default="/opt/airgap",
    show_default=True,
)
@click.option("--runtime-url", default=None, help="Engine API socket (default: as installed).")
def rollback(prefix: Path, runtime_url: str | None) -> None:
    """Make the previously active release current again, serving it as it was served."""
    from bundler.install.manage import rollback as run_rollback

    key, notes = run_rollback(prefix, runtime_url)
    click.echo(f"current is now {key}")
    for line in notes:
        click.echo(f"  {line}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the one place errors become messages and exit codes."""
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
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        click.echo(
            "hint: check free space, permissions and the device; nothing was switched "
            "in, so running the same command again is safe.",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
