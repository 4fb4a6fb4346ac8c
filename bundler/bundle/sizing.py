"""A bundle's exact size before it is written, and the free-space check that uses it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bundler.bundle import tarfmt
from bundler.bundle.plan import Payload
from bundler.fsutil import require_free


def bundle_size(head_size: int, payloads: Sequence[Payload], mtime: int) -> int:
    """The exact size of the tar stream: head, every member with its header and padding,
    and the end-of-archive blocks (one file, split parts together, or a pipe)."""
    total = head_size + len(tarfmt.END_OF_ARCHIVE)
    for p in payloads:
        total += len(tarfmt.member_header(p.path, p.size, mtime)) + p.size
        total += tarfmt.padding(p.size)
    return total


# Room for the small files beside a split bundle (parts list, its sums, signatures), per
# part and in all: the parts list has ~150 bytes a part, SHA256SUMS-style lines ~100.
SIDECAR_PER_PART = 512
SIDECAR_FIXED = 64 * 1024


def disk_need(size: int, split_size: int | None, block: int) -> int:
    """What ``size`` bytes of bundle take on a disk of ``block``-byte blocks: each file
    rounded up to whole blocks, plus the sidecar files of a split bundle."""

    def blocks(n: int) -> int:
        return -(-n // block) * block

    if not split_size:
        return blocks(size)
    parts, last = divmod(size, split_size)
    need = parts * blocks(split_size) + blocks(last)
    count = parts + (1 if last else 0)
    return need + 3 * blocks(SIDECAR_FIXED + count * SIDECAR_PER_PART)


def require_output_space(output: Path, size: int, split_size: int | None = None) -> None:
    """Refuse a build whose bundle (``size`` bytes, split or not) cannot fit beside
    ``output`` before anything is written: a full disk found at 140 GB of 150 wastes
    the hours it took. Every file counts in whole blocks of that disk, and a split
    bundle's parts list, sums and signatures count too.

    Raises:
        InsufficientSpaceError: the output directory, the space needed and the free space.
    """
    try:
        block = max(512, os.statvfs(output.parent).f_frsize)
    except OSError:
        block = 4096
    require_free(
        output.parent,
        disk_need(size, split_size, block),
        f"the bundle {output.name}" + (" (its parts, parts list and sums)" if split_size else ""),
        hint="Free space there, write the bundle to a larger disk (-o), or stream it "
        "without touching disk (`airgap build -o - … | …`).",
    )
