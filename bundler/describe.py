"""What a bundle holds, as plain data (rendered by ``airgap inspect``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bundler.bundle.index import BLOB_PREFIX, Index
from bundler.bundle.plan import DeltaSummary
from bundler.errors import ManifestError
from bundler.facts import ModelFacts
from bundler.gpu.catalog import Cell, fit_table
from bundler.gpu.fit import shape_of
from bundler.manifest import parse_manifest
from bundler.pins import LicensePin

if TYPE_CHECKING:
    from bundler.sbom.model import SbomSummary
from bundler.toolbundle import is_tool_bundle, tool_version


@dataclass(frozen=True)
class ModelInfo:
    """The model: the signed manifest's model section, plus what the index adds."""

    section: dict[str, Any]  # the manifest's ``model`` section as signed (repo or path, ...)
    commit: str | None  # the pinned Hugging Face commit, when the model came from a hub
    files: int
    bytes: int

    @property
    def served_name(self) -> str:
        return str(self.section.get("served_name", ""))

    @property
    def source(self) -> str:
        """``repo@commit`` (or ``@revision``) for a hub model, else the local path."""
        if self.section.get("repo"):
            return f"{self.section['repo']}@{self.commit or self.section.get('revision')}"
        return str(self.section.get("path"))

    def to_json(self) -> dict[str, object]:
        out = dict(self.section)
        if self.commit is not None:
            out["commit"] = self.commit
        return {**out, "files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class ImageInfo:
    role: str
    ref: str
    digest: str
    config_digest: str
    platform: str
    layers: int
    bytes: int

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ElasticFileInfo:
    path: str
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BundleInfo:
    """A summary of a bundle's signed index (nothing in it is verified)."""

    format: str
    name: str
    version: int
    created: str
    expires: str
    tool: str
    index_sha256: str
    signers: list[str]
    chunk_size: int
    model: ModelInfo
    images: list[ImageInfo]
    elastic: list[ElasticFileInfo]
    files: int
    total_bytes: int
    model_facts: ModelFacts | None = None  # format 2: signed facts for the GPU checks
    fit: list[Cell] = dataclasses.field(default_factory=list)  # common GPUs x TP sizes
    license: LicensePin | None = None  # the model's licence (bundles built with an SBOM)
    license_accepted: str | None = None  # the builder's acceptance, from the signed manifest
    sbom: SbomSummary | None = None  # counts and licences from the SBOM member (unverified)
    base: DeltaSummary | None = None  # a delta: its base, what it carries and reuses
    carries_tool: str | None = None  # a tool bundle: its airgap; a release: its tool member

    def to_json(self) -> dict[str, object]:
        """What ``airgap inspect --json`` prints (keys in this order)."""
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "expires": self.expires,
            "tool": self.tool,
            "index_sha256": self.index_sha256,
            "signers": self.signers,
            "chunk_size": self.chunk_size,
            "model": self.model.to_json(),
            "images": [i.to_json() for i in self.images],
            "elastic": [e.to_json() for e in self.elastic],
            "files": self.files,
            "total_bytes": self.total_bytes,
            "model_facts": self.model_facts.model_dump(mode="json") if self.model_facts else None,
            "fit": [c.to_json() for c in self.fit],
            "license": self.license.model_dump(mode="json") if self.license else None,
            "license_accepted": self.license_accepted,
            "sbom": self.sbom.to_json() if self.sbom else None,
            **({"base": self.base.to_json()} if self.base else {}),
            "carries_tool": self.carries_tool,
        }


def _fit(index: Index) -> list[Cell]:
    """The fit table from the signed facts and the signed manifest's serve section."""
    if index.model_facts is None:
        return []
    try:
        serve = parse_manifest(index.manifest, source="signed manifest").serve
    except ManifestError:
        return []
    return fit_table(index.model_facts, shape_of(serve))


def describe(
    index: Index, index_sha256: str, signers: list[str], sbom: SbomSummary | None = None
) -> BundleInfo:
    """A JSON-able summary of a bundle's signed index."""
    by_path = {f.path: f for f in index.files}
    model_files = [f for f in index.files if f.path.startswith("models/")]
    section = index.manifest.get("model", {})
    model = ModelInfo(
        section=dict(section) if isinstance(section, dict) else {},
        commit=index.lock.commit,
        files=len(model_files),
        bytes=sum(f.size for f in model_files),
    )
    images = []
    for img in index.images:
        blobs = {img.manifest_digest, img.config_digest, *(la.digest for la in img.layers)}
        images.append(
            ImageInfo(
                role=img.role,
                ref=img.ref,
                digest=img.manifest_digest,
                config_digest=img.config_digest,
                platform=img.platform,
                layers=len(img.layers),
                bytes=sum(by_path[BLOB_PREFIX + d.removeprefix("sha256:")].size for d in blobs),
            )
        )
    elastic = [
        ElasticFileInfo(path=f.path, bytes=f.size, sha256=f.sha256)
        for f in index.files
        if f.path.startswith("elastic/")
    ]
    carries: str | None
    if is_tool_bundle(index):
        carries = f"airgap {tool_version(index)} (a tool bundle: sh tool/install.sh)"
    else:
        carries = next((f.path for f in index.files if f.path.startswith("tool/")), None)
    return BundleInfo(
        format=index.format,
        name=index.name,
        version=index.version,
        created=index.created,
        expires=index.expires,
        tool=index.tool,
        index_sha256=index_sha256,
        signers=signers,
        chunk_size=index.chunk_size,
        model=model,
        images=images,
        elastic=elastic,
        files=len(index.files),
        total_bytes=index.payload_bytes,
        model_facts=index.model_facts,
        fit=_fit(index),
        license=index.lock.license,
        license_accepted=model.section.get("license_accepted"),
        sbom=sbom,
        base=DeltaSummary.of(index),
        carries_tool=carries,
    )
