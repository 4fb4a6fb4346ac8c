"""Install state that outlives one run. For now: rollback protection.

The highest version installed per bundle name is kept in ``versions.json``
under the state directory; an install of a lower version is refused unless the
operator asks for a downgrade on purpose. Writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

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
