"""Progress reporting seam: core code reports, the CLI decides how (or whether) to show it."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def stage(self, name: str, total: int | None = None) -> None:
        """A new phase starts (``total`` bytes, if known)."""

    def advance(self, n: int) -> None:
        """``n`` more bytes of the current phase are done (may be called from threads)."""

    def note(self, message: str) -> None:
        """Something the operator should see (a warning, a decision)."""


class NullReporter:
    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass
