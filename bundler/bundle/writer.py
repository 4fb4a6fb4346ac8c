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
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from bundler import __version__, canonical, faults
from bundler.bundle import tarfmt
from bundler.bundle.entries import PayloadHashing, _dedupe, compute_entries, stamp
from bundler.bundle.index import (
    FORMAT,
    INDEX_MEMBER,
    REQUIRES,
    SIGNATURE_DIR,
    SUMS_MEMBER,
    FileEntry,
    Index,
    chunk_count,
    format_time,
    render_sha256sums,
)
from bundler.bundle.parts import PARTS_FORMAT, part_name, parts_list_path, parts_sums_path
from bundler.bundle.plan import BuildPlan, BuildResult, LateBytes, Payload, check_limits
from bundler.bundle.signing import SigningKey
from bundler.bundle.sizing import bundle_size, require_output_space
from bundler.errors import SourceError, UsageError
from bundler.fsutil import (
    COPY_BLOCK,
    atomic_write_bytes,
    copy_range,
    fsync_close,
    fsync_dir,
    remove_stale_temps,
    writing_in,
)
from bundler.hashcache import HashCache
from bundler.hashing import FileRange

logger = logging.getLogger(__name__)


ProgressFn = Callable[[int], None]


class _Output:
    """The tar byte stream, written to one file or cut into parts of ``split_size``.

    The first ``head_size`` bytes (index, signatures, SHA256SUMS) are reserved and
    filled in by :meth:`patch_head` once every hash is known, so the payload can be
    copied while it is still being hashed. Dirty pages are flushed in the background
    as the file grows, so the final fsync does not stall on gigabytes at once.
    """

    FLUSH_EVERY = 256 * 1024 * 1024

    def __init__(self, target: Path, split_size: int | None, head_size: int) -> None:
        self.target = target
        self.split_size = split_size
        self.head_size = head_size
        self.tmp_paths: list[Path] = []
        self.sizes: list[int] = []
        self._fd = -1
        self._left = 0
        self.total = 0
        self._unflushed = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flush")
        self._pending: list[Future[None]] = []
        self._part_hashes: dict[int, Future[str]] = {}

    def _next_file(self) -> None:
        self._close_current()
        name = (
            part_name(self.target.name, len(self.tmp_paths))
            if self.split_size
            else self.target.name
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=self.target.parent)
        os.fchmod(fd, 0o644)
        self._fd = fd
        self.tmp_paths.append(Path(tmp))
        self.sizes.append(0)
        self._left = self.split_size or (1 << 62)

    def _close_current(self) -> None:
        if self._fd < 0:
            return
        fd, number = self._fd, len(self.tmp_paths) - 1
        self._fd = -1
        self._pending.append(self._pool.submit(fsync_close, fd))
        start = self.total - self.sizes[number]
        if self.split_size and start >= self.head_size:
            # This part is final already: hash it now, in the background.
            self._part_hashes[number] = self._pool.submit(_sha256_file, self.tmp_paths[number])

    def _room(self) -> int:
        if self._fd < 0 or self._left == 0:
            self._next_file()
        return self._left

    def _account(self, n: int) -> None:
        self._left -= n
        self.sizes[-1] += n
        self.total += n
        self._unflushed += n
        if self._unflushed >= self.FLUSH_EVERY:
            self._unflushed = 0
            self._pending.append(self._pool.submit(os.fdatasync, self._fd))

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
            copy_range(src_fd, offset, self._fd, n)
            self._account(n)
            offset += n
            count -= n

    def finish(self) -> None:
        """Close the last file and wait until everything written is on disk."""
        self._close_current()
        for f in self._pending:
            f.result()
        self._pending.clear()

    def patch_head(self, head: bytes) -> list[str]:
        """Write the real head over the reserved bytes; return each part's sha256 (split)."""
        if len(head) != self.head_size:
            raise AssertionError(f"head is {len(head)} bytes, {self.head_size} were reserved")
        offset = 0
        for number, path in enumerate(self.tmp_paths):
            if offset >= len(head):
                break
            n = min(self.sizes[number], len(head) - offset)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.pwrite(fd, head[offset : offset + n], 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            offset += n
        if not self.split_size:
            return []
        for number, path in enumerate(self.tmp_paths):
            if number not in self._part_hashes:
                self._part_hashes[number] = self._pool.submit(_sha256_file, path)
        return [self._part_hashes[i].result() for i in range(len(self.tmp_paths))]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._pool.shutdown(wait=True, cancel_futures=True)
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


def build_index(plan: BuildPlan, entries: list[FileEntry], *, validate: bool = True) -> Index:
    """The index for ``entries`` (the carried files) and a delta's reused ones;
    ``validate=False`` only to size a placeholder."""
    fields = dict(
        format=FORMAT,
        requires=REQUIRES,
        tool=f"airgap {__version__}",
        name=plan.name,
        version=plan.version,
        created=format_time(plan.created),
        expires=format_time(plan.expires),
        chunk_size=plan.chunk_size,
        manifest=plan.manifest,
        lock=plan.lock,
        files=sorted([*entries, *plan.reused], key=lambda f: f.path),
        images=plan.images,
        model_facts=plan.model_facts,
        base=plan.base,
    )
    return Index(**fields) if validate else Index.model_construct(**fields)  # type: ignore[arg-type]


def _head(
    index_bytes: bytes, signatures: list[tuple[str, bytes]], sums: bytes, mtime: int
) -> bytes:
    """index.json, the signature members and SHA256SUMS, as tar bytes."""
    out = [
        tarfmt.member_header(INDEX_MEMBER, len(index_bytes), mtime),
        index_bytes,
        b"\0" * tarfmt.padding(len(index_bytes)),
    ]
    for keyid, sig in signatures:
        out += [
            tarfmt.member_header(f"{SIGNATURE_DIR}{keyid}.sig", len(sig), mtime),
            sig,
            b"\0" * tarfmt.padding(len(sig)),
        ]
    out += [
        tarfmt.member_header(SUMS_MEMBER, len(sums), mtime),
        sums,
        b"\0" * tarfmt.padding(len(sums)),
    ]
    return b"".join(out)


def check_output(output: Path, keys: Sequence[SigningKey], split_size: int | None) -> Path:
    """Refuse what would make :func:`write_bundle` fail before any work is done.

    Raises:
        UsageError: no signing key, a bad split size, or no such output directory.
    """
    if not keys:
        raise UsageError("at least one --key is needed to sign the bundle")
    if split_size is not None and split_size < 64 * 1024:
        raise UsageError("--split-size must be at least 64K")
    output = Path(output)
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent}: output directory does not exist")
    return output


def head_size_of(
    plan: BuildPlan,
    payloads: Sequence[Payload],
    keyids: Sequence[str],
    split_size: int | None = None,
) -> int:
    """The head's exact size, from placeholder digests of the same length (hex digests
    have a fixed length); also refuses (:func:`check_limits`) what readers would refuse."""
    zero = "0" * 64
    placeholder = [
        FileEntry(
            path=p.path,
            size=p.size,
            sha256=zero,
            chunks=[zero] * chunk_count(p.size, plan.chunk_size),
        )
        for p in payloads
    ]
    index = build_index(plan, placeholder, validate=False).to_bytes()
    mtime = int(plan.created.timestamp())
    sums = render_sha256sums(placeholder)
    size = len(_head(index, [(k, bytes(64)) for k in keyids], sums, mtime))
    check_limits(index, size, payloads, split_size, mtime)
    return size


def write_bundle(
    plan: BuildPlan,
    output: Path,
    keys: Sequence[SigningKey],
    *,
    split_size: int | None = None,
    progress: ProgressFn | None = None,
    hash_progress: ProgressFn | None = None,
    hash_cache: HashCache | None = None,
    hashing: PayloadHashing | None = None,
) -> BuildResult:
    """Hash, sign and write a bundle, copying the payload while it is being hashed.

    Hex digests have a fixed length, so the size of the index, the signatures and
    SHA256SUMS is known before any file is hashed: that much space is reserved at
    the start, the payload is copied behind it while every core hashes, and the
    signed head is written into the reserved space last. ``hashing``, when given, is
    that hashing already started (for the same payload files, less late ones); the
    caller closes it.

    Raises:
        UsageError: no signing key, a bad split size, or an index or parts list larger
            than readers accept.
        SourceError: a source is unreadable, changed during the build, or mismatched.
        InsufficientSpaceError: the output directory cannot hold the bundle (nothing written).
    """
    output = check_output(output, keys, split_size)
    payloads = _dedupe(plan.payloads)
    keys = list({k.keyid: k for k in keys}.values())
    mtime = int(plan.created.timestamp())
    early = [p for p in payloads if not isinstance(p.source, LateBytes)]
    if hashing is not None and not hashing.covers(early):
        raise AssertionError("the hashing started for this bundle is for other payload files")
    # Sources hashed before this call (a delta's, or `hashing`'s) are checked against
    # their stamps of then.
    before = (
        (hashing.stamps if hashing else None)
        or plan.stamps
        or {
            p.source.path: stamp(p.source.path) for p in payloads if isinstance(p.source, FileRange)
        }
    )
    head_size = head_size_of(plan, payloads, [k.keyid for k in keys], split_size)
    remove_stale_temps(output.parent, output.name)  # what a killed build of it left
    require_output_space(output, bundle_size(head_size, payloads, mtime), split_size)

    logger.info(
        "writing %s: %d files, %d bytes, head %d bytes",
        output,
        len(payloads),
        sum(p.size for p in payloads),
        head_size,
    )
    own = hashing is None
    job = hashing or PayloadHashing(early, plan.chunk_size, hash_progress, hash_cache)
    entries_future = job.future
    late: list[FileEntry] = []
    held = contextlib.ExitStack()  # our temp files are live until the commit
    held.enter_context(writing_in(output.parent))
    out = _Output(output, split_size, head_size)
    fds: dict[Path, int] = {}
    try:
        out.write(bytes(head_size))
        for p in payloads:
            out.write(tarfmt.member_header(p.path, p.size, mtime))
            if isinstance(p.source, bytes):
                out.write(p.source)
            elif isinstance(p.source, LateBytes):
                done = sorted([*entries_future.result(), *plan.reused], key=lambda e: e.path)
                data = p.source.rendered(p.path, done)
                late += compute_entries([Payload(p.path, data)], plan.chunk_size)
                out.write(data)
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
            faults.point("build.payload-written")
        out.write(tarfmt.END_OF_ARCHIVE)
        out.finish()
        entries = sorted([*entries_future.result(), *late], key=lambda e: e.path)
        for path, was in before.items():
            if stamp(path) != was:
                raise SourceError(
                    "changed while the bundle was being built",
                    path=str(path),
                    hint="Do not modify sources during `airgap build`; run it again.",
                )
        index = build_index(plan, entries)
        index_bytes = index.to_bytes()
        signatures = sorted((k.keyid, k.sign(index_bytes)) for k in keys)
        part_hashes = out.patch_head(
            _head(index_bytes, signatures, render_sha256sums(entries), mtime)
        )
        faults.point("build.head-written")  # index and signatures in the temp file(s)
        outputs = _commit(out, output, index, index_bytes, part_hashes, keys)
    except BaseException as e:
        if own:
            job.close()
        out.discard()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and not e.filename:
            raise OSError(e.errno, e.strerror, str(output)) from e  # say which disk is full
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
        held.close()
    if own:
        job.close()
    out.close()
    return BuildResult(
        index=index,
        index_sha256=hashlib.sha256(index_bytes).hexdigest(),
        outputs=outputs,
        size=out.total,
        signers=tuple(k for k, _ in signatures),
    )


def _commit(
    out: _Output,
    output: Path,
    index: Index,
    index_bytes: bytes,
    part_hashes: list[str],
    keys: Sequence[SigningKey],
) -> tuple[Path, ...]:
    directory = output.parent
    if not out.split_size:
        faults.point("build.before-rename")
        os.replace(out.tmp_paths[0], output)
        # parts of an earlier split build of the same name must not look current
        for stale in (parts_list_path(output), parts_sums_path(output)):
            stale.unlink(missing_ok=True)
        i = 0
        while (stale := directory / part_name(output.name, i)).exists():
            stale.unlink()
            i += 1
        fsync_dir(directory)
        return (output,)
    faults.point("build.before-rename")
    output.unlink(missing_ok=True)  # an earlier single-file build would shadow the parts
    finals = [directory / part_name(output.name, i) for i in range(len(out.tmp_paths))]
    for tmp, final in zip(out.tmp_paths, finals, strict=True):
        os.replace(tmp, final)
    # A previous, longer build of the same name must not leave parts that look current.
    i = len(finals)
    while (stale := directory / part_name(output.name, i)).exists():
        stale.unlink()
        i += 1
    faults.point("build.parts-renamed")  # the parts in place, their signed list not yet
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
