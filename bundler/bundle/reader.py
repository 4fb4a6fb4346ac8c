"""Read a bundle in one streaming pass, trusting nothing until it is proven.

Order of proof: the index bytes and the signatures are read first (bounded
sizes) and the signature threshold is checked before the index is even parsed;
then expiry, rollback and the index's own consistency; then SHA256SUMS must be
exactly what the index implies; then each payload member must carry exactly the
tar header the index implies and its bytes must match every signed chunk hash;
then the archive must end with exactly the end-of-archive blocks. Every byte of
the bundle is therefore covered by the signature. Any failure names the member,
the split part and the byte offset, and the sink is told to throw its work away.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bundler.boundedio import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    MAX_INDEX_SIZE,
    MAX_SIGNATURES,
    StallGuard,
)
from bundler.bundle import tarfmt
from bundler.bundle.delivery import Delivery
from bundler.bundle.index import (
    INDEX_MEMBER,
    SIGNATURE_DIR,
    SUMS_MEMBER,
    Index,
    parse_index,
    path_problem,
    render_sha256sums,
)
from bundler.bundle.parts import (
    BundleLocation,
    ChainedReader,
    Readable,
    check_parts_list,
    locate_bundle,
)
from bundler.bundle.payload import expect_member, payload_error, verify_ranges
from bundler.bundle.policy import Sink, TrustPolicy, VerifyResult
from bundler.bundle.signing import KEYID_RE, SIGNATURE_SIZE, verify_threshold
from bundler.errors import BundleError, ExpiredError, UsageError
from bundler.hashing import BLOCK_SIZE, ChunkMismatch, StreamHasher

logger = logging.getLogger(__name__)


class _Reader:
    def __init__(self, loc: BundleLocation, stream: ChainedReader) -> None:
        self.loc = loc
        self.stream = stream
        self.label = loc.label

    def error(
        self,
        message: str,
        *,
        member: str | None = None,
        at: int | None = None,
        hint: str | None = None,
    ) -> BundleError:
        pos = self.stream.pos if at is None else at
        part, local = self.loc.locate(pos)
        return BundleError(
            message, bundle=self.label, member=member, part=part, offset=local, hint=hint
        )

    def read_exact(self, n: int, member: str | None) -> bytes:
        buf = bytearray(n)
        start = self.stream.pos
        got = self.stream.readinto(memoryview(buf))
        if got != n:
            raise self.error(
                f"bundle ends early: needed {n} more bytes, got {got} (truncated transfer?)",
                member=member,
                at=start + got,
                hint="Copy the bundle (or its last part) again; it is incomplete.",
            )
        return bytes(buf)

    def expect_zeros(self, n: int, member: str) -> None:
        if n and self.read_exact(n, member).count(0) != n:
            raise self.error("non-zero bytes in tar padding", member=member)

    def read_header(self, expecting: str) -> tarfmt.RawHeader | None:
        """Next member header, or None at the end-of-archive marker."""
        start = self.stream.pos
        block = self.read_exact(tarfmt.BLOCK, expecting)
        if block.count(0) == tarfmt.BLOCK:
            return None
        try:
            info = tarfmt.parse_ustar(block)
            raw = block
            if info.type == tarfile.XHDTYPE:
                if info.size > tarfmt.MAX_PAX_HEADER:
                    raise tarfmt.HeaderError("oversized pax header")
                data = self.read_exact(info.size + tarfmt.padding(info.size), expecting)
                records = tarfmt.parse_pax_records(data[: info.size])
                block2 = self.read_exact(tarfmt.BLOCK, expecting)
                if block2.count(0) == tarfmt.BLOCK:
                    raise tarfmt.HeaderError("pax header with no member after it")
                info2 = tarfmt.parse_ustar(block2)
                if info2.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                    raise tarfmt.HeaderError("two pax headers in a row")
                name = records.get("path", info2.name)
                size = tarfmt.pax_size(records, info2.size, name)
                return tarfmt.RawHeader(
                    name,
                    size,
                    info2.type,
                    raw + data + block2,
                    records.get("linkpath", info2.linkname),
                )
            return tarfmt.RawHeader(info.name, info.size, info.type, raw, info.linkname)
        except (tarfmt.HeaderError, ValueError) as e:
            named = getattr(e, "member", None) or f"(header where {expecting} was expected)"
            raise self.error(str(e), member=named, at=start) from e

    def check_member(
        self,
        h: tarfmt.RawHeader | None,
        expected: str,
        size: int | None,
        listed: set[str],
        seen: set[str],
        at: int,
    ) -> tarfmt.RawHeader:
        if h is None:
            raise self.error(
                f"archive ends where {expected} was expected (missing member)",
                member=expected,
                at=at,
                hint="The bundle is incomplete or was altered; copy it again.",
            )
        shown = repr(h.name) if path_problem(h.name) else h.name
        if h.kind is not None:
            target = f" -> {h.linkname!r}" if h.linkname else ""
            raise self.error(
                f"member is {h.kind}{target}; bundles carry only regular files",
                member=shown,
                at=at,
                hint="This bundle was crafted or altered; do not use it.",
            )
        problem = path_problem(h.name)
        if problem:
            raise self.error(
                f"unsafe member path: {problem}",
                member=shown,
                at=at,
                hint="This bundle was crafted or altered; do not use it.",
            )
        if h.name != expected:
            if h.name in seen:
                why = "duplicate member"
            elif h.name in listed:
                why = f"member out of order (expected {expected})"
            else:
                why = f"member not listed in the signed index (expected {expected})"
            raise self.error(
                why, member=shown, at=at, hint="This bundle was crafted or altered; do not use it."
            )
        if size is not None and h.size != size:
            raise self.error(
                f"member is {h.size} bytes but the signed index says {size}", member=h.name, at=at
            )
        return h


def _first_header(r: _Reader) -> tarfmt.RawHeader | None:
    try:
        return r.read_header(INDEX_MEMBER)
    except BundleError as e:
        if getattr(e.__cause__, "member", None) is not None:
            raise  # a tar header, with a size no member can have: named as it is
        raise r.error(
            "does not start with a tar header: not an airgap bundle, or damaged at its start",
            at=0,
            hint="Pass the .tar written by `airgap build` (or its .part-000); if it is one, "
            "copy it again.",
        ) from e


def _read_head_members(
    r: _Reader,
) -> tuple[bytes, list[tuple[str, bytes]], list[tuple[tarfmt.RawHeader, int]]]:
    """Read index.json, the signature members and SHA256SUMS's header (bounded sizes).

    Returns the index bytes, the embedded (keyid, signature) pairs, and every
    header read with its offset (the last one is SHA256SUMS's).
    """
    at = r.stream.pos
    h = _first_header(r)
    if h is not None and h.kind is None and h.name != INDEX_MEMBER:
        raise r.error(
            f"first member must be {INDEX_MEMBER}; this is not an airgap bundle",
            member=repr(h.name),
            at=at,
            hint="Pass the .tar written by `airgap build` (or its .part-000).",
        )
    index_h = r.check_member(h, INDEX_MEMBER, None, set(), set(), at)
    if index_h.size > MAX_INDEX_SIZE:  # refused by its header, before a byte of it is read
        raise r.error(
            f"index is {index_h.size} bytes, more than the {MAX_INDEX_SIZE} allowed",
            member=INDEX_MEMBER,
            at=at,
            hint="No airgap build writes such an index: this bundle was crafted or damaged.",
        )
    index_bytes = r.read_exact(index_h.size, INDEX_MEMBER)
    r.expect_zeros(tarfmt.padding(index_h.size), INDEX_MEMBER)

    embedded: list[tuple[str, bytes]] = []
    headers: list[tuple[tarfmt.RawHeader, int]] = [(index_h, at)]
    while True:
        at = r.stream.pos
        h = r.read_header(SUMS_MEMBER)
        if h is None or not h.name.startswith(SIGNATURE_DIR):
            break
        keyid = h.name[len(SIGNATURE_DIR) :].removesuffix(".sig")
        if (
            h.kind is not None
            or not h.name.endswith(".sig")
            or not KEYID_RE.match(keyid)
            or h.size != SIGNATURE_SIZE
            or len(embedded) >= MAX_SIGNATURES
        ):
            raise r.error("malformed signature member", member=repr(h.name), at=at)
        if any(k == keyid for k, _ in embedded):
            raise r.error("duplicate member", member=h.name, at=at)
        if embedded and keyid < embedded[-1][0]:
            raise r.error("signature members out of order", member=h.name, at=at)
        sig = r.read_exact(SIGNATURE_SIZE, h.name)
        r.expect_zeros(tarfmt.padding(SIGNATURE_SIZE), h.name)
        embedded.append((keyid, sig))
        headers.append((h, at))
    headers.append((r.check_member(h, SUMS_MEMBER, None, set(), set(), at), at))
    return index_bytes, embedded, headers


def _stdin_fd() -> int:
    """Raises: UsageError: the command was started with standard input closed (``<&-``)."""
    if sys.stdin is None:
        raise UsageError(
            "-: the bundle is read from standard input, which is closed here",
            hint="Pipe or redirect the bundle into the command, or give its path.",
        )
    return sys.stdin.fileno()


def read_bundle(
    spec: str | BundleLocation,
    policy: TrustPolicy,
    sink: Sink | None = None,
    *,
    detached: list[tuple[str, bytes]] | None = None,
    stdin: Readable | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> VerifyResult:
    """Verify a bundle in one pass, feeding its payload to ``sink`` as it streams.

    The sink's ``commit`` is called only after every check passed; on any
    failure its ``abort`` is called and the error raised. Standard input that sends
    nothing for ``stall_timeout`` seconds (``start_timeout`` before its first byte) raises
    InputStalledError.

    Raises:
        TrustError, ExpiredError, RollbackError: the index is not acceptable.
        BundleError: the bytes differ from what the signed index says.
    """
    loc = spec if isinstance(spec, BundleLocation) else locate_bundle(spec)
    if loc.base is None and stdin is None:
        stdin = StallGuard(_stdin_fd(), stall_timeout, start_timeout=start_timeout)
    stream = ChainedReader(loc, stdin)
    r = _Reader(loc, stream)
    started = time.monotonic()
    sink_started = False
    try:
        # 1. index + signatures + SHA256SUMS header: bounded reads, nothing parsed yet.
        index_bytes, embedded, headers = _read_head_members(r)
        sums_h = headers[-1][0]
        index_sha256 = hashlib.sha256(index_bytes).hexdigest()

        # 2. trust: signatures over the exact index bytes, before parsing them.
        check = verify_threshold(
            index_bytes,
            embedded + list(detached or []),
            policy.trusted,
            policy.threshold,
            f"{loc.label}: {INDEX_MEMBER}",
        )
        logger.info(
            "%s: index %s signed by trusted %s", loc.label, index_sha256, ", ".join(check.valid)
        )
        check_parts_list(loc, policy.trusted, index_sha256)
        index = parse_index(index_bytes, bundle=loc.label)
        now = policy.now or datetime.now(UTC)
        if now >= index.expires_at:
            raise ExpiredError(
                f"{loc.label}: bundle {index.name} v{index.version} expired at {index.expires}"
            )
        result = VerifyResult(
            loc, index, index_sha256, check.valid, check.unknown, index_bytes=index_bytes
        )
        if index.created_at > now:
            result.warnings.append(
                f"bundle was created at {index.created}, later than this host's clock"
            )
        if policy.before_payload and policy.before_payload(result):
            result.ended_early = True
            return result

        # 3. every header so far must be the exact bytes the writer makes.
        mtime = int(index.created_at.timestamp())
        for hdr, hat in headers:
            if hdr.raw != tarfmt.member_header(hdr.name, hdr.size, mtime):
                raise r.error("tar header differs from the canonical one", member=hdr.name, at=hat)
        expected_sums = render_sha256sums(index.carried)
        if sums_h.size != len(expected_sums):
            raise r.error("SHA256SUMS does not match the signed index", member=SUMS_MEMBER)
        sums = r.read_exact(sums_h.size, SUMS_MEMBER)
        if sums != expected_sums:
            raise r.error("SHA256SUMS does not match the signed index", member=SUMS_MEMBER)
        r.expect_zeros(tarfmt.padding(sums_h.size), SUMS_MEMBER)

        if sink is not None:
            sink_started = True
            sink.begin(index, index_bytes, embedded, sums)

        # 4. payload: headers exact, chunks verified on every core while streaming.
        _stream_payload(r, index, mtime, sink, workers, progress)

        # 5. the end: exactly two zero blocks, then nothing.
        at = stream.pos
        tail = r.read_exact(len(tarfmt.END_OF_ARCHIVE), "(end of archive)")
        if tail != tarfmt.END_OF_ARCHIVE:
            raise r.error(
                "unexpected data after the last listed member",
                at=at,
                member="(end of archive)",
                hint="An extra member was appended or the bundle was altered.",
            )
        if stream.readinto(memoryview(bytearray(1))):
            raise r.error("trailing bytes after the end of the archive", at=stream.pos - 1)
        if sink is not None:
            sink.commit()
    except BaseException:
        if sink is not None and sink_started:
            sink.abort()
        raise
    finally:
        stream.close()
    result.bytes_read = stream.pos
    result.seconds = time.monotonic() - started
    return result


def _stream_payload(
    r: _Reader,
    index: Index,
    mtime: int,
    sink: Sink | None,
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    if sink is None and r.loc.parts:  # a file, nothing takes the bytes: every core preads
        failure = verify_ranges(r, index, mtime, workers, progress)
    else:
        failure = _stream_chunks(r, index, mtime, sink, workers, progress)
    if failure is not None:
        raise payload_error(r, index, failure)


def _stream_chunks(
    r: _Reader,
    index: Index,
    mtime: int,
    sink: Sink | None,
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> ChunkMismatch | None:
    """Read the payload as a stream, hash its chunks on lanes, hand the bytes to ``sink``."""
    chunk_size = index.chunk_size
    block = min(BLOCK_SIZE, chunk_size)
    listed = {f.path for f in index.carried}  # a delta: what its base does not give
    seen: set[str] = set()
    hasher = StreamHasher(block, chunk_size, workers)
    delivery = Delivery(sink, hasher) if sink is not None else None
    chunk_id = 0
    try:
        for entry in index.carried:
            expect_member(r, entry, mtime, listed, seen)
            deferred = sink is not None and sink.verified_only(entry)
            if deferred:
                assert delivery is not None
                delivery.put(("open", entry))
            elif sink is not None:
                sink.open_member(entry)
            data_start = r.stream.pos
            for k, expected in enumerate(entry.chunks):
                chunk_start = r.stream.pos
                left = min(chunk_size, entry.size - k * chunk_size)
                held: list[tuple[memoryview, bytearray | None]] = []
                while left > 0:
                    n = min(block, left)
                    # Copied, never mapped: a sink must get the very bytes that were hashed.
                    buf = hasher.get_buffer()
                    view = memoryview(buf)[:n]
                    got = r.stream.readinto(view)
                    if got != n:
                        hasher.release(buf)
                        missing = entry.size - (r.stream.pos - data_start)
                        raise r.error(
                            "bundle ends early inside this member: truncated, "
                            f"{missing} bytes missing",
                            member=entry.path,
                            hint="Copy the bundle (or its last part) again; it is incomplete.",
                        )
                    if deferred:
                        held.append((view, buf))  # delivered once the chunk verified
                        hasher.update(chunk_id, view)
                    else:
                        if sink is not None:
                            sink.write(view)
                        hasher.update(chunk_id, view, release=buf)
                    del view
                    left -= n
                    if progress:
                        progress(n)
                result = hasher.finish_chunk(
                    chunk_id, expected, member=entry.path, chunk=k, offset=chunk_start
                )
                if deferred:
                    assert delivery is not None
                    delivery.put(("chunk", result, held))
                held = []
                chunk_id += 1
                if hasher.failed or (delivery is not None and delivery.error is not None):
                    break
            if hasher.failed or (delivery is not None and delivery.error is not None):
                break
            if deferred:
                assert delivery is not None
                delivery.put(("close", entry))
            elif sink is not None:
                sink.close_member(entry)
            r.expect_zeros(tarfmt.padding(entry.size), entry.path)
        if delivery is not None:
            delivery.finish()
    finally:
        if delivery is not None:
            delivery.stop()
        mismatch = hasher.close()
    return mismatch


@dataclass(frozen=True)
class BundleHead:
    """The first members of a bundle, read without verifying anything."""

    location: BundleLocation
    index_bytes: bytes
    index: Index
    embedded: tuple[tuple[str, bytes], ...]

    @property
    def index_sha256(self) -> str:
        return hashlib.sha256(self.index_bytes).hexdigest()


def read_head(spec: str | BundleLocation, *, stdin: Readable | None = None) -> BundleHead:
    """Read the index and embedded signatures (for ``inspect`` and ``sign``).

    Nothing here is trusted: callers that act on the bundle use :func:`read_bundle`.

    Raises:
        BundleError: the first members are not an airgap index and signatures.
    """
    loc = spec if isinstance(spec, BundleLocation) else locate_bundle(spec)
    if loc.base is None and stdin is None:
        stdin = StallGuard(_stdin_fd())
    stream = ChainedReader(loc, stdin)
    try:
        index_bytes, embedded, _ = _read_head_members(_Reader(loc, stream))
    finally:
        stream.close()
    return BundleHead(loc, index_bytes, parse_index(index_bytes, bundle=loc.label), tuple(embedded))
