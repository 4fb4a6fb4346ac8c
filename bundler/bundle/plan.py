"""What a build writes (``BuildPlan`` of ``Payload`` files) and what it made
(``BuildResult``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.boundedio import MAX_INDEX_SIZE, MAX_INDEX_VALUES, MAX_PARTS, json_values_bound
from bundler.bundle import tarfmt
from bundler.bundle.index import BaseRef, FileEntry, ImageEntry, Index
from bundler.errors import UsageError
from bundler.facts import ModelFacts
from bundler.hashing import Digests, FileRange
from bundler.pins import Pins

if TYPE_CHECKING:
    from bundler.sbom.generate import SbomPlan


@dataclass(frozen=True)
class LateBytes:
    """A small file made only once every other payload file is hashed (the SBOM, which
    names their sha256). ``render`` gets the other files' entries and must return
    exactly ``size`` bytes: the writer reserves the space before it knows them."""

    size: int
    render: Callable[[Sequence[FileEntry]], bytes]

    def rendered(self, path: str, entries: Sequence[FileEntry]) -> bytes:
        """The bytes, given the other files' entries; exactly the reserved size."""
        data = self.render(entries)
        if len(data) != self.size:
            raise AssertionError(f"{path}: rendered {len(data)} bytes, {self.size} were reserved")
        return data


@dataclass(frozen=True)
class Payload:
    """One file to carry: where it goes in the bundle and where its bytes are now.

    ``expected_sha256`` is the upstream identity to check (an OCI digest, an LFS
    oid); ``digests`` may be given when they were computed earlier (download cache).
    """

    path: str
    source: FileRange | bytes | LateBytes
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
    # A delta (bundler.bundle.delta): files listed in the index but not carried (their
    # bytes come from the base at install), and the base they come from.
    reused: list[FileEntry] = field(default_factory=list)
    base: BaseRef | None = None
    stamps: dict[Path, tuple[int, int]] | None = None  # sources' (size, mtime) when hashed


def check_limits(
    index: bytes, head_size: int, payloads: Sequence[Payload], split_size: int | None, mtime: int
) -> None:
    """Refuse, before any work, to write what every reader would refuse.

    ``index`` is the index with placeholder digests (the same length as the real one).

    Raises:
        UsageError: the index would pass :data:`~bundler.boundedio.MAX_INDEX_SIZE` or
            :data:`~bundler.boundedio.MAX_INDEX_VALUES`, or ``split_size`` would cut the
            bundle into more than :data:`~bundler.boundedio.MAX_PARTS` parts.
    """
    values = json_values_bound(index)
    if len(index) > MAX_INDEX_SIZE or values > MAX_INDEX_VALUES:
        raise UsageError(
            f"the signed index would be {len(index)} bytes with up to {values} JSON values; "
            f"readers accept at most {MAX_INDEX_SIZE} bytes and {MAX_INDEX_VALUES} values",
            hint="Use a larger --chunk-size: the index holds one sha256 per chunk of every file.",
        )
    if split_size:
        total = head_size + len(tarfmt.END_OF_ARCHIVE)
        for p in payloads:
            total += len(tarfmt.member_header(p.path, p.size, mtime)) + p.size
            total += tarfmt.padding(p.size)
        if (parts := -(-total // split_size)) > MAX_PARTS:
            raise UsageError(
                f"--split-size {split_size} would cut the {total}-byte bundle into {parts} "
                f"parts; readers accept at most {MAX_PARTS}",
                hint="Use a larger --split-size (fat32 for FAT32 media).",
            )


@dataclass(frozen=True)
class BuildResult:
    index: Index
    index_sha256: str
    outputs: tuple[Path, ...]  # the bundle file, or every part then the parts list
    size: int
    signers: tuple[str, ...]
    sbom: SbomPlan | None = None  # set by ``build`` (licence, package counts, scan time)

    def to_json(self) -> dict[str, object]:
        """What ``airgap build --json`` prints."""
        lic = self.index.lock.license
        extra: dict[str, object] = {}
        if lic is not None:
            extra["license"] = lic.model_dump(mode="json")
        if self.sbom is not None:
            extra["sbom"] = {
                **self.sbom.summary.to_json(),
                # the image layers read for it: their cost shows apart from hashing's
                "layer_bytes": self.sbom.layer_bytes,
                "layer_seconds": round(self.sbom.layer_seconds, 3),
            }
        return {
            "name": self.index.name,
            "version": self.index.version,
            "outputs": [str(p) for p in self.outputs],
            "bytes": self.size,
            "files": len(self.index.files),
            "index_sha256": self.index_sha256,
            "signers": list(self.signers),
            "expires": self.index.expires,
            **extra,
            **({"base": d.to_json()} if (d := DeltaSummary.of(self.index)) else {}),
        }


@dataclass(frozen=True)
class DeltaSummary:
    """A delta's base, and what it carries and reuses (for the outputs)."""

    index_sha256: str
    name: str
    version: int
    carried_files: int
    carried_bytes: int
    reused_files: int
    reused_bytes: int

    @classmethod
    def of(cls, index: Index) -> DeltaSummary | None:
        if index.base is None:
            return None
        reused = index.reused
        n = sum(f.size for f in reused)
        return cls(
            index_sha256=index.base.index_sha256,
            name=index.base.name,
            version=index.base.version,
            carried_files=len(index.files) - len(reused),
            carried_bytes=index.payload_bytes - n,
            reused_files=len(reused),
            reused_bytes=n,
        )

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)
