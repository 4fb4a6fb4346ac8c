"""What a verifying read is told (``TrustPolicy``), where payload goes (``Sink``), and
what it proves (``VerifyResult``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bundler.bundle.index import FileEntry, Index
from bundler.bundle.parts import BundleLocation
from bundler.bundle.plan import DeltaSummary
from bundler.bundle.signing import TrustedKey


class Sink(Protocol):
    """Receives payload as it streams; keeps it provisional until ``commit``.

    For members where ``verified_only(entry)`` is true, ``open_member``, ``write``
    and ``close_member`` are called from a delivery thread, and each chunk's bytes
    arrive only after that chunk matched its signed hash (for data handed straight
    to another program, such as an image load). Other members are written as they
    stream, from the reading thread, and are checked before ``commit``.
    """

    def verified_only(self, entry: FileEntry) -> bool: ...

    def begin(
        self, index: Index, index_bytes: bytes, signatures: list[tuple[str, bytes]], sums: bytes
    ) -> None: ...
    def open_member(self, entry: FileEntry) -> None: ...
    def write(self, data: memoryview) -> None: ...
    def close_member(self, entry: FileEntry) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


@dataclass(frozen=True)
class TrustPolicy:
    trusted: dict[str, TrustedKey]
    threshold: int = 1
    now: datetime | None = None
    # Called after the signature and expiry checks, before any payload byte is
    # used (install passes its preflight here). Returning True ends the pass there:
    # nothing of the payload is read, the sink is not begun, and the result says
    # ``ended_early``. Raising refuses the bundle.
    before_payload: Callable[[VerifyResult], bool | None] | None = None


@dataclass
class VerifyResult:
    location: BundleLocation
    index: Index
    index_sha256: str
    signers: tuple[str, ...]
    untrusted_signers: tuple[str, ...]
    bytes_read: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    ended_early: bool = False  # the before_payload hook ended the pass (payload unread)
    index_bytes: bytes = b""  # the exact bytes the signatures were checked over

    def to_json(self) -> dict[str, object]:
        """What ``airgap verify --json`` prints."""
        loc = self.location
        return {
            "ok": True,
            "name": self.index.name,
            "version": self.index.version,
            "expires": self.index.expires,
            "index_sha256": self.index_sha256,
            "signers": list(self.signers),
            "untrusted_signers": list(self.untrusted_signers),
            "files": len(self.index.files),
            "bytes": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "parts": [p.path.name for p in loc.parts] if loc.split else [],
            **({"base": d.to_json()} if (d := DeltaSummary.of(self.index)) else {}),
        }
