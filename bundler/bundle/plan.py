"""What a build writes (``BuildPlan`` of ``Payload`` files) and what it made
(``BuildResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bundler.bundle.index import ImageEntry, Index
from bundler.facts import ModelFacts
from bundler.hashing import Digests, FileRange
from bundler.pins import Pins


@dataclass(frozen=True)
class Payload:
    """One file to carry: where it goes in the bundle and where its bytes are now.

    ``expected_sha256`` is the upstream identity to check (an OCI digest, an LFS
    oid); ``digests`` may be given when they were computed earlier (download cache).
    """

    path: str
    source: FileRange | bytes
    expected_sha256: str | None = None
    digests: Digests | None = None
    origin: str = ""  # for error messages: where the bytes came from

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.size


@dataclass
class BuildPlan:
    name: str
    version: int
    created: datetime
    expires: datetime
    manifest: dict[str, object]
    lock: Pins
    payloads: list[Payload]
    images: list[ImageEntry] = field(default_factory=list)
    chunk_size: int = 64 * 1024 * 1024
    model_facts: ModelFacts | None = None  # signed in the index for the GPU preflight


@dataclass(frozen=True)
class BuildResult:
    index: Index
    index_sha256: str
    outputs: tuple[Path, ...]  # the bundle file, or every part then the parts list
    size: int
    signers: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """What ``airgap build --json`` prints."""
        return {
            "name": self.index.name,
            "version": self.index.version,
            "outputs": [str(p) for p in self.outputs],
            "bytes": self.size,
            "files": len(self.index.files),
            "index_sha256": self.index_sha256,
            "signers": list(self.signers),
            "expires": self.index.expires,
        }
