"""The signed statement of a bundle: ``airgap/index.json``.

The index names every payload file in tar order with its size, whole-file
sha256 and the sha256 of each ``chunk_size`` piece, plus image metadata. It is
validated strictly even after its signature verified: a trusted key can still
sign something malicious by mistake, and the reader must not write outside its
staging directory because of it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from bundler import canonical
from bundler.boundedio import MAX_INDEX_SIZE, MAX_INDEX_VALUES, json_values_bound
from bundler.errors import BundleError
from bundler.facts import ImageCuda, ModelFacts
from bundler.formats import UPGRADE_HINT, newer_format
from bundler.pins import Pins

FORMAT = "airgap-bundle/2"  # what this release writes
PREVIOUS_FORMAT = "airgap-bundle/1"
READS = (PREVIOUS_FORMAT, FORMAT)
# The first release that reads FORMAT: what a newer format's refusal names as needed.
REQUIRES = "airgap>=0.2.0"
INDEX_MEMBER = "airgap/index.json"
SIGNATURE_DIR = "airgap/signatures/"
SUMS_MEMBER = "airgap/SHA256SUMS"
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 1024 * 1024 * 1024
PAYLOAD_ROOTS = ("models/", "images/blobs/sha256/", "elastic/", "sbom/", "tool/")
BLOB_PREFIX = "images/blobs/sha256/"
MAX_PATH_BYTES = 4096

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = r"^sha256:[0-9a-f]{64}$"
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, Field(pattern=_DIGEST)]


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative member path, or None if it is."""
    if not path:
        return "empty path"
    if _FORBIDDEN_CHARS.search(path):
        return "control character or backslash in path"
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return "path too long"
    if path.startswith("/"):
        return "absolute path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "path with an empty, '.' or '..' component"
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            return "path component longer than 255 bytes"
    return None


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks of a file: at least one (an empty file has the hash of no bytes)."""
    return max(1, -(-size // chunk_size))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _Optional(_Strict):
    """A model whose unset optional keys are left out, never written as null (no release
    wrote a null in the index, and the index must re-serialise to its signed bytes)."""

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class FileEntry(_Strict):
    path: str
    size: Annotated[int, Field(ge=0)]
    sha256: Sha256Hex
    chunks: list[Sha256Hex]

    @field_validator("path")
    @classmethod
    def _safe(cls, v: str) -> str:
        problem = path_problem(v)
        if problem:
            raise ValueError(f"{v!r}: {problem}")
        if not v.startswith(PAYLOAD_ROOTS):
            raise ValueError(f"{v!r}: payload must live under {', '.join(PAYLOAD_ROOTS)}")
        if v.startswith(BLOB_PREFIX) and not SHA256_RE.match(v[len(BLOB_PREFIX) :]):
            raise ValueError(f"{v!r}: image blobs are named by their sha256")
        return v


class Layer(_Strict):
    digest: Digest
    size: Annotated[int, Field(ge=0)]
    media_type: str


class ImageEntry(_Optional):
    role: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]
    ref: str
    tags: list[str] = Field(default_factory=list)
    platform: str
    manifest_digest: Digest
    manifest_media_type: str
    config_digest: Digest
    layers: list[Layer]
    cuda: ImageCuda | None = None  # format 2: the config's CUDA requirement (for the preflight)

    @property
    def blob_digests(self) -> list[str]:
        return [self.manifest_digest, self.config_digest, *(la.digest for la in self.layers)]


class SbomRef(_Strict):
    """Format 2, not written yet: the SBOM member under ``airgap/``, signed through its hash."""

    path: str
    sha256: Sha256Hex

    @field_validator("path")
    @classmethod
    def _under_airgap(cls, v: str) -> str:
        problem = path_problem(v)
        if problem or not v.startswith("airgap/") or v == INDEX_MEMBER:
            raise ValueError(f"{v!r}: {problem or 'the SBOM is a member under airgap/'}")
        return v


class BaseRef(_Optional):
    """Format 2: a delta bundle's base release, named by the sha256 of its signed index.

    ``reused`` lists (sorted) the payload paths whose bytes this bundle does not carry:
    install takes them from the base (the installed release, the engine, or the base
    bundle) and re-hashes them against this index's entries. ``layers`` gives each reused
    image layer's diff_id, the uncompressed digest an engine knows a layer by, so install
    can ask the engine for it before reading the payload.
    """

    index_sha256: Sha256Hex
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    version: Annotated[int, Field(ge=1)]
    reused: Annotated[list[str], Field(min_length=1)]
    layers: dict[Digest, Digest] | None = None

    @field_validator("reused")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        previous = ""
        for path in v:
            if problem := path_problem(path):
                raise ValueError(f"{path!r}: {problem}")
            if path <= previous:
                raise ValueError(f"{path!r}: reused paths out of order or duplicated")
            previous = path
        return v


class Index(_Optional):
    """The parsed, validated ``airgap/index.json`` (format 1 or 2)."""

    format: Literal["airgap-bundle/1", "airgap-bundle/2"]
    tool: str
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    version: Annotated[int, Field(ge=1)]
    created: str
    expires: str
    chunk_size: Annotated[int, Field(ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)]
    manifest: dict[str, Any]
    lock: Pins
    files: list[FileEntry]
    images: list[ImageEntry] = Field(default_factory=list)
    # Format 2 (all optional keys; a format-1 index has none of them):
    requires: Annotated[str, Field(pattern=r"^airgap>=[0-9]+(\.[0-9]+){1,2}$")] | None = None
    model_facts: ModelFacts | None = None
    sbom: SbomRef | None = None
    base: BaseRef | None = None

    @field_validator("created", "expires")
    @classmethod
    def _time(cls, v: str) -> str:
        parse_time(v)
        return v

    @field_validator("chunk_size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("chunk_size must be a power of two")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Index:
        if self.format == PREVIOUS_FORMAT:
            v2 = [k for k in ("requires", "model_facts", "sbom", "base") if getattr(self, k)]
            v2 += [f"images.{i.role}.cuda" for i in self.images if i.cuda is not None]
            if v2:
                raise ValueError(f"{', '.join(v2)}: not part of {PREVIOUS_FORMAT}")
        elif self.requires is None:
            raise ValueError(f"{self.format} names the release it needs (requires)")
        if parse_time(self.expires) <= parse_time(self.created):
            raise ValueError("expires must be after created")
        previous = ""
        by_path = {}
        for f in self.files:
            if f.path <= previous:
                raise ValueError(f"files out of order or duplicated at {f.path!r}")
            if previous and f.path.startswith(previous + "/"):
                raise ValueError(f"{f.path!r} is inside {previous!r}, which is a file")
            previous = f.path
            by_path[f.path] = f
            if len(f.chunks) != chunk_count(f.size, self.chunk_size):
                raise ValueError(f"{f.path!r}: wrong number of chunk hashes")
            if len(f.chunks) == 1 and f.chunks[0] != f.sha256:
                raise ValueError(f"{f.path!r}: a one-chunk file's chunk hash must be its sha256")
            if f.path.startswith(BLOB_PREFIX) and f.path[len(BLOB_PREFIX) :] != f.sha256:
                raise ValueError(f"{f.path!r}: blob name differs from its sha256")
        for img in self.images:
            for digest in img.blob_digests:
                path = BLOB_PREFIX + digest.removeprefix("sha256:")
                if path not in by_path:
                    raise ValueError(f"image {img.role}: blob {digest} is not in the bundle")
        for la_img in self.images:
            for la in la_img.layers:
                entry = by_path[BLOB_PREFIX + la.digest.removeprefix("sha256:")]
                if entry.size != la.size:
                    raise ValueError(f"image {la_img.role}: layer {la.digest} size mismatch")
        if self.base is not None:
            reused = set(self.base.reused)
            for path in self.base.reused:
                if path not in by_path:
                    raise ValueError(f"base.reused: {path!r} is not in files")
            layers = {la.digest for img in self.images for la in img.layers}
            for digest in self.base.layers or {}:
                if digest not in layers or BLOB_PREFIX + digest[7:] not in reused:
                    raise ValueError(f"base.layers: {digest} is not a reused image layer")
        return self

    @property
    def created_at(self) -> datetime:
        return parse_time(self.created)

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires)

    @property
    def payload_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def carried(self) -> list[FileEntry]:
        """The files whose bytes are in the bundle, in tar order: all of them, except in a
        delta the ones its base gives (``base.reused``)."""
        if self.base is None:
            return self.files
        reused = set(self.base.reused)
        return [f for f in self.files if f.path not in reused]

    @property
    def reused(self) -> list[FileEntry]:
        """A delta's files whose bytes come from its base (none in a full bundle)."""
        if self.base is None:
            return []
        reused = set(self.base.reused)
        return [f for f in self.files if f.path in reused]

    def to_bytes(self) -> bytes:
        return canonical.dumps(self.model_dump(mode="json", by_alias=True))


def parse_index(data: bytes, *, bundle: str | None = None) -> Index:
    """Parse the exact bytes of ``airgap/index.json`` (format 1 or 2).

    Raises:
        BundleError: not canonical JSON, a newer format, or not a valid index, or larger
            than an index may be (its bytes or its number of values), which is checked
            before parsing.
    """
    values = json_values_bound(data)
    if len(data) > MAX_INDEX_SIZE or values > MAX_INDEX_VALUES:
        raise BundleError(
            f"index is too large to parse: {len(data)} bytes and up to {values} JSON values "
            f"(at most {MAX_INDEX_SIZE} and {MAX_INDEX_VALUES})",
            bundle=bundle,
            member=INDEX_MEMBER,
            hint="No airgap build writes such an index: this bundle was crafted or damaged.",
        )
    try:
        doc = canonical.loads(data)
    except canonical.CanonicalJSONError as e:
        raise BundleError(
            f"index is not canonical JSON: {e}", bundle=bundle, member=INDEX_MEMBER
        ) from e
    if isinstance(doc, dict) and (
        msg := newer_format(
            doc.get("format"),
            FORMAT,
            requires=doc.get("requires"),
            tool=doc.get("tool"),
            reads=READS,
        )
    ):
        raise BundleError(msg, bundle=bundle, member=INDEX_MEMBER, hint=UPGRADE_HINT)
    if not isinstance(doc, dict) or doc.get("format") not in READS:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise BundleError(
            f"unsupported bundle format {found!r} (this airgap reads {' and '.join(READS)})",
            bundle=bundle,
            member=INDEX_MEMBER,
            hint="Use an airgap release that reads this format.",
        )
    try:
        index = Index.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(
            f"invalid index: {loc}: {first['msg']}",
            bundle=bundle,
            member=INDEX_MEMBER,
            hint="The signer made an index this reader refuses; rebuild with a released airgap.",
        ) from e
    if index.to_bytes() != data:
        raise BundleError("index does not round-trip", bundle=bundle, member=INDEX_MEMBER)
    return index


def render_sha256sums(files: list[FileEntry]) -> bytes:
    """``sha256sum -c`` text for every payload file (paths relative to the bundle root)."""
    lines = []
    for f in files:
        # sha256sum escapes names with a backslash or newline; our paths have neither.
        lines.append(f"{f.sha256}  {f.path}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")
