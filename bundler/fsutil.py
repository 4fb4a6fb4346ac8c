"""Bounded, atomic file writes: a partial file can never look valid."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import select
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from bundler import faults
from bundler.errors import InsufficientSpaceError
from bundler.fmt import human


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync and rename it into place.

    On any exception the temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    with writing_in(path.parent):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            os.fchmod(fd, mode)
            with naming(path), os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                faults.point(f"write.{path.name}")  # written, not yet renamed into place
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """An OSError raised inside names ``path``: ``os.write`` and friends report "No
    space left on device" without saying where, and the operator must know which disk."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


@contextlib.contextmanager
def writing_in(directory: Path) -> Iterator[None]:
    """Hold a shared lock on ``directory`` while our temp files exist in it, so that
    :func:`remove_stale_temps` (run by a later process) never takes a live one."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield  # the mkstemp that follows reports the real problem
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock: no sweeping
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temp files (``.<name>.*.partial``; any name when None) that writers
    killed outright (``kill -9``, a power cut) left in ``directory``.

    Only when no writer is at work there (:func:`writing_in`): then every such file is
    a leftover. Returns what was removed (nothing when a writer holds the directory).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    removed: list[Path] = []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return []
        pattern = f".{glob.escape(name)}.*.partial" if name is not None else ".*.partial"
        for p in Path(directory).glob(pattern):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    finally:
        os.close(fd)
    return removed


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with the given permission bits."""
    with atomic_output(path, mode) as f:
        f.write(data)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_close(fd: int) -> None:
    """fsync then close ``fd`` (run in a background thread by writers)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_space(path: Path) -> int:
    """Bytes free for us on the filesystem that holds ``path`` (or its nearest parent)."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def require_free(directory: Path, need: int, what: str, hint: str) -> None:
    """Refuse, before anything is written, when ``directory``'s file system has less
    than ``need`` bytes free for us.

    Raises:
        InsufficientSpaceError: the path, what needs the space, how much, how much is free.
    """
    free = free_space(directory)
    if need > free:
        raise InsufficientSpaceError(
            f"{directory}: not enough free space: {what} needs {human(need)} ({need} bytes), "
            f"{human(free)} ({free} bytes) free",
            hint=hint,
        )


COPY_BLOCK = 8 * 1024 * 1024


def copy_range(src_fd: int, offset: int, dst_fd: int, count: int) -> None:
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


def wait_writable(fd: int) -> None:
    """Block until ``fd`` takes more bytes (or has an error the next write reports): for
    a destination its owner made non-blocking (some parents hand out such a stdout)."""
    p = select.poll()
    p.register(fd, select.POLLOUT)
    p.poll()


def write_all(fd: int, data: bytes | memoryview, sent: Callable[[int], None] | None = None) -> None:
    """Write all of ``data`` to ``fd``, blocking or not; ``sent`` hears of every byte."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            wait_writable(fd)
            continue
        view = view[n:]
        if sent:
            sent(n)


def send_range(
    src_fd: int, offset: int, dst_fd: int, count: int, sent: Callable[[int], None] | None = None
) -> None:
    """Send ``count`` bytes of ``src_fd`` from ``offset`` to ``dst_fd`` (a pipe, a socket
    or a file): ``sendfile`` moves them in the kernel; where it cannot (an ``O_APPEND``
    file, an old kernel) a bounded read/write loop does. ``sent`` hears of every byte
    that left, also when a later write fails.

    Raises:
        EOFError: the source ended early (it shrank).
        OSError: a read or write failed (``EPIPE``: the reader went away).
    """
    use_sendfile = True
    while count > 0:
        if use_sendfile:
            try:
                n = os.sendfile(dst_fd, src_fd, offset, min(count, 1 << 30))
            except BlockingIOError:
                wait_writable(dst_fd)
                continue
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_sendfile = False
                continue
            if n and sent:
                sent(n)
        else:
            data = os.pread(src_fd, min(count, COPY_BLOCK), offset)
            n = len(data)
            write_all(dst_fd, data, sent)
        if n == 0:
            raise EOFError(f"source ended {count} bytes early")
        offset += n
        count -= n
