"""The lock: the resolved pins of a manifest's remote sources.

``airgap lock MANIFEST`` writes ``<manifest>.lock.json`` beside the manifest: the
model's commit and every file's size and sha256 / git blob id, each image's
manifest digest, config and layers for the platform, and the Elastic artifacts'
sha256 and size. ``airgap build`` fetches exactly these pins and refuses to build
when upstream has moved (a branch, a tag, a file) unless ``--update-lock``.
The lock holds no secret and no machine path; it is meant to be committed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bundler import safejson
from bundler.bundle.index import path_problem
from bundler.errors import ManifestError
from bundler.formats import UPGRADE_HINT, newer_format
from bundler.fsutil import atomic_write_bytes

LOCK_FORMAT = "airgap-lock/1"
_RELOCK_HINT = "Delete it and run `airgap lock` again."

# The shape of what the fetch reads from a lock, checked before any of it is used (a lock
# is committed and can be edited by hand). New keys are allowed: within a format, new
# fields are optional (the compatibility rule).
_Size = Annotated[int, Field(ge=0, strict=True)]
_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class _Pin(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _ModelFile(_Pin):
    path: str
    size: _Size
    blob_id: Annotated[str, Field(pattern=r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")]
    sha256: _Sha256 | None = None

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if problem := path_problem(v):
            raise ValueError(f"{v!r}: {problem}")
        return v


class _Model(_Pin):
    source: str
    repo: str
    revision: str
    commit: str
    files: list[_ModelFile]


class _Layer(_Pin):
    digest: _Digest
    size: _Size
    mediaType: str


class _Image(_Pin):
    source: str
    ref: str
    manifest_digest: _Digest
    media_type: str
    config_digest: _Digest
    platform: str
    layers: list[_Layer]


class _ElasticFile(_Pin):
    name: Annotated[str, Field(pattern=r"^(elser|product-docs)/[^/]+$")]
    url: Annotated[str, Field(pattern=r"^https?://")]
    size: _Size
    sha256: _Sha256

    @field_validator("name")
    @classmethod
    def _relative(cls, v: str) -> str:
        if problem := path_problem(v):
            raise ValueError(f"{v!r}: {problem}")
        return v


class _Elastic(_Pin):
    files: list[_ElasticFile]


class _Lock(_Pin):
    format: str
    model: _Model | None = None
    images: dict[str, _Image] = Field(default_factory=dict)
    elastic: _Elastic | None = None


def lock_path(manifest: Path) -> Path:
    name = manifest.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return manifest.with_name(name + ".lock.json")


def load_lock(path: Path) -> dict[str, Any] | None:
    """The lock at ``path``, or None if there is none.

    Raises:
        ManifestError: the file exists but is not a lock.
    """
    try:
        doc = safejson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, safejson.JSONInputError) as e:
        raise ManifestError(f"unreadable lock: {e}", path=str(path), hint=_RELOCK_HINT) from e
    if isinstance(doc, dict) and (
        msg := newer_format(doc.get("format"), LOCK_FORMAT, requires=doc.get("requires"))
    ):
        raise ManifestError(msg, path=str(path), hint=UPGRADE_HINT)
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise ManifestError("not an airgap lock", path=str(path), hint=_RELOCK_HINT)
    try:
        _Lock.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ManifestError(
            f"invalid lock: {where}: {first['msg']}{more}", path=str(path), hint=_RELOCK_HINT
        ) from e
    return doc


def save_lock(path: Path, pins: dict[str, Any], *, name: str, platform: str) -> dict[str, Any]:
    doc = {"format": LOCK_FORMAT, "name": name, "platform": platform, **pins}
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return doc


def pins_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k in ("model", "images", "elastic")}
