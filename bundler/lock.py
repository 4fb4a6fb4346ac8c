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
from typing import Literal

from pydantic import ValidationError

from bundler import safejson
from bundler.errors import ManifestError
from bundler.formats import UPGRADE_HINT, newer_format
from bundler.fsutil import atomic_write_bytes, remove_stale_temps
from bundler.pins import Pins, error_location

LOCK_FORMAT = "airgap-lock/1"
_REDO = "Delete it and run `airgap lock` again."


class Lock(Pins):
    """``<manifest>.lock.json``: the remote pins, for one manifest name and platform."""

    format: Literal["airgap-lock/1"] = "airgap-lock/1"
    name: str
    platform: str

    @property
    def pins(self) -> Pins:
        return Pins(model=self.model, images=self.images, elastic=self.elastic)


def lock_path(manifest: Path) -> Path:
    name = manifest.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return manifest.with_name(name + ".lock.json")


def load_lock(path: Path) -> Lock | None:
    """The lock at ``path``, or None if there is none.

    Raises:
        ManifestError: the file exists but is not a lock this airgap reads.
    """
    try:
        doc = safejson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, safejson.JSONInputError) as e:
        raise ManifestError(f"unreadable lock: {e}", path=str(path), hint=_REDO) from e
    if isinstance(doc, dict) and (
        msg := newer_format(doc.get("format"), LOCK_FORMAT, requires=doc.get("requires"))
    ):
        raise ManifestError(msg, path=str(path), hint=UPGRADE_HINT)
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise ManifestError("not an airgap lock", path=str(path), hint=_REDO)
    try:
        return Lock.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = error_location(first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ManifestError(
            f"invalid lock: {where}: {first['msg']}{more}", path=str(path), hint=_REDO
        ) from e


def save_lock(path: Path, pins: Pins, *, name: str, platform: str) -> Lock:
    lock = Lock(
        name=name, platform=platform, model=pins.model, images=pins.images, elastic=pins.elastic
    )
    text = json.dumps(lock.to_json(), indent=2, sort_keys=True) + "\n"
    remove_stale_temps(path.parent, path.name)  # a killed run's, beside the manifest
    atomic_write_bytes(path, text.encode())
    return lock
