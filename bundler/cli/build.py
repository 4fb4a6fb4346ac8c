"""The connected side: ``validate``, ``schema``, ``lock``, ``fetch``, ``build``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bundler.cli.options import (
    fetch_options,
    json_option,
    parse_size,
    passphrase_option,
    read_passphrase,
    reporter,
)
from bundler.cli.output import (
    print_json,
    show_build,
    show_dry_run,
    show_fetched,
    show_lock,
    show_warnings,
)
from bundler.cli.output_delta import show_delta_preview

if TYPE_CHECKING:
    from bundler.build import BuildOptions
    from bundler.bundle.plan import BuildResult
    from bundler.cli.options import FetchInputs
    from bundler.manifest import Manifest

manifest_argument = click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))

# FAT32 (most USB sticks as sold) keeps a file's size in 32 bits: 4 GiB - 1 at most.
FAT32_MAX_FILE = 4 * 1024**3 - 1


def split_size_of(text: str) -> int:
    """``--split-size``: a size such as ``700M``, or ``fat32`` (FAT32's largest file).

    A size FAT32 cannot hold is only warned about: exFAT, NTFS and ext4 media can.
    """
    if text.strip().lower() == "fat32":
        return FAT32_MAX_FILE
    size = parse_size(text)
    if size > FAT32_MAX_FILE:
        show_warnings(
            [
                f"--split-size {text} makes parts of {size} bytes, more than FAT32 can hold "
                f"({FAT32_MAX_FILE}); use --split-size fat32 for FAT32 media"
            ]
        )
    return size


@click.command()
@manifest_argument
def validate(manifest: Path) -> None:
    """Check a manifest without fetching anything."""
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    click.echo(f"{manifest}: ok ({m.name} v{m.version}, model {m.model.served_name})")


@click.command()
def schema() -> None:
    """Print the manifest's JSON Schema."""
    from bundler.manifest import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@click.command()
@manifest_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Bundle file to write (split parts get .part-NNN appended), or - for standard "
    "output (a pipe: `airgap build M -o - --key K | airgap verify - …`).",
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
    "--split-size",
    type=str,
    default=None,
    help="Cut the bundle into parts: a size (700M, 8G) or fat32 (4 GiB - 1, FAT32's largest file).",
)
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
    "--base",
    type=str,
    default=None,
    help="Write a delta against this earlier bundle (or its index from `airgap inspect "
    "--index`): only files the base does not have are carried.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve and list what would be downloaded, with sizes (with --base: what the "
    "delta would carry and reuse); build nothing.",
)
@click.option(
    "--with-tool",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Carry this tool bundle (airgap tool-bundle) as tool/airgap-tool-X.Y.Z.tar.",
)
@passphrase_option
@json_option
def build(
    manifest: Path,
    output: Path,
    keys: tuple[Path, ...],
    split_size: str | None,
    expires_days: int | None,
    chunk_size: str,
    fetch: FetchInputs,
    no_hash_cache: bool,
    update_lock: bool,
    base: str | None,
    dry_run: bool,
    with_tool: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Build a signed bundle from MANIFEST (SOURCE_DATE_EPOCH sets its creation time).

    Remote sources are resolved against MANIFEST's lock (<name>.lock.json, written on
    first use), fetched into the cache (resumable, verified), then bundled.
    """
    import dataclasses

    from bundler.build import BuildOptions, has_remote, plan_fetch
    from bundler.build import build as run_build
    from bundler.bundle.signing import load_signing_key
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    opts = BuildOptions(
        output=output,
        keys=(),
        split_size=split_size_of(split_size) if split_size else None,
        expires_days=expires_days,
        chunk_size=parse_size(chunk_size),
        cache_dir=fetch.cache_dir,
        no_hash_cache=no_hash_cache,
        update_lock=update_lock,
        fetch=fetch.options,
        base=base,
        with_tool=with_tool,
    )
    if dry_run and base:
        from bundler.build_delta import preview_delta

        with reporter(as_json) as r:
            delta = preview_delta(m, opts, r)
        if as_json:
            print_json(delta.to_json())
        else:
            show_delta_preview(delta)
        return
    if dry_run:
        if not has_remote(m):
            click.echo("all sources are local: nothing to download")
            return
        plan = plan_fetch(m, opts)
        if as_json:
            print_json(plan.to_json())
        else:
            show_dry_run(plan)
        return
    if str(output) == "-":
        _build_to_stdout(m, opts, keys, base, passphrase_file, as_json)
        return
    pw = read_passphrase(passphrase_file)
    opts = dataclasses.replace(opts, keys=tuple(load_signing_key(k, pw) for k in keys))
    with reporter(as_json) as r:
        result = run_build(m, opts, r)
    _summary(result, base, as_json)


def _summary(result: BuildResult, base: str | None, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
    else:
        show_build(result)
        if base and result.index.base is None:
            show_warnings([f"nothing in common with the base {base}: wrote a full bundle"])


def _build_to_stdout(
    m: Manifest,
    opts: BuildOptions,
    keys: tuple[Path, ...],
    base: str | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """``-o -``: the bundle on standard output; the summary (or ``--json``) on stderr."""
    import contextlib
    import dataclasses
    import sys

    from bundler.build_stream import build_to_stream
    from bundler.bundle.signing import load_signing_key
    from bundler.errors import UsageError

    # started with stdout closed (`>&-`), or on a terminal
    unfit = "closed" if sys.stdout is None else "a terminal" if sys.stdout.isatty() else ""
    if unfit:
        raise UsageError(
            f"-o - writes the bundle to standard output, which is {unfit} here",
            hint="Pipe it (`airgap build … -o - | airgap verify - …`) or redirect it to a "
            "file; or give -o BUNDLE.",
        )
    pw = read_passphrase(passphrase_file)
    opts = dataclasses.replace(opts, keys=tuple(load_signing_key(k, pw) for k in keys))
    sys.stdout.flush()
    with reporter(as_json) as r:
        result = build_to_stream(m, opts, sys.stdout.fileno(), r)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the bundle
        _summary(result, base, as_json)


@click.command()
@manifest_argument
@fetch_options
def lock(manifest: Path, fetch: FetchInputs) -> None:
    """Resolve MANIFEST's remote sources and write <manifest>.lock.json (pins only)."""
    from bundler.build import has_remote, write_lock
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    if not has_remote(m):
        click.echo("all sources are local: no lock needed")
        return
    show_lock(write_lock(m, fetch.options, fetch.cache_dir))


@click.command()
@manifest_argument
@fetch_options
@click.option("--update-lock", is_flag=True, help="Accept upstream changes since the lock.")
def fetch(manifest: Path, fetch: FetchInputs, update_lock: bool) -> None:
    """Download MANIFEST's remote sources into the cache (verified), without bundling."""
    from bundler.build import BuildOptions, fetch_remote, has_remote
    from bundler.fetch.cache import Cache
    from bundler.manifest import load_manifest

    m = load_manifest(manifest)
    if not has_remote(m):
        click.echo("all sources are local: nothing to fetch")
        return
    opts = BuildOptions(
        output=Path("unused"),
        keys=(),
        cache_dir=fetch.cache_dir,
        update_lock=update_lock,
        fetch=fetch.options,
    )
    cache = Cache(fetch.cache_dir)
    try:
        with reporter() as r:
            part = fetch_remote(m, opts, cache, r)
    finally:
        cache.close()
    show_fetched(part)
