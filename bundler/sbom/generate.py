"""Plan the SBOM member of a build: read the model card and the image layers, decide the
licence, and add ``sbom/cyclonedx.json`` to the payload (rendered once the rest is hashed).

The member is an ordinary payload file: listed in the index with its sha256 and chunk
hashes, so it is signed like every other file. ``airgap-bundle/2`` will also name it
in a top-level ``sbom`` key; :func:`sbom_reference` is the one place that finds it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bundler.bundle.index import BLOB_PREFIX, FileEntry, ImageEntry, Index, chunk_count
from bundler.bundle.plan import BuildPlan, LateBytes, Payload
from bundler.hashing import FileRange
from bundler.manifest import Manifest
from bundler.pins import LicensePin
from bundler.sbom import cyclonedx
from bundler.sbom.card import model_facts
from bundler.sbom.layers import ImageFacts, scan_image
from bundler.sbom.licences import check_build_acceptance, model_licence
from bundler.sbom.model import SBOM_PATH, SbomInput, SbomSummary, summarize

logger = logging.getLogger(__name__)


def sbom_reference(index: Index) -> tuple[str, str] | None:
    """The SBOM member's path and sha256, or None for a bundle built without one.

    Today the member is found among the payload files; with ``airgap-bundle/2`` this
    reads the index's ``sbom`` key instead, and nothing else changes.
    """
    for f in index.files:
        if f.path == SBOM_PATH:
            return f.path, f.sha256
    return None


@dataclass(frozen=True)
class SbomPlan:
    """What the build learned while planning the SBOM (shown by ``build``)."""

    licence: LicensePin
    summary: SbomSummary
    layer_bytes: int  # compressed layer bytes read
    layer_seconds: float  # time spent reading them


def check_model_licence(plan: BuildPlan, m: Manifest) -> tuple[LicensePin, SbomInput]:
    """Read the model's card, decide its licence, refuse it unless accepted where needed.

    Records the licence in the plan's signed pins. Returns the licence and the SBOM's
    input without images (see :func:`add_sbom`).

    Raises:
        LicenseError: the licence needs ``license_accepted`` and the manifest lacks it.
    """
    prefix = f"models/{m.model.served_name}/"
    facts = model_facts(plan.payloads, prefix)
    hf = plan.lock.hf_model
    licence = model_licence(facts.licence, hf.gated if hf else None)
    check_build_acceptance(licence, m.model.license_accepted, manifest=m.source)
    if plan.lock.model is not None:
        model = plan.lock.model.model_copy(update={"license": licence})
        plan.lock = plan.lock.model_copy(update={"model": model})
    paths = sorted({p.path for p in plan.payloads})
    inp = SbomInput(
        name=plan.name,
        version=plan.version,
        created=plan.created,
        tool="airgap",
        served_name=m.model.served_name,
        repo=hf.repo if hf else None,
        commit=hf.commit if hf else None,
        hub_gated=hf.gated if hf else None,
        licence=licence,
        accepted=m.model.license_accepted,
        facts=facts,
        model_files=tuple(p for p in paths if p.startswith(prefix)),
        images=(),
        elastic_files=tuple(p for p in paths if p.startswith("elastic/")),
    )
    return licence, inp


def scan_images(plan: BuildPlan) -> tuple[tuple[tuple[ImageEntry, ImageFacts], ...], int]:
    """Read every image's layers (see :mod:`bundler.sbom.layers`); returns facts and bytes."""
    sources: dict[str, FileRange | bytes] = {}
    for p in plan.payloads:
        if p.path.startswith(BLOB_PREFIX) and not isinstance(p.source, LateBytes):
            sources.setdefault(p.path, p.source)
    out = []
    total = 0
    for img in plan.images:
        layers = [
            (la.digest, sources[BLOB_PREFIX + la.digest.removeprefix("sha256:")])
            for la in img.layers
        ]
        total += sum(la.size for la in img.layers)
        out.append((img, scan_image(layers)))
    return tuple(out), total


def _placeholders(payloads: Sequence[Payload], chunk_size: int) -> list[FileEntry]:
    zero = "0" * 64
    return [
        FileEntry(
            path=p.path, size=p.size, sha256=zero, chunks=[zero] * chunk_count(p.size, chunk_size)
        )
        for p in {p.path: p for p in payloads}.values()
    ]


def add_sbom(plan: BuildPlan, inp: SbomInput, tool: str) -> SbomPlan:
    """Scan the images and append the SBOM member to ``plan.payloads``.

    Raises:
        SourceError: an image layer cannot be read, or holds an oversized package database.
    """
    started = time.monotonic()
    images, layer_bytes = scan_images(plan)
    seconds = time.monotonic() - started
    logger.info("sbom: read %d bytes of image layers in %.2f s", layer_bytes, seconds)
    full = replace(inp, images=images, tool=tool)
    draft = cyclonedx.render(full, _placeholders(plan.payloads, plan.chunk_size))
    plan.payloads.append(
        Payload(SBOM_PATH, LateBytes(len(draft), lambda entries: cyclonedx.render(full, entries)))
    )
    return SbomPlan(inp.licence, summarize(json.loads(draft)), layer_bytes, seconds)
