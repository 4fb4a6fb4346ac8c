"""``airgap build`` from local sources: manifest -> build plan -> signed bundle.

Remote sources (Hugging Face repos, registry references, Elastic downloads) are
validated by the manifest but fetched by :mod:`bundler.fetch`; until a source is
local, the build refuses it with a clear error instead of guessing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bundler import __version__, env, faults
from bundler.bundle.delta import load_base, make_delta
from bundler.bundle.entries import PayloadHashing
from bundler.bundle.index import DEFAULT_CHUNK_SIZE, ImageEntry, path_problem
from bundler.bundle.plan import BuildPlan, BuildResult, LateBytes, Payload
from bundler.bundle.signing import SigningKey
from bundler.bundle.sizing import require_output_space
from bundler.bundle.writer import check_output, write_bundle
from bundler.errors import FetchError, SourceError, UsageError
from bundler.fetch.cache import Cache
from bundler.fetch.engine_export import export_from_docker
from bundler.fetch.options import FetchOptions
from bundler.hashcache import HashCache
from bundler.hashing import FileRange
from bundler.images import load_image_archive
from bundler.lock import load_lock, lock_path, save_lock
from bundler.manifest import ImageArchive, Manifest
from bundler.modelfacts import measure
from bundler.names import DOC_FILE_RE, ELSER_FILE_RE
from bundler.pins import ArchiveImagePin, ImagePin, PathElasticPin, PathModelPin, Pins, drift
from bundler.progress import NullReporter, Reporter

if TYPE_CHECKING:
    from bundler.fetch.remote import Fetcher


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    keys: tuple[SigningKey, ...]
    split_size: int | None = None
    expires_days: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Downloads and remembered digests. None: no cache for local files (remote
    # sources then use the default cache directory).
    cache_dir: Path | None = None
    no_hash_cache: bool = False  # rehash local files even if their digests are remembered
    update_lock: bool = False
    fetch: FetchOptions = field(default_factory=FetchOptions)
    base: str | None = None  # a delta against this bundle or signed index (bundle.delta)
    with_tool: Path | None = None  # a tool bundle to carry as tool/airgap-tool-X.Y.Z.tar


@dataclass
class RemotePart:
    """What the remote sources contribute, already fetched and verified."""

    payloads: list[Payload]
    images: list[ImageEntry]
    pins: Pins
    lock_file: Path
    lock_written: bool
    downloaded: int


@dataclass
class DryRun:
    """``build --dry-run``: what a build would download, and how the lock would change."""

    lock_file: Path
    lock_changes: list[str]
    to_fetch: list[tuple[str, int]]  # what, bytes
    cached: int  # number of pinned files already in the cache

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.to_fetch)

    def to_json(self) -> dict[str, object]:
        return {
            "lock": str(self.lock_file),
            "lock_changes": self.lock_changes,
            "to_fetch": [{"what": w, "bytes": n} for w, n in self.to_fetch],
            "bytes": self.bytes,
            "cached": self.cached,
        }


@dataclass(frozen=True)
class LockWritten:
    """``airgap lock``: the pins just resolved and the file they were written to."""

    path: Path
    pins: Pins


def walk_files(root: Path) -> list[tuple[str, Path]]:
    """Regular files under ``root`` (symlinks followed), hidden entries skipped, sorted.

    Hidden entries (``.git``, ``.cache/huggingface``) are tool metadata, not weights.

    Raises:
        SourceError: ``root`` is missing, a link points at something not a file, or a
            file's name cannot be a bundle member (a control character, a backslash, not
            UTF-8, too long).
    """
    if not root.is_dir():
        raise SourceError("directory does not exist", path=str(root))
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if not p.is_file():
                raise SourceError("not a regular file (broken link or device)", path=str(p))
            rel = p.relative_to(root).as_posix()
            problem = path_problem(rel)
            if problem is None and not rel.isascii():
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    problem = "name is not valid UTF-8"
            if problem:
                raise SourceError(
                    f"this file name cannot go into a bundle: {problem}",
                    path=ascii(str(p)),
                    hint="Rename the file, or move it out of the directory (a bundle carries "
                    "UTF-8 names without control characters or backslashes).",
                )
            found.append((rel, p.resolve()))
    return sorted(found)


def _file_payload(bundle_path: str, p: Path) -> Payload:
    return Payload(bundle_path, FileRange(p, 0, p.stat().st_size), origin=str(p))


def _model_payloads(m: Manifest) -> tuple[list[Payload], PathModelPin | None]:
    if m.model.path is None:
        return [], None
    root = m.resolve(m.model.path)
    files = walk_files(root)
    if not files:
        raise SourceError("model directory is empty", path=str(root))
    payloads = [_file_payload(f"models/{m.model.served_name}/{rel}", p) for rel, p in files]
    return payloads, PathModelPin(path=m.model.path)


def _elastic_payloads(m: Manifest) -> tuple[list[Payload], PathElasticPin | None]:
    if m.elastic is None:
        return [], None
    wanted_elser = set(m.elastic.model_ids())
    wanted_docs = set(m.elastic.product_docs.artifact_names()) if m.elastic.product_docs else set()
    if m.elastic.source_dir is None:
        return [], None  # fetched by bundler.fetch
    root = m.resolve(m.elastic.source_dir)
    payloads: list[Payload] = []
    elser_files: dict[str, set[str]] = {}
    docs: set[str] = set()
    for rel, p in walk_files(root):
        name = rel.rsplit("/", 1)[-1]
        if e := ELSER_FILE_RE.match(name):
            if wanted_elser and e["id"] not in wanted_elser:
                continue
            elser_files.setdefault(e["id"], set()).add(name)
            payloads.append(_file_payload(f"elastic/elser/{name}", p))
        elif DOC_FILE_RE.match(name):
            if wanted_docs and name not in wanted_docs:
                continue
            docs.add(name)
            payloads.append(_file_payload(f"elastic/product-docs/{name}", p))
        else:
            raise SourceError(
                "not an ELSER or E5 file (<id>.metadata.json|.pt|.vocab.json) or a "
                "knowledge-base artifact (kb-product-doc-<product>-<major>.<minor>.zip, "
                "security-labs-<YYYY.MM.DD>.zip, either with --<inference id> for a "
                "non-ELSER endpoint)",
                path=str(p),
                hint="Remove it from elastic.source_dir.",
            )
    for model_id in sorted(wanted_elser | set(elser_files)):
        have = elser_files.get(model_id, set())
        need = {f"{model_id}.metadata.json", f"{model_id}.pt", f"{model_id}.vocab.json"}
        if have != need:
            raise SourceError(
                f"ELSER {model_id} is incomplete: missing {', '.join(sorted(need - have))}",
                path=str(root),
            )
    missing_docs = wanted_docs - docs
    if missing_docs:
        names = ", ".join(sorted(missing_docs))
        raise SourceError(f"missing product docs: {names}", path=str(root))
    plain = {
        f"{d['product']}-{d['ver']}"
        for n in docs
        if (d := DOC_FILE_RE.match(n)) and d["product"] and not d["inference"]
    }
    others = tuple(sorted(n for n in docs if n.removeprefix("kb-product-doc-")[:-4] not in plain))
    return payloads, PathElasticPin(
        source="path",
        path=m.elastic.source_dir,
        elser=tuple(sorted(elser_files)),
        product_docs=tuple(sorted(plain)),
        knowledge_base=others or None,
    )


def has_remote(m: Manifest) -> bool:
    e = m.elastic
    return (
        m.model.repo is not None
        or any(not isinstance(s, ImageArchive) for _, s in m.images.items())
        or (e is not None and e.source_dir is None and bool(e.model_ids() or e.product_docs))
    )


def _fetcher(opts: BuildOptions, cache: Cache, reporter: Reporter) -> Fetcher:
    # Imported here: a build from local sources needs no HTTP or hub client.
    from bundler.fetch.remote import Fetcher

    return Fetcher(cache, opts.chunk_size, opts.fetch, progress=reporter.advance)


def resolve_lock(
    m: Manifest,
    opts: BuildOptions,
    cache: Cache,
    reporter: Reporter | None = None,
    fetcher: Fetcher | None = None,
) -> tuple[Pins, Path, list[str]]:
    """Pins of the remote sources: the lock if upstream still matches it, else fresh.

    Returns the pins, the lock file, and the drift lines (empty when none).
    """
    reporter = reporter or NullReporter()
    path = lock_path(Path(m.source))
    reporter.stage("resolving sources")
    fresh = (fetcher or _fetcher(opts, cache, reporter)).resolve(m)
    old = load_lock(path)
    changes = drift(old.pins, fresh) if old is not None else []
    return (old.pins if old is not None and not changes else fresh), path, changes


def plan_fetch(m: Manifest, opts: BuildOptions) -> DryRun:
    """Resolve and compare with the lock; list what a build would download (nothing big).

    Raises:
        FetchError: an upstream cannot be reached or does not have what is named.
    """
    cache = Cache(opts.cache_dir or env.cache_dir())
    try:
        fetcher = _fetcher(opts, cache, NullReporter())
        pins, path, changes = resolve_lock(m, opts, cache, None, fetcher)
        downloads = fetcher.downloads(m, pins)
        missing = fetcher.missing(downloads)
    finally:
        cache.close()
    return DryRun(
        path,
        changes,
        [(d.what, d.expect.size or 0) for d in missing],
        len(downloads) - len(missing),
    )


def write_lock(m: Manifest, fetch: FetchOptions, cache_dir: Path | None = None) -> LockWritten:
    """Resolve ``m``'s remote sources afresh and write ``<manifest>.lock.json`` (pins only).

    Raises:
        FetchError: an upstream cannot be reached or does not have what is named.
    """
    from bundler.fetch.remote import Fetcher

    cache = Cache(cache_dir or env.cache_dir())
    try:
        pins = Fetcher(cache, 64 * 1024 * 1024, fetch).resolve(m)
    finally:
        cache.close()
    path = lock_path(Path(m.source))
    save_lock(path, pins, name=m.name, platform=m.platform)
    return LockWritten(path, pins)


def fetch_remote(
    m: Manifest,
    opts: BuildOptions,
    cache: Cache,
    reporter: Reporter | None = None,
) -> RemotePart:
    """Resolve, check against the lock, fetch (:func:`plan_fetch` only lists).

    Raises:
        FetchError: upstream moved since the lock (without ``update_lock``), or a fetch failed.
    """
    reporter = reporter or NullReporter()
    # One fetcher for resolving and downloading: its registry clients keep their tokens.
    fetcher = _fetcher(opts, cache, reporter)
    pins, path, changes = resolve_lock(m, opts, cache, reporter, fetcher)
    downloads = fetcher.downloads(m, pins)
    if changes and not opts.update_lock:
        raise FetchError(
            f"{path.name}: upstream changed since the lock was written: " + "; ".join(changes),
            hint="Review the change, then build with --update-lock (or run `airgap lock`).",
        )
    written = False
    if not pins.is_empty() and (changes or load_lock(path) is None):
        faults.point("fetch.before-lock")
        save_lock(path, pins, name=m.name, platform=m.platform)
        written = True
    missing = fetcher.missing(downloads)
    reporter.stage("downloading", sum(d.expect.size or 0 for d in missing))
    downloaded = fetcher.fetch_all(downloads)
    payloads, images = fetcher.payloads(m, pins)
    return RemotePart(payloads, images, pins, path, written, downloaded)


def validity(
    m: Manifest, opts: BuildOptions, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The bundle's ``created`` and ``expires`` times.

    Raises:
        UsageError: the bundle would be expired already (an old ``SOURCE_DATE_EPOCH``
            with too few ``--expires-days``): install would refuse it on arrival.
    """
    now = now or datetime.now(UTC)
    created = env.source_date_epoch() or now.replace(microsecond=0)
    days = opts.expires_days if opts.expires_days is not None else m.expires_days
    expires = created + timedelta(days=days)
    if expires <= now:
        needed = (now - created).days + 1
        stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        fix = (
            f"pass --expires-days {needed} or more (at most 3650), or set"
            if needed <= 3650
            else "set"
        )
        raise UsageError(
            f"the bundle would be expired when written: SOURCE_DATE_EPOCH dates it "
            f"{created.strftime('%Y-%m-%dT%H:%M:%SZ')}, and {days} days of validity end at "
            f"{stamp}, which is past",
            hint=f"To rebuild an old release reproducibly, {fix} SOURCE_DATE_EPOCH to a "
            "recent time; every host refuses an expired bundle.",
        )
    return created, expires


def plan_build(
    m: Manifest,
    opts: BuildOptions,
    reporter: Reporter | None = None,
    cache: HashCache | None = None,
    remote: RemotePart | None = None,
    exported: dict[str, Path] | None = None,
) -> BuildPlan:
    """Collect every payload and image: local sources read here, remote ones fetched.

    Raises:
        SourceError: a local source is missing, incomplete or damaged.
    """
    reporter = reporter or NullReporter()
    created, expires = validity(m, opts)
    payloads, model_lock = _model_payloads(m)
    images = list(remote.images) if remote else []
    payloads += remote.payloads if remote else []
    image_lock: dict[str, ImagePin] = dict((remote.pins.images or {}) if remote else {})
    for role, source in m.images.items():
        if isinstance(source, ImageArchive):
            archive = m.resolve(source.archive)
        elif exported and role in exported:
            archive = exported[role]
        else:
            continue
        reporter.stage(f"reading image {role}")
        img = load_image_archive(
            archive,
            role=role,
            platform=m.platform,
            default_ref=f"airgap/{m.name}-{role}:{m.version}",
            chunk_size=opts.chunk_size,
            cache=cache,
        )
        images.append(img.entry)
        payloads.extend(img.payloads)
        image_lock[role] = ArchiveImagePin(
            source="archive" if isinstance(source, ImageArchive) else "docker",
            ref=img.entry.ref if isinstance(source, ImageArchive) else source,
            manifest_digest=img.entry.manifest_digest,
            config_digest=img.entry.config_digest,
            platform=img.entry.platform,
        )
    elastic_payloads, elastic_lock = _elastic_payloads(m)
    payloads.extend(elastic_payloads)
    if opts.with_tool is not None:
        from bundler.toolbundle.build import embedded_payload

        payloads.append(embedded_payload(opts.with_tool))
    pins = remote.pins if remote else Pins()
    lock = Pins(
        model=model_lock or pins.model, images=image_lock, elastic=elastic_lock or pins.elastic
    )
    sources = {p.path: p.source for p in payloads if not isinstance(p.source, LateBytes)}
    facts, images = measure(m, sources, images)
    return BuildPlan(
        name=m.name,
        version=m.version,
        created=created,
        expires=expires,
        manifest=m.to_signed_dict(),
        lock=lock,
        payloads=payloads,
        images=images,
        chunk_size=opts.chunk_size,
        model_facts=facts,
    )


@contextlib.contextmanager
def planned(
    m: Manifest, opts: BuildOptions, reporter: Reporter
) -> Iterator[tuple[BuildPlan, HashCache | None]]:
    """The build plan (remote sources fetched), with the hash cache open while it is used."""
    remote_needed = has_remote(m)
    cache_dir = opts.cache_dir or (env.cache_dir() if remote_needed else None)
    cache = Cache(cache_dir) if cache_dir is not None else None
    try:
        remote = None
        if remote_needed:
            assert cache is not None
            remote = fetch_remote(m, opts, cache, reporter)
        hashes = None if (cache is None or opts.no_hash_cache) else cache.hashes
        exported = None
        if opts.fetch.images_from == "docker":
            assert cache is not None
            reporter.stage("exporting images from docker")
            exported = export_from_docker(m, opts.fetch.docker_url, cache)
        yield plan_build(m, opts, reporter, hashes, remote, exported), hashes
    finally:
        if cache is not None:
            cache.close()


def build(m: Manifest, opts: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Plan and write a signed bundle (a delta when ``opts.base`` names the base).

    Raises:
        FetchError, SourceError, UsageError: see :func:`plan_build` and
            :func:`bundler.bundle.writer.write_bundle`.
        BundleError: ``opts.base`` is not an airgap bundle or index.
        LicenseError: the model's licence needs ``license_accepted`` in the manifest.
    """
    reporter = reporter or NullReporter()
    validity(m, opts)  # before anything is downloaded
    base = load_base(opts.base) if opts.base else None
    with planned(m, opts, reporter) as (plan, hashes):
        from bundler.sbom.generate import add_sbom, check_model_licence  # not on fetch's path

        _, sbom_input = check_model_licence(plan, m)
        total = sum(p.size for p in plan.payloads)
        check_output(opts.output, opts.keys, opts.split_size)  # before hashing starts
        if base is None:  # the payload alone must fit (the exact check follows the SBOM)
            require_output_space(opts.output, total, opts.split_size)
        if base is None:  # every core hashes while the layers are read for the SBOM
            reporter.stage("hashing and writing (and reading image layers for the SBOM)", 2 * total)
        hashing = (
            None
            if base
            else PayloadHashing(plan.payloads, plan.chunk_size, reporter.advance, hashes)
        )
        with hashing or contextlib.nullcontext():
            if base is not None:
                reporter.stage("reading image layers for the SBOM")
            sbom = add_sbom(plan, sbom_input, f"airgap {__version__}")
            if base is not None:
                reporter.stage("hashing (delta)", total)
                plan = make_delta(plan, base, hashes, reporter.advance)
                reporter.stage("writing", sum(p.size for p in plan.payloads))
            result = write_bundle(
                plan,
                opts.output,
                opts.keys,
                split_size=opts.split_size,
                progress=reporter.advance,
                hash_progress=reporter.advance,
                hash_cache=hashes,
                hashing=hashing,
            )
        return replace(result, sbom=sbom)
