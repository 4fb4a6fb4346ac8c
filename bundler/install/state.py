"""Install state that outlives one run. For now: rollback protection.

The highest version installed per bundle name is kept in ``versions.json``
under the state directory; an install of a lower version is refused unless the
operator asks for a downgrade on purpose. Writes are atomic.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from bundler.errors import InstallError, RollbackError
from bundler.fsutil import atomic_write_bytes

VERSIONS_FILE = "versions.json"


class VersionRegistry:
    """Highest installed version of each bundle name."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / VERSIONS_FILE

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise InstallError(
                f"{self.path}: unreadable install state: {e}",
                hint="Restore it from backup; without it rollback protection cannot work.",
            ) from e
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in data.items()
        ):
            raise InstallError(f"{self.path}: malformed install state")
        return data

    def installed(self, name: str) -> int | None:
        return self.load().get(name)

    def check(self, name: str, version: int, *, allow_downgrade: bool = False) -> None:
        """Refuse a version lower than the highest one installed for ``name``.

        Raises:
            RollbackError: ``version`` is lower and ``allow_downgrade`` is False.
        """
        current = self.installed(name)
        if current is not None and version < current and not allow_downgrade:
            raise RollbackError(
                f"bundle {name} v{version} is older than the installed v{current}",
            )

    def record(self, name: str, version: int) -> None:
        """Remember ``version`` if it is the highest seen for ``name``."""
        data = self.load()
        if data.get(name, 0) >= version:
            return
        data[name] = version
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, (json.dumps(data, sort_keys=True, indent=2) + "\n").encode())


RECEIPT_FILE = "receipt.json"
RECEIPT_FORMAT = "airgap-receipt/1"


class Receipt:
    """What this tool created under a prefix, so status/uninstall/rollback touch only that.

    ``releases`` maps ``<name>-<version>`` to what that release brought (index sha256,
    signers, images with ``created_by_us``); ``history`` is the activation order;
    ``pending`` is written *before* images are loaded and cleared after, so a run
    that was killed can be cleaned up by the next one.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / RECEIPT_FILE
        self.data: dict[str, Any] = {
            "format": RECEIPT_FORMAT,
            "current": None,
            "releases": {},
            "history": [],
            "pending": None,
        }

    @classmethod
    def load(cls, state_dir: Path) -> Receipt:
        r = cls(state_dir)
        try:
            data = json.loads(r.path.read_text())
        except FileNotFoundError:
            return r
        except (OSError, ValueError) as e:
            raise InstallError(
                f"{r.path}: unreadable receipt: {e}",
                hint="Restore it from backup; without it airgap cannot tell what it created.",
            ) from e
        if not isinstance(data, dict) or data.get("format") != RECEIPT_FORMAT:
            raise InstallError(f"{r.path}: not an airgap receipt")
        r.data = data
        return r

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def current(self) -> str | None:
        value = self.data.get("current")
        return str(value) if value else None

    @property
    def releases(self) -> dict[str, dict[str, Any]]:
        releases: dict[str, dict[str, Any]] = self.data["releases"]
        return releases

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(self.path, body.encode(), mode=0o600)

    def our_images(self, exclude: str | None = None) -> set[str]:
        """Image IDs that some release (other than ``exclude``) says this tool loaded."""
        ids: set[str] = set()
        for key, rel in self.releases.items():
            if key == exclude:
                continue
            ids.update(i["id"] for i in rel.get("images", []) if i.get("created_by_us"))
        return ids

    def images_in_use(self, exclude: str | None = None) -> set[str]:
        ids: set[str] = set()
        for key, rel in self.releases.items():
            if key != exclude:
                ids.update(i["id"] for i in rel.get("images", []))
        return ids


class InstallLock:
    """An exclusive lock on a prefix: one install/uninstall/rollback at a time."""

    def __init__(self, prefix: Path) -> None:
        self.path = Path(prefix) / ".airgap.lock"
        self._fd = -1

    def __enter__(self) -> InstallLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = -1
            raise InstallError(
                f"{self.path.parent}: another airgap run holds the lock (pid {holder})",
                hint="Wait for it to finish; if no airgap process runs, the lock frees itself.",
            ) from e
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1
