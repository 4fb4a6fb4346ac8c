"""The pins of a build's sources, as typed records.

The same pins appear twice: in the lock file beside the manifest (``airgap lock``,
:mod:`bundler.lock`) and, signed, in the bundle's index (``Index.lock``), where they
say exactly which upstream commit, digests and files the bundle was built from.
Both are persisted documents, so the models here keep their compatibility rule:
they read what earlier releases wrote, and they serialise to exactly those bytes
(the index must round-trip through its model byte for byte, or it is refused).

A field that is unset (None) is left out when serialised, never written as null:
no release ever wrote a null here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    model_serializer,
)

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Size = Annotated[int, Field(ge=0, strict=True)]
BlobId = Annotated[str, Field(pattern=r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")]  # git sha1/sha256
Url = Annotated[str, Field(pattern=r"^https?://")]


def _relative(v: str) -> str:
    """A path that can become a bundle member (a lock is edited by hand, an index signed
    by a builder that may have been wrong: neither may name ``..`` or an absolute path)."""
    from bundler.bundle.index import path_problem  # the index imports this module

    if problem := path_problem(v):
        raise ValueError(f"{v!r}: {problem}")
    return v


RelPath = Annotated[str, AfterValidator(_relative)]


class _Pin(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


# -- the model ------------------------------------------------------------------------


class HfFile(_Pin):
    """One file of a Hugging Face repo at the pinned commit."""

    path: RelPath
    size: Size
    blob_id: BlobId  # the git blob id: what the hub lists for every file
    sha256: Sha256Hex | None = None  # LFS files: the oid the hub states


class LicensePin(_Pin):
    """The model's licence as the build read it from the card at the pinned commit.

    Set only in the signed index (the lock is written before the card is downloaded),
    so that ``install`` can show it and ask for acceptance before reading any payload.
    ``id`` is what an operator accepts (``license_accepted``, ``--accept-license``).
    """

    id: str  # the card's ``license`` (``llama3.3``), ``license_name`` for ``other``, or ``unknown``
    spdx: str  # SPDX licence id, or ``LicenseRef-…`` when the SPDX list has none
    osi_approved: bool
    gated: bool
    needs_acceptance: bool


class HfModelPin(_Pin):
    source: Literal["huggingface"] = "huggingface"
    repo: str
    revision: str
    commit: str
    files: tuple[HfFile, ...]
    gated: str | None = None  # the hub's ``gated`` ("auto"/"manual") when it said so
    license: LicensePin | None = None


class PathModelPin(_Pin):
    """Weights from a local directory (the manifest's ``model.path``)."""

    source: Literal["path"] = "path"
    path: str
    license: LicensePin | None = None


ModelPin = Annotated[HfModelPin | PathModelPin, Field(discriminator="source")]


# -- images ---------------------------------------------------------------------------


class LayerPin(_Pin):
    digest: Digest
    size: Size
    media_type: str = Field(alias="mediaType")


class RegistryImagePin(_Pin):
    """An image resolved in a registry for the manifest's platform."""

    source: Literal["registry"] = "registry"
    ref: str
    manifest_digest: Digest
    media_type: str
    config_digest: Digest
    config_size: Size
    platform: str
    layers: tuple[LayerPin, ...]


class ArchiveImagePin(_Pin):
    """An image read from a saved archive (``source: archive``) or a local engine
    (``source: docker``, ``--images-from docker``)."""

    source: Literal["archive", "docker"]
    ref: str
    manifest_digest: Digest
    config_digest: Digest
    platform: str


ImagePin = Annotated[RegistryImagePin | ArchiveImagePin, Field(discriminator="source")]


# -- Elastic artifacts ------------------------------------------------------------------


class ElasticFilePin(_Pin):
    """One downloaded artifact, named as it is carried under ``elastic/``."""

    name: RelPath
    url: Url
    size: Size
    sha256: Sha256Hex


class RemoteElasticPin(_Pin):
    files: tuple[ElasticFilePin, ...]


class PathElasticPin(_Pin):
    """Artifacts from a local directory (the manifest's ``elastic.source_dir``)."""

    source: Literal["path"]
    path: str
    elser: tuple[str, ...]  # model ids (ELSER, and E5 since it has a key of its own)
    product_docs: tuple[str, ...]  # <product>-<major>.<minor> of the plain product docs
    # The other knowledge-base artifacts by file name (Security Labs, OpenAPI, --<id>
    # variants); left out when there are none, as every bundle before them has none.
    knowledge_base: tuple[str, ...] | None = None


def _elastic_kind(v: object) -> str:
    source = v.get("source") if isinstance(v, dict) else getattr(v, "source", None)
    return "path" if source == "path" else "remote"


ElasticPin = Annotated[
    Annotated[RemoteElasticPin, Tag("remote")] | Annotated[PathElasticPin, Tag("path")],
    Discriminator(_elastic_kind),
]


def error_location(loc: tuple[int | str, ...]) -> str:
    """A validation error's place as an operator reads the document (``images.vllm.layers``),
    without the union tag pydantic puts in (``images.vllm.registry.layers``): the tag sits
    right after ``model`` and ``elastic``, and after ``images.<role>``."""
    parts = list(loc)
    at = 2 if parts[:1] == ["images"] else 1
    if parts[:1] in (["model"], ["elastic"], ["images"]) and len(parts) > at + 1:
        del parts[at]
    return ".".join(str(p) for p in parts) or "(top level)"


# -- all of them ----------------------------------------------------------------------


class Pins(_Pin):
    """The pins of every source. In the lock file only the remote ones appear (and
    a section only when it has something); in the index every section the build
    used appears, ``images`` even when empty."""

    model: ModelPin | None = None
    images: dict[str, ImagePin] | None = None
    elastic: ElasticPin | None = None

    @property
    def hf_model(self) -> HfModelPin | None:
        return self.model if isinstance(self.model, HfModelPin) else None

    @property
    def license(self) -> LicensePin | None:
        """The model's licence, when the index records it (builds from this release on)."""
        return self.model.license if self.model is not None else None

    @property
    def commit(self) -> str | None:
        return self.hf_model.commit if self.hf_model else None

    def registry_images(self) -> Iterator[tuple[str, RegistryImagePin]]:
        for role, img in (self.images or {}).items():
            if isinstance(img, RegistryImagePin):
                yield role, img

    @property
    def elastic_files(self) -> tuple[ElasticFilePin, ...]:
        return self.elastic.files if isinstance(self.elastic, RemoteElasticPin) else ()

    def is_empty(self) -> bool:
        return self.model is None and not self.images and self.elastic is None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)


def drift(old: Pins, new: Pins) -> list[str]:
    """What changed upstream since the lock was written, one line per change."""
    lines: list[str] = []
    om, nm = old.hf_model, new.hf_model
    if om is not None or nm is not None:
        if (om and om.commit) != (nm and nm.commit):
            lines.append(
                f"model: {nm and nm.repo}@{nm and nm.revision} now resolves to "
                f"{nm and nm.commit}, the lock has {om and om.commit}"
            )
        of = {f.path: f for f in (om.files if om else ())}
        nf = {f.path: f for f in (nm.files if nm else ())}
        for path in sorted(set(of) | set(nf)):
            if of.get(path) != nf.get(path):
                lines.append(
                    f"model file {path}: "
                    + ("added" if path not in of else "removed" if path not in nf else "changed")
                )
    oi, ni = old.images or {}, new.images or {}
    for role in sorted(set(oi) | set(ni)):
        a, b = oi.get(role), ni.get(role)
        if (a and (a.manifest_digest, a.ref)) != (b and (b.manifest_digest, b.ref)):
            lines.append(
                f"images.{role}: {b and b.ref} now is {b and b.manifest_digest}, "
                f"the lock has {a and a.ref} = {a and a.manifest_digest}"
            )
    oe = {f.name: f.sha256 for f in old.elastic_files}
    ne = {f.name: f.sha256 for f in new.elastic_files}
    for name in sorted(set(oe) | set(ne)):
        if oe.get(name) != ne.get(name):
            lines.append(f"elastic {name}: sha256 {ne.get(name)}, the lock has {oe.get(name)}")
    return lines
