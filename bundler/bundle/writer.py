"""Write a bundle: index first, raw signatures, SHA256SUMS, then the payload.

The writer never holds a payload file in memory: data moves file-to-file with
``copy_file_range`` (in the kernel), falling back to ``sendfile`` and then to a
bounded read/write loop. Output goes to temp names beside the target and is
renamed into place only when complete, so an interrupted build leaves nothing a
later step could mistake for a bundle.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bundler import __version__, canonical
from bundler.bundle import tarfmt
from bundler.bundle.index import (
    INDEX_MEMBER,
    SIGNATURE_DIR,
    SUMS_MEMBER,
    FileEntry,
    ImageEntry,
    Index,
    format_time,
    render_sha256sums,
)
from bundler.bundle.parts import PARTS_FORMAT, part_name, parts_list_path, parts_sums_path
from bundler.bundle.signing import SigningKey
from bundler.errors import SourceError, UsageError
from bundler.fsutil import atomic_write_bytes, fsync_dir
from bundler.hashing import Digests, FileRange, hash_sources

COPY_BLOCK = 8 * 1024 * 1024


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
    lock: dict[str, object]
    payloads: list[Payload]
    images: list[ImageEntry] = field(default_factory=list)
    chunk_size: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class BuildResult:
    index: Index
    index_sha256: str
    outputs: tuple[Path, ...]  # the bundle file, or every part then the parts list
    size: int
    signers: tuple[str, ...]


ProgressFn = Callable[[int], None]


def _dedupe(payloads: Sequence[Payload]) -> list[Payload]:
    """One payload per path; the same blob named twice (a shared layer) is kept once."""
    by_path: dict[str, Payload] = {}
    for p in payloads:
        other = by_path.get(p.path)
        if other is None:
            by_path[p.path] = p
        elif other.size != p.size or (
            other.expected_sha256
            and p.expected_sha256
            and other.expected_sha256 != p.expected_sha256
        ):
            raise SourceError(
                f"two different files want the same bundle path {p.path!r}",
                path=p.origin or None,
                hint="Rename one of them; bundle paths must be unique.",
            )
    return [by_path[k] for k in sorted(by_path)]


def compute_entries(
    payloads: Sequence[Payload], chunk_size: int, progress: ProgressFn | None = None
) -> list[FileEntry]:
    """Hash what is not hashed yet (all cores) and check each against its expected digest.

    Raises:
        SourceError: a source cannot be read or does not match its expected sha256.
    """
    todo = [i for i, p in enumerate(payloads) if p.digests is None]
    try:
        computed = hash_sources([payloads[i].source for i in todo], chunk_size, progress=progress)
    except (OSError, EOFError) as e:
        raise SourceError(
            f"cannot read source: {e}", hint="Check the file exists and is readable."
        ) from e
    digests: list[Digests | None] = [p.digests for p in payloads]
    for i, computed_digests in zip(todo, computed, strict=True):
        digests[i] = computed_digests
    entries = []
    for p, d in zip(payloads, digests, strict=True):
        assert d is not None
        if p.expected_sha256 and d.sha256 != p.expected_sha256:
            raise SourceError(
                f"content sha256 {d.sha256} differs from its declared digest {p.expected_sha256}",
                path=p.origin or p.path,
                hint="The source is damaged or was changed; fetch or export it again.",
            )
        entries.append(FileEntry(path=p.path, size=p.size, sha256=d.sha256, chunks=list(d.chunks)))
    return entries


def _copy_range(src_fd: int, offset: int, dst_fd: int, count: int) -> None:
    """Copy ``count`` bytes from ``src_fd`` at ``offset`` to ``dst_fd``'s position."""
    use_cfr = hasattr(os, "copy_file_range")
    while count > 0:
        n = 0
        if use_cfr:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
        else:
            data = os.pread(src_fd, min(count, COPY_BLOCK), offset)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst_fd, view) :]
        if n == 0:
            raise EOFError(f"source ended {count} bytes early")
        offset += n
        count -= n


class _Output:
    """The tar byte stream, written to one file or cut into parts of ``split_size``."""

    def __init__(self, target: Path, split_size: int | None) -> None:
        self.target = target
        self.split_size = split_size
        self.tmp_paths: list[Path] = []
        self.sizes: list[int] = []
        self._fd = -1
        self._left = 0
        self.total = 0
        self._hasher_pool = ThreadPoolExecutor(max_workers=1) if split_size else None
        self._part_hashes: list[Future[str]] = []

    def _next_file(self) -> None:
        self._close_current()
        name = (
            part_name(self.target.name, len(self.tmp_paths))
            if self.split_size
            else (self.target.name)
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=self.target.parent)
        os.fchmod(fd, 0o644)
        self._fd = fd
        self.tmp_paths.append(Path(tmp))
        self.sizes.append(0)
        self._left = self.split_size or (1 << 62)

    def _close_current(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if self._hasher_pool is not None:
                path = self.tmp_paths[-1]
                self._part_hashes.append(self._hasher_pool.submit(_sha256_file, path))

    def _room(self) -> int:
        if self._fd < 0 or self._left == 0:
            self._next_file()
        return self._left

    def _account(self, n: int) -> None:
        self._left -= n
        self.sizes[-1] += n
        self.total += n

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(self._room(), len(view))
            chunk = view[:n]
            while chunk:
                chunk = chunk[os.write(self._fd, chunk) :]
            self._account(n)
            view = view[n:]

    def copy(self, src_fd: int, offset: int, count: int) -> None:
        while count:
            n = min(self._room(), count)
            _copy_range(src_fd, offset, self._fd, n)
            self._account(n)
            offset += n
            count -= n

    def finish(self) -> list[str]:
        """Close the last file; return each part's sha256 (split mode only)."""
        self._close_current()
        if self._hasher_pool is None:
            return []
        hashes = [f.result() for f in self._part_hashes]
        self._hasher_pool.shutdown()
        return hashes

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._hasher_pool is not None:
            self._hasher_pool.shutdown(cancel_futures=True)
        for p in self.tmp_paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(COPY_BLOCK)
        mv = memoryview(buf)
        while n := f.readinto(buf):
            h.update(mv[:n])
    return h.hexdigest()


def build_index(plan: BuildPlan, entries: list[FileEntry]) -> Index:
    return Index(
        format="airgap-bundle/1",
        tool=f"airgap {__version__}",
        name=plan.name,
        version=plan.version,
        created=format_time(plan.created),
        expires=format_time(plan.expires),
        chunk_size=plan.chunk_size,
        manifest=plan.manifest,
        lock=plan.lock,
        files=entries,
        images=plan.images,
    )


def write_bundle(
    plan: BuildPlan,
    output: Path,
    keys: Sequence[SigningKey],
    *,
    split_size: int | None = None,
    progress: ProgressFn | None = None,
    hash_progress: ProgressFn | None = None,
) -> BuildResult:
    """Hash, sign and write a bundle (one pass of copying after one pass of hashing).

    Raises:
        UsageError: no signing key, or a bad split size.
        SourceError: a source is unreadable, changed during the build, or mismatched.
    """
    if not keys:
        raise UsageError("at least one --key is needed to sign the bundle")
    if split_size is not None and split_size < 64 * 1024:
        raise UsageError("--split-size must be at least 64K")
    output = Path(output)
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent}: output directory does not exist")

    payloads = _dedupe(plan.payloads)
    before = {
        p.source.path: _stamp(p.source.path) for p in payloads if isinstance(p.source, FileRange)
    }
    entries = compute_entries(payloads, plan.chunk_size, progress=hash_progress)
    index = build_index(plan, entries)
    index_bytes = index.to_bytes()
    signatures = sorted((k.keyid, k.sign(index_bytes)) for k in {k.keyid: k for k in keys}.values())
    mtime = int(plan.created.timestamp())

    out = _Output(output, split_size)
    fds: dict[Path, int] = {}
    try:
        out.write(tarfmt.member_header(INDEX_MEMBER, len(index_bytes), mtime))
        out.write(index_bytes + b"\0" * tarfmt.padding(len(index_bytes)))
        for keyid, sig in signatures:
            out.write(tarfmt.member_header(f"{SIGNATURE_DIR}{keyid}.sig", len(sig), mtime))
            out.write(sig + b"\0" * tarfmt.padding(len(sig)))
        sums = render_sha256sums(entries)
        out.write(tarfmt.member_header(SUMS_MEMBER, len(sums), mtime))
        out.write(sums + b"\0" * tarfmt.padding(len(sums)))
        for p in payloads:
            out.write(tarfmt.member_header(p.path, p.size, mtime))
            if isinstance(p.source, bytes):
                out.write(p.source)
            else:
                src = p.source
                if src.path not in fds:
                    fds[src.path] = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    out.copy(fds[src.path], src.offset, src.size)
                except EOFError as e:
                    raise SourceError(
                        "file shrank while the bundle was written", path=str(src.path)
                    ) from e
            out.write(b"\0" * tarfmt.padding(p.size))
            if progress:
                progress(p.size)
        out.write(tarfmt.END_OF_ARCHIVE)
        part_hashes = out.finish()
        for path, stamp in before.items():
            if _stamp(path) != stamp:
                raise SourceError(
                    "changed while the bundle was being built",
                    path=str(path),
                    hint="Do not modify sources during `airgap build`; run it again.",
                )
        outputs = _commit(out, output, index, index_bytes, signatures, part_hashes, keys)
    except BaseException:
        out.discard()
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
    return BuildResult(
        index=index,
        index_sha256=hashlib.sha256(index_bytes).hexdigest(),
        outputs=outputs,
        size=out.total,
        signers=tuple(k for k, _ in signatures),
    )


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _commit(
    out: _Output,
    output: Path,
    index: Index,
    index_bytes: bytes,
    signatures: list[tuple[str, bytes]],
    part_hashes: list[str],
    keys: Sequence[SigningKey],
) -> tuple[Path, ...]:
    directory = output.parent
    if not out.split_size:
        os.replace(out.tmp_paths[0], output)
        fsync_dir(directory)
        return (output,)
    finals = [directory / part_name(output.name, i) for i in range(len(out.tmp_paths))]
    for tmp, final in zip(out.tmp_paths, finals, strict=True):
        os.replace(tmp, final)
    # A previous, longer build of the same name must not leave parts that look current.
    i = len(finals)
    while (stale := directory / part_name(output.name, i)).exists():
        stale.unlink()
        i += 1
    signed = {
        "format": PARTS_FORMAT,
        "bundle": output.name,
        "name": index.name,
        "version": index.version,
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "total_size": out.total,
        "part_size": out.split_size,
        "parts": [
            {"name": f.name, "size": s, "sha256": h}
            for f, s, h in zip(finals, out.sizes, part_hashes, strict=True)
        ],
    }
    body = canonical.dumps(signed)
    doc = {"signed": signed, "signatures": {k.keyid: k.sign(body).hex() for k in keys}}
    sums = "".join(f"{h}  {f.name}\n" for f, h in zip(finals, part_hashes, strict=True))
    atomic_write_bytes(parts_sums_path(output), sums.encode())
    atomic_write_bytes(parts_list_path(output), canonical.dumps(doc) + b"\n")
    fsync_dir(directory)
    return (*finals, parts_list_path(output))
