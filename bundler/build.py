"""``airgap build`` from local sources: manifest -> build plan -> signed bundle.

Remote sources (Hugging Face repos, registry references, Elastic downloads) are
validated by the manifest but fetched by :mod:`bundler.fetch`; until a source is
local, the build refuses it with a clear error instead of guessing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bundler import env
from bundler.bundle.index import DEFAULT_CHUNK_SIZE
from bundler.bundle.signing import SigningKey
from bundler.bundle.writer import BuildPlan, BuildResult, Payload, write_bundle
from bundler.errors import FetchError, SourceError
from bundler.hashcache import HashCache
from bundler.hashing import FileRange
from bundler.images import load_image_archive
from bundler.manifest import ELSER_IDS, ImageArchive, Manifest
from bundler.progress import NullReporter, Reporter

_ELSER_FILE = re.compile(
    r"^(?P<id>" + "|".join(re.escape(i) for i in ELSER_IDS) + r")\.(metadata\.json|pt|vocab\.json)$"
)
_DOC_FILE = re.compile(r"^kb-product-doc-(?P<product>[a-z]+)-(?P<ver>[0-9]+\.[0-9]+)\.zip$")


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    keys: tuple[SigningKey, ...]
    split_size: int | None = None
    expires_days: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    cache_dir: Path | None = None  # remembers digests of local files (None: always hash)


def walk_files(root: Path) -> list[tuple[str, Path]]:
    """Regular files under ``root`` (symlinks followed), hidden entries skipped, sorted.

    Hidden entries (``.git``, ``.cache/huggingface``) are tool metadata, not weights.

    Raises:
        SourceError: ``root`` is missing, or a link points at something not a file.
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
            found.append((p.relative_to(root).as_posix(), p.resolve()))
    return sorted(found)


def _file_payload(bundle_path: str, p: Path) -> Payload:
    return Payload(bundle_path, FileRange(p, 0, p.stat().st_size), origin=str(p))


def _model_payloads(m: Manifest) -> tuple[list[Payload], dict[str, Any]]:
    if m.model.path is None:
        raise FetchError(
            f"model.repo {m.model.repo!r} must be downloaded first",
            hint="Download the weights (huggingface-cli download REPO --local-dir DIR) and set "
            "model.path, or use an airgap release with Hugging Face fetching.",
        )
    root = m.resolve(m.model.path)
    files = walk_files(root)
    if not files:
        raise SourceError("model directory is empty", path=str(root))
    payloads = [_file_payload(f"models/{m.model.served_name}/{rel}", p) for rel, p in files]
    return payloads, {"source": "path", "path": m.model.path}


def _elastic_payloads(m: Manifest) -> tuple[list[Payload], dict[str, Any]]:
    if m.elastic is None:
        return [], {}
    wanted_elser = set(m.elastic.elser)
    wanted_docs = (
        {(p, m.elastic.product_docs.version) for p in m.elastic.product_docs.products}
        if m.elastic.product_docs
        else set()
    )
    if m.elastic.source_dir is None:
        if wanted_elser or wanted_docs:
            raise FetchError(
                "elastic artifacts must be downloaded first",
                hint="Put the ELSER and product-doc files in a directory and set "
                "elastic.source_dir, or use an airgap release with Elastic fetching.",
            )
        return [], {}
    root = m.resolve(m.elastic.source_dir)
    payloads: list[Payload] = []
    elser_files: dict[str, set[str]] = {}
    docs: set[tuple[str, str]] = set()
    for rel, p in walk_files(root):
        name = rel.rsplit("/", 1)[-1]
        if e := _ELSER_FILE.match(name):
            if wanted_elser and e["id"] not in wanted_elser:
                continue
            elser_files.setdefault(e["id"], set()).add(name)
            payloads.append(_file_payload(f"elastic/elser/{name}", p))
        elif d := _DOC_FILE.match(name):
            if wanted_docs and (d["product"], d["ver"]) not in wanted_docs:
                continue
            docs.add((d["product"], d["ver"]))
            payloads.append(_file_payload(f"elastic/product-docs/{name}", p))
        else:
            raise SourceError(
                "not an ELSER file (<id>.metadata.json|.pt|.vocab.json) or a product-doc "
                "artifact (kb-product-doc-<product>-<major>.<minor>.zip)",
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
        names = ", ".join(f"kb-product-doc-{p}-{v}.zip" for p, v in sorted(missing_docs))
        raise SourceError(f"missing product docs: {names}", path=str(root))
    return payloads, {
        "source": "path",
        "path": m.elastic.source_dir,
        "elser": sorted(elser_files),
        "product_docs": sorted(f"{p}-{v}" for p, v in docs),
    }


def plan_build(
    m: Manifest,
    opts: BuildOptions,
    reporter: Reporter | None = None,
    cache: HashCache | None = None,
) -> BuildPlan:
    """Collect every payload and image of a manifest whose sources are local.

    Raises:
        FetchError: a source must be downloaded first.
        SourceError: a local source is missing, incomplete or damaged.
    """
    reporter = reporter or NullReporter()
    created = env.source_date_epoch() or datetime.now(UTC).replace(microsecond=0)
    days = opts.expires_days if opts.expires_days is not None else m.expires_days
    payloads, model_lock = _model_payloads(m)
    images = []
    image_lock: dict[str, Any] = {}
    for role, source in m.images.items():
        if not isinstance(source, ImageArchive):
            raise FetchError(
                f"images.{role} {source!r} must be pulled first",
                hint=f"Save it (`docker save {source} -o {role}.tar`) and set "
                f"images.{role}: {{archive: {role}.tar}}, or use an airgap release with "
                "registry fetching.",
            )
        reporter.stage(f"reading image {role}")
        img = load_image_archive(
            m.resolve(source.archive),
            role=role,
            platform=m.platform,
            default_ref=f"airgap/{m.name}-{role}:{m.version}",
            chunk_size=opts.chunk_size,
            cache=cache,
        )
        images.append(img.entry)
        payloads.extend(img.payloads)
        image_lock[role] = {
            "source": "archive",
            "ref": img.entry.ref,
            "manifest_digest": img.entry.manifest_digest,
            "config_digest": img.entry.config_digest,
            "platform": img.entry.platform,
        }
    elastic_payloads, elastic_lock = _elastic_payloads(m)
    payloads.extend(elastic_payloads)
    lock: dict[str, Any] = {"model": model_lock, "images": image_lock}
    if elastic_lock:
        lock["elastic"] = elastic_lock
    return BuildPlan(
        name=m.name,
        version=m.version,
        created=created,
        expires=created + timedelta(days=days),
        manifest=m.to_signed_dict(),
        lock=lock,
        payloads=payloads,
        images=images,
        chunk_size=opts.chunk_size,
    )


def build(m: Manifest, opts: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Plan and write a signed bundle.

    Raises:
        FetchError, SourceError, UsageError: see :func:`plan_build` and
            :func:`bundler.bundle.writer.write_bundle`.
    """
    reporter = reporter or NullReporter()
    cache = HashCache(opts.cache_dir) if opts.cache_dir is not None else None
    try:
        plan = plan_build(m, opts, reporter, cache)
        total = sum(p.size for p in plan.payloads)
        reporter.stage("hashing and writing", 2 * total)
        return write_bundle(
            plan,
            opts.output,
            opts.keys,
            split_size=opts.split_size,
            progress=reporter.advance,
            hash_progress=reporter.advance,
            hash_cache=cache,
        )
    finally:
        if cache is not None:
            cache.close()
