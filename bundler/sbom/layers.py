"""Read an image's package databases from its layer blobs, streaming, never unpacking.

Each layer blob (a tar, gzip-, bzip2-, xz- or zstd-compressed) is read once with
``tarfile`` in stream mode; only the few files that are package databases are read,
each up to :data:`MAX_DB_FILE` bytes (a larger one is refused, never truncated: an SBOM
that silently misses packages is worse than none). Layers are then merged in order
with the OCI whiteout rules, so a file that a later layer deleted (``.wh.<name>``,
or an opaque directory ``.wh..wh..opq``) or replaced is not listed.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from bundler.errors import SourceError
from bundler.hashing import FileRange
from bundler.sbom.packages import (
    OsRelease,
    Package,
    parse_apk,
    parse_dpkg,
    parse_metadata,
    parse_os_release,
)

MAX_DB_FILE = 16 * 1024 * 1024
DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d/"
APK_INSTALLED = "lib/apk/db/installed"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_TAR_BUFSIZE = 1024 * 1024
# Directories above the fixed database paths: a non-directory put there hides them.
_DB_DIRS = frozenset(
    p.rsplit("/", i)[0]
    for p in (DPKG_STATUS, DPKG_STATUS_D.rstrip("/"), APK_INSTALLED, *OS_RELEASE)
    for i in range(1, p.count("/") + 1)
) | {DPKG_STATUS_D.rstrip("/")}


def wanted(path: str) -> bool:
    """Whether ``path`` (relative, no leading ``./``) is a package database we read."""
    if path in (DPKG_STATUS, APK_INSTALLED, *OS_RELEASE):
        return True
    if path.startswith(DPKG_STATUS_D):
        name = path[len(DPKG_STATUS_D) :]
        return "/" not in name and not name.endswith(".md5sums") and bool(name)
    parts = path.rsplit("/", 2)
    return len(parts) >= 2 and parts[-1] == "METADATA" and parts[-2].endswith(".dist-info")


@dataclass
class LayerScan:
    """One layer's database files and the deletions it makes in the layers below."""

    files: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)  # paths (and what is under them)
    opaque: list[str] = field(default_factory=list)  # directories emptied of lower content
    replaced_dirs: list[str] = field(default_factory=list)  # dirs that replace a lower file


class _RangeReader(io.RawIOBase):
    """Read exactly a byte range of a file."""

    def __init__(self, r: FileRange) -> None:
        self._fd = os.open(r.path, os.O_RDONLY | os.O_CLOEXEC)
        self._pos, self._end = r.offset, r.offset + r.size

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._end - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._pos)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _open(source: FileRange | bytes) -> IO[bytes]:
    raw: IO[bytes] = (
        io.BytesIO(source)
        if isinstance(source, bytes)
        else io.BufferedReader(_RangeReader(source), _TAR_BUFSIZE)
    )
    head = source[:4] if isinstance(source, bytes) else raw.peek(4)[:4]  # type: ignore[attr-defined]
    if head != _ZSTD_MAGIC:
        return raw
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)


def _norm(name: str) -> str:
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name.rstrip("/")


def scan_layer(source: FileRange | bytes, label: str) -> LayerScan:
    """Stream one layer blob and keep its database files and whiteouts.

    Raises:
        SourceError: the blob is not a (compressed) tar, or a database file is too large.
    """
    scan = LayerScan()
    stream = _open(source)
    try:
        with tarfile.open(fileobj=stream, mode="r|*", bufsize=_TAR_BUFSIZE) as tf:
            for member in tf:
                path = _norm(member.name)
                head, _, base = path.rpartition("/")
                if base == OPAQUE:
                    scan.opaque.append(head)
                elif base.startswith(WHITEOUT):
                    scan.deleted.append(f"{head}/{base[len(WHITEOUT) :]}".lstrip("/"))
                elif member.isdir():
                    scan.replaced_dirs.append(path)
                elif member.islnk() and wanted(path) and _norm(member.linkname) in scan.files:
                    scan.deleted.append(path)
                    scan.files[path] = scan.files[_norm(member.linkname)]
                elif not (member.isreg() and wanted(path)):
                    if wanted(path) or path in _DB_DIRS or path.endswith(".dist-info"):
                        scan.deleted.append(path)  # a link or a file now stands there
                else:
                    if member.size > MAX_DB_FILE:
                        raise SourceError(
                            f"layer {label}: {path} is {member.size} bytes, more than the "
                            f"{MAX_DB_FILE} an SBOM reads",
                            hint="This is not a package database airgap can read; report it.",
                        )
                    f = tf.extractfile(member)
                    assert f is not None
                    scan.deleted.append(path)  # it replaces whatever a lower layer had
                    scan.files[path] = f.read(member.size)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise SourceError(
            f"layer {label}: cannot read it as a tar stream: {e}",
            hint="The image layer is damaged or of a kind airgap cannot read.",
        ) from e
    finally:
        stream.close()
    return scan


def merge(scans: Sequence[LayerScan]) -> dict[str, bytes]:
    """The database files visible in the image once every layer is applied in order."""
    visible: dict[str, bytes] = {}
    for scan in scans:
        gone = [p for p in visible if _hidden(p, scan)]
        for p in gone:
            del visible[p]
        visible.update(scan.files)
    return visible


def _hidden(path: str, scan: LayerScan) -> bool:
    """Whether a lower layer's ``path`` is hidden by ``scan`` (its whiteouts, replacements)."""
    for d in scan.deleted:
        if path == d or path.startswith(d + "/"):
            return True
    if path in scan.replaced_dirs:
        return True
    return any(not d or path.startswith(d + "/") for d in scan.opaque)


@dataclass(frozen=True)
class ImageFacts:
    os_release: OsRelease | None
    packages: tuple[Package, ...]


def facts_from_files(files: dict[str, bytes]) -> ImageFacts:
    """Parse the visible database files into packages (sorted) and the OS release."""
    os_release = None
    for name in OS_RELEASE:
        if name in files and (os_release := parse_os_release(files[name])) is not None:
            break
    packages: list[Package] = []
    for path, data in files.items():
        if path == DPKG_STATUS or path.startswith(DPKG_STATUS_D):
            packages += parse_dpkg(data, "/" + path)
        elif path == APK_INSTALLED:
            packages += parse_apk(data, "/" + path)
        elif path.endswith("/METADATA"):
            packages += parse_metadata(data, "/" + path)
    unique = {(p.kind, p.name, p.version, p.arch, p.found_in): p for p in packages}
    return ImageFacts(os_release, tuple(unique[k] for k in sorted(unique, key=str)))


def scan_image(
    layers: Sequence[tuple[str, FileRange | bytes]], workers: int | None = None
) -> ImageFacts:
    """Read every layer (in parallel: decompression runs outside the GIL), merge in order.

    ``layers`` are (digest, blob bytes or range), bottom layer first.

    Raises:
        SourceError: a layer cannot be read (see :func:`scan_layer`).
    """
    jobs = max(1, min(len(layers), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sbom-layer") as pool:
        scans = list(pool.map(lambda la: scan_layer(la[1], la[0]), layers))
    return facts_from_files(merge(scans))
