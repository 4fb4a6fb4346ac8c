"""Split bundles: ``bundle.tar.part-000…`` plus a signed parts list.

The parts list (``bundle.tar.parts.json``) names every part with its size and
sha256 and is signed with the bundle's keys, so a missing, short or swapped part
is named before anything is read. ``bundle.tar.parts.sha256`` holds the same
hashes in ``sha256sum -c`` form for checks with stock tools on either side.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bundler import canonical, safejson
from bundler.boundedio import (
    MAX_PARTS,
    MAX_PARTS_LIST_SIZE,
    RefusedFile,
    open_regular,
    read_bounded,
)
from bundler.bundle.signing import TrustedKey, verify_threshold
from bundler.errors import BundleError, UsageError
from bundler.formats import UPGRADE_HINT, newer_format
from bundler.hashing import FileRange, ProgressFn, hash_sources

PARTS_FORMAT = "airgap-parts/1"
_PART_RE = re.compile(r"^(?P<base>.+)\.part-(?P<num>[0-9]{3,})$")


def part_name(bundle_name: str, number: int) -> str:
    return f"{bundle_name}.part-{number:03d}"


def parts_list_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".parts.json")


def parts_sums_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".parts.sha256")


@dataclass(frozen=True)
class Part:
    path: Path
    start: int  # offset of its first byte in the whole tar stream
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class BundleLocation:
    """Where a bundle's bytes are: one file, split parts, or standard input."""

    label: str  # how errors name the bundle
    base: Path | None  # bundle path (split: the name without .part-NNN); None for stdin
    parts: tuple[Part, ...]  # empty for stdin
    parts_list: dict[str, Any] | None = None  # the signed part of the parts list, if any
    parts_list_signatures: tuple[tuple[str, bytes], ...] = ()
    # The exact bytes the parts list's signatures cover, read once: verified and
    # co-signed as these bytes, never re-read from the file.
    parts_list_bytes: bytes | None = None

    @property
    def split(self) -> bool:
        return len(self.parts) > 1 or (bool(self.parts) and self.parts_list is not None)

    def locate(self, offset: int) -> tuple[str | None, int]:
        """The part holding stream byte ``offset`` and the offset inside that part."""
        if not self.split:
            return None, offset
        for p in self.parts:
            if p.start <= offset < p.start + p.size:
                return p.path.name, offset - p.start
        last = self.parts[-1]
        return last.path.name, offset - last.start


def locate_bundle(spec: str) -> BundleLocation:
    """Resolve ``BUNDLE`` as given on the command line: a file, a first part, or ``-``.

    Raises:
        UsageError: nothing found at that name.
        BundleError: a split bundle whose parts list or parts are inconsistent.
    """
    if spec == "-":
        return BundleLocation(label="<stdin>", base=None, parts=())
    path = Path(spec)
    m = _PART_RE.match(path.name)
    if m:
        base = path.with_name(m.group("base"))
    elif not path.exists() and path.with_name(part_name(path.name, 0)).exists():
        base = path
    else:
        if not path.is_file():
            raise UsageError(
                f"{spec}: no such bundle file",
                hint="Give the bundle file, its first part (.part-000), or - for stdin.",
            )
        return BundleLocation(
            label=str(path), base=path, parts=(Part(path, 0, path.stat().st_size),)
        )
    return _split_location(base)


def _split_location(base: Path) -> BundleLocation:
    list_path = parts_list_path(base)
    if os.path.lexists(list_path):  # a link is refused by name, not taken for "no list"
        try:
            raw = read_bounded(list_path, MAX_PARTS_LIST_SIZE).rstrip(b"\n")
            doc = safejson.obj(canonical.loads(raw), "$")
            signed = safejson.field(doc, "signed", dict, "$")
            if msg := newer_format(signed.get("format"), PARTS_FORMAT):
                raise BundleError(msg, bundle=str(list_path), hint=UPGRADE_HINT)
            if signed.get("format") != PARTS_FORMAT:
                raise ValueError(f"unknown format {signed.get('format')!r}")
            signatures = safejson.field(doc, "signatures", dict, "$")
            sigs = tuple(
                (k, bytes.fromhex(safejson.text(v, f"$.signatures.{k}")))
                for k, v in sorted(signatures.items())
            )
            entries: list[tuple[Path, int, str]] = []
            for i, item in enumerate(safejson.field(signed, "parts", list, "$.signed")):
                at = f"$.signed.parts[{i}]"
                entry = safejson.obj(item, at)
                entries.append(
                    (
                        base.with_name(safejson.field(entry, "name", str, at)),
                        safejson.count(safejson.field(entry, "size", int, at), f"{at}.size"),
                        str(safejson.field(entry, "sha256", str, at)),
                    )
                )
            if len(entries) > MAX_PARTS:
                raise ValueError(f"{len(entries)} parts, more than the {MAX_PARTS} allowed")
            for p, _, _ in entries:
                if p.parent != base.parent or _PART_RE.match(p.name) is None:
                    raise ValueError(f"part name {p.name!r} is not a sibling part file")
            signed_bytes = canonical.dumps(signed)
        except RefusedFile as e:
            raise BundleError(
                f"parts list {e.strerror}",
                bundle=str(list_path),
                hint=f"The parts list is the small regular file `airgap build` wrote beside "
                f"the parts; copy {list_path.name} again from the build machine.",
            ) from e
        except (OSError, ValueError, KeyError, TypeError, canonical.CanonicalJSONError) as e:
            raise BundleError(f"unreadable parts list: {e}", bundle=str(list_path)) from e
        parts, start = [], 0
        for p, size, sha in entries:
            if not p.is_file():
                raise BundleError(
                    "part is missing",
                    part=p.name,
                    hint=f"Copy {p.name} again (its sha256 is {sha}, see {list_path.name}).",
                )
            actual = p.stat().st_size
            if actual != size:
                raise BundleError(
                    f"part is {actual} bytes, the signed parts list says {size}",
                    part=p.name,
                    hint=f"Copy {p.name} again (its sha256 is {sha}, see {list_path.name}).",
                )
            parts.append(Part(p, start, size, sha))
            start += size
        return BundleLocation(
            label=str(base),
            base=base,
            parts=tuple(parts),
            parts_list=signed,
            parts_list_signatures=sigs,
            parts_list_bytes=signed_bytes,
        )
    # No parts list: take the contiguous run part-000, part-001, …
    found = []
    i = 0
    while (p := base.with_name(part_name(base.name, i))).is_file():
        found.append(p)
        i += 1
    if not found:
        raise UsageError(f"{base}: no such bundle or parts")
    parts, start = [], 0
    for p in found:
        size = p.stat().st_size
        parts.append(Part(p, start, size))
        start += size
    return BundleLocation(label=str(base), base=base, parts=tuple(parts))


def check_parts_list(
    loc: BundleLocation, trusted: dict[str, TrustedKey], index_sha256: str
) -> None:
    """The parts list must be signed by a trusted key and name this very index.

    Raises:
        TrustError: no trusted signature on the parts list.
        BundleError: the parts list belongs to another bundle.
    """
    if loc.parts_list is None or loc.parts_list_bytes is None:
        return
    verify_threshold(
        loc.parts_list_bytes,
        loc.parts_list_signatures,
        trusted,
        1,
        f"{loc.label}.parts.json",
    )
    if loc.parts_list.get("index_sha256") != index_sha256:
        raise BundleError(
            "the parts list belongs to a different bundle than part 000",
            bundle=str(parts_list_path(loc.base)) if loc.base else loc.label,
            hint="Keep the parts and the parts list of one build together; copy them again.",
        )


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def close(self) -> None: ...


class ChainedReader:
    """Read split parts (or one file, or stdin) as one stream, tracking the offset."""

    def __init__(self, loc: BundleLocation, stdin: Readable | None = None) -> None:
        self.loc = loc
        self.pos = 0
        self._files: list[Readable] = []
        self._i = 0
        self._cur: Readable | None = stdin
        self._fio: io.FileIO | None = None  # the current part, when reading files
        if stdin is None and not loc.parts:
            raise UsageError("no input")

    def _open_next(self) -> bool:
        if self._i >= len(self.loc.parts):
            return False
        part = self.loc.parts[self._i]
        self._i += 1
        try:  # a part swapped for a FIFO since it was found must not block the read
            f = io.FileIO(open_regular(part.path, follow_symlinks=True), "rb")
        except OSError as e:
            raise BundleError(f"cannot open part: {e.strerror}", part=part.path.name) from e
        if hasattr(os, "posix_fadvise"):  # a larger read-ahead window for a cold cache
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._files.append(f)
        self._cur = self._fio = f
        return True

    def skip(self, n: int) -> list[tuple[int, int, int]]:
        """Step over the next ``n`` bytes without reading them; return where they lie.

        The result is ``(fd, offset, size)`` ranges of the part files (more than one
        when the bytes cross into the next part), for workers that ``pread`` them in
        parallel. They add up to less than ``n`` where the bundle ends early. The fds
        stay open until :meth:`close`. Only for files, not stdin.
        """
        ranges: list[tuple[int, int, int]] = []
        left = n
        while left > 0:
            if self._fio is None and not self._open_next():
                break
            f = self._fio
            assert f is not None
            local = f.tell()
            take = min(left, max(0, os.fstat(f.fileno()).st_size - local))
            if take == 0:  # this part is used up: on to the next one
                self._cur = self._fio = None
                continue
            ranges.append((f.fileno(), local, take))
            f.seek(local + take)
            left -= take
            self.pos += take
        return ranges

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the stream allows; returns bytes read (0 at the end)."""
        got = 0
        while got < len(view):
            if self._cur is None and not self._open_next():
                break
            assert self._cur is not None
            n = self._cur.readinto(view[got:])
            if not n:
                if not self.loc.parts:  # stdin: EOF is the end
                    break
                self._cur = self._fio = None
                continue
            got += n
        self.pos += got
        return got

    def close(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()


def damaged_parts(parts: Sequence[Part], progress: ProgressFn | None = None) -> list[str]:
    """Hash ``parts`` (on every core) against their signed sha256; the damaged ones' names.

    A part whose size differs from the parts list, or that cannot be read to its end,
    is damaged too. Parts without a signed sha256 are not checked.

    Raises:
        BundleError: a part cannot be opened or read.
    """
    bad = []
    todo = []
    for p in parts:
        if p.sha256 is None:
            continue
        try:
            size = os.stat(p.path).st_size
        except OSError as e:
            raise BundleError(f"cannot read part: {e.strerror}", part=p.path.name) from e
        if size != p.size:
            bad.append(p.path.name)
        else:
            todo.append(p)
    if todo:
        try:
            digests = hash_sources(
                [FileRange(p.path, 0, p.size) for p in todo],
                max(p.size for p in todo) or 1,  # one chunk per part: its own sha256
                progress=progress,
            )
        except EOFError as e:
            raise BundleError(
                "a part shrank while it was hashed",
                bundle=str(todo[0].path.parent),
                hint="Make sure nothing writes to the parts, then run the command again.",
            ) from e
        except OSError as e:
            where = Path(e.filename).name if e.filename else todo[0].path.name
            raise BundleError(f"cannot read part: {e.strerror}", part=where) from e
        bad += [p.path.name for p, d in zip(todo, digests, strict=True) if d.sha256 != p.sha256]
    return [p.path.name for p in parts if p.path.name in bad]  # in the parts' order
