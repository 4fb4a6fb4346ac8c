"""Bounded reads of what lies beside a bundle, in size and in time.

Detached signatures, parts lists and key files are read before anything about them
is proven, so each read is bounded before a byte is read: only a regular file is
opened (``O_NOFOLLOW`` for files beside a bundle, and ``O_NONBLOCK`` so that a FIFO
cannot make ``open`` wait for a writer), its size is checked against a documented
maximum first, and at most one byte more than the maximum is ever read, so a file
that grows meanwhile is refused too. A stream (standard input) is bounded in time
instead: :class:`StallGuard` gives up when no byte arrives for a while.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from pathlib import Path

from bundler.errors import InputStalledError

# A detached signature is the raw 64-byte Ed25519 signature; 4 KiB leaves room for a
# future format (a longer algorithm, an envelope) and is still nothing to read.
MAX_SIGNATURE_FILE = 4 * 1024

# Signatures on one index or parts list: embedded members, detached files, list entries.
MAX_SIGNATURES = 64

# Split bundles: at most this many parts (10,000 parts of 4 GiB hold 40 TiB; the
# largest LLM stack today is under 2 TB). ``build`` refuses a --split-size that needs more.
MAX_PARTS = 10_000
# One part's entry is at most ~370 bytes (a 255-byte file name, a sha256, a 20-digit
# size, the JSON around them); a signature entry ~200 bytes.
MAX_PARTS_LIST_SIZE = MAX_PARTS * 400 + MAX_SIGNATURES * 256 + 64 * 1024  # 4,081,920 bytes

# The signed index. Real ones are small: a 70B model (30 weight files, 140 GB) with the
# vLLM and Nginx images and the Elastic artifacts is ~0.2 MB at the default 64 MiB chunk
# (one 67-byte hash per chunk); a 405B model (810 GB) ~0.9 MB. 16 MiB holds ~250,000
# chunk hashes, 15 TiB of payload at the default chunk size. ``build`` refuses more.
MAX_INDEX_SIZE = 16 * 1024 * 1024
# Parsing makes a Python object of every JSON value (up to ~150 bytes each, twice while
# the index is checked to round-trip), so their number is bounded as well: 250,000
# values (~250,000 chunk hashes) keep parsing an unsigned index under ~100 MB.
MAX_INDEX_VALUES = 250_000

# PEM key files are a few hundred bytes; an encrypted one under 1 KiB.
MAX_KEY_FILE = 64 * 1024

# `verify -` / `install -`: give up when standard input sends nothing for this long.
DEFAULT_STALL_TIMEOUT = 300.0
# ... and when its first byte takes longer than this: a producer may work a long time before
# it sends anything (`build -o -` hashes every source first: ~4 min per 100 GiB on 2 cores).
DEFAULT_START_TIMEOUT = 3600.0


def json_values_bound(data: bytes) -> int:
    """At least the number of values in the JSON text ``data``, counted without parsing.

    Every value but the first follows a ``[``, ``:`` or ``,``; those inside strings are
    counted too, which only makes the bound larger.
    """
    return data.count(b"[") + data.count(b":") + data.count(b",") + 1


class RefusedFile(OSError):
    """A file that is not read at all: not a regular file, or larger than allowed.

    An :class:`OSError` (``strerror`` says why, ``filename`` names the file), so callers
    that already translate I/O errors into their own family handle it as well.
    """


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path | str, *, follow_symlinks: bool = False) -> int:
    """Open ``path`` read-only and return its descriptor, only if it is a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once (it is then refused by ``fstat``)
    instead of waiting for a writer; for a regular file it changes nothing.

    Raises:
        RefusedFile: ``path`` is a symbolic link (unless ``follow_symlinks``), a FIFO, a
            device, a socket or a directory.
        OSError: it cannot be opened.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        # ELOOP: the last component is a link (O_NOFOLLOW); ENXIO: a socket, or a device
        # with nothing behind it. Say which, rather than the kernel's words for it.
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
            try:
                mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
                kind = _kind(mode)
                if stat.S_ISLNK(mode):
                    kind += f" (to {os.readlink(path)})"
            except OSError:
                raise e from None
            raise RefusedFile(errno.EINVAL, f"is {kind}, not a regular file", str(path)) from e
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise RefusedFile(errno.EINVAL, f"is {_kind(mode)}, not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path | str, limit: int, *, follow_symlinks: bool = False) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes.

    At most ``limit + 1`` bytes are read whatever the file claims, so neither a sparse
    file nor one that grows while it is read costs more memory than ``limit``.

    Raises:
        RefusedFile: not a regular file (see :func:`open_regular`), or larger than ``limit``.
        OSError: it cannot be opened or read.
    """
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise RefusedFile(
                errno.EFBIG, f"is {size} bytes, more than the {limit} bytes allowed", str(path)
            )
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            data = os.read(fd, limit + 1 - got)
            if not data:
                break
            chunks.append(data)
            got += len(data)
        if got > limit:
            raise RefusedFile(
                errno.EFBIG, f"grew past the {limit} bytes allowed while it was read", str(path)
            )
        return b"".join(chunks)
    finally:
        os.close(fd)


def _poll_ms(seconds: float) -> int:
    """``poll``'s timeout in ms: at most ~24 days (its int limit); no inf or nan reaches it."""
    if not seconds > 0:  # also nan
        return 0
    return int(min(seconds * 1000, 2**31 - 1))


class StallGuard:
    """Read a stream from a file descriptor, giving up when it stalls.

    Each read first waits (``poll``, no busy loop) for data for at most ``timeout``
    seconds; if none arrives, :class:`InputStalledError` names ``option``. Until the first
    byte has arrived the wait is ``start_timeout`` instead: a stream that has not started
    yet is not one that went quiet.
    """

    def __init__(
        self,
        fd: int,
        timeout: float = DEFAULT_STALL_TIMEOUT,
        *,
        what: str = "<stdin>",
        option: str = "--stall-timeout",
        start_timeout: float | None = None,
    ) -> None:
        self.fd = fd
        self.timeout = timeout
        self.start_timeout = timeout if start_timeout is None else start_timeout
        self._started = False
        self.what = what
        self.option = option
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLPRI)

    def readinto(self, buffer: memoryview, /) -> int:
        """Read what is there (at most ``len(buffer)``); 0 at the end of the stream.

        Raises:
            InputStalledError: no byte arrived within the timeout.
        """
        wait, option = self.timeout, self.option
        if not self._started:
            wait, option = self.start_timeout, "--start-timeout"
        if not self._poll.poll(_poll_ms(wait)):
            if not self._started:
                raise InputStalledError(
                    f"{self.what}: nothing arrived in the first {wait:g} s ({option}); giving up",
                    hint="Check what feeds standard input is running; a producer that works "
                    f"long before its first byte (a cold `airgap build -o -` hashes every "
                    f"source first) needs a longer {option} SECONDS.",
                )
            raise InputStalledError(
                f"{self.what}: no data arrived for {wait:g} s ({option}); giving up",
                hint=f"Check what feeds standard input (a stopped `cat`, a diode or link "
                f"that went quiet); allow longer pauses with {option} SECONDS.",
            )
        n = os.readv(self.fd, [buffer])
        self._started = True
        return n

    def close(self) -> None:
        """Standard input stays open: it is not ours to close."""
