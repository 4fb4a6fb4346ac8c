"""A bundle's exact size before it is written, and the free-space check that uses it."""

from __future__ import annotations

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


def require_output_space(output: Path, size: int) -> None:
    """Refuse a build whose bundle (``size`` bytes, split or not) cannot fit beside
    ``output`` before anything is written: a full disk found at 140 GB of 150 wastes
    the hours it took.

    Raises:
        InsufficientSpaceError: the output directory, the bundle's size and the free space.
    """
    require_free(
        output.parent,
        size,
        f"the bundle {output.name}",
        hint="Free space there, write the bundle to a larger disk (-o), or stream it "
        "without touching disk (`airgap build -o - … | …`).",
    )
