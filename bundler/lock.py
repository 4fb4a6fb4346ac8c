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
from typing import Any

from bundler.errors import ManifestError
from bundler.formats import UPGRADE_HINT, newer_format
from bundler.fsutil import atomic_write_bytes, remove_stale_temps

LOCK_FORMAT = "airgap-lock/1"


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
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ManifestError(
            f"unreadable lock: {e}", path=str(path), hint="Delete it and run `airgap lock` again."
        ) from e
    if isinstance(doc, dict) and (
        msg := newer_format(doc.get("format"), LOCK_FORMAT, requires=doc.get("requires"))
    ):
        raise ManifestError(msg, path=str(path), hint=UPGRADE_HINT)
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise ManifestError(
            "not an airgap lock", path=str(path), hint="Delete it and run `airgap lock` again."
        )
    return doc


def save_lock(path: Path, pins: dict[str, Any], *, name: str, platform: str) -> dict[str, Any]:
    doc = {"format": LOCK_FORMAT, "name": name, "platform": platform, **pins}
    remove_stale_temps(path.parent, path.name)  # a killed run's, beside the manifest
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return doc


def pins_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k in ("model", "images", "elastic")}
