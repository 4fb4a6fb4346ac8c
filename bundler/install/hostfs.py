"""Host directories airgap writes to, checked before anything is written there.

Two rules, one for each kind of directory:

* **The install prefix** is airgap's own, so it is held to OpenSSH's StrictModes rule:
  every directory from ``/`` down to ``--prefix`` must be owned by root or by the user
  running airgap and must not be writable by group or others, except an *ancestor* with
  the sticky bit (``/tmp``), where others can add entries but not rename or remove ours.
  A symbolic link on the way is followed only when root or that user owns it
  (``/var/run -> /run``), and its target is checked by the same rule. Then nobody else
  can change anything under the prefix, and what airgap finds there (:func:`check_entry`)
  must be what airgap itself creates: a directory, a regular file, owned by root or us.
* **Elasticsearch's and Kibana's directories** (``--elser-dir``, ``--product-docs-dir``)
  belong to those services, whose accounts may write there, so the rule cannot be about
  who owns them. The directory is opened once, each component without following a link
  that neither root nor we own, and every file is created relative to that descriptor with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a fresh random name, given its mode through the
  descriptor and renamed into place relative to the directory (:class:`DirHandle`):
  nothing planted there can redirect a write or a ``chmod`` to another file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from bundler.errors import HostStateError, UsageError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40  # the kernel's own limit on links followed while resolving one path
PARTIAL_SUFFIX = ".airgap-partial"

Kind = Literal["dir", "file", "link"]


def trusted_owners() -> frozenset[int]:
    """Who may own what airgap relies on: root and the user running it."""
    return frozenset({0, os.geteuid()})


def _strict_hint(name: str) -> str:
    return (
        "Every directory on the way to --prefix must be owned by root or by the user running "
        "airgap and not writable by group or others (as OpenSSH's StrictModes asks of ~/.ssh): "
        f"fix {name} (`chown`, `chmod go-w`), or choose another --prefix."
    )


def _check_strict(fd: int, name: str, last: bool) -> None:
    """The StrictModes rule for one directory on the way to (or being) the prefix."""
    st = os.fstat(fd)
    if st.st_uid not in trusted_owners():
        raise UsageError(
            f"{name}: owned by uid {st.st_uid}, not by root or by the user running airgap, "
            "who could change the install prefix under it",
            hint=_strict_hint(name),
        )
    sticky = bool(st.st_mode & stat.S_ISVTX) and not last
    if st.st_mode & 0o022 and not sticky:
        raise UsageError(
            f"{name}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
            "who could replace what airgap keeps under it",
            hint=_strict_hint(name),
        )


def open_dir(path: Path, *, create: bool, strict: bool, what: str) -> int | None:
    """Open directory ``path`` without following a link that neither root nor we own.

    Each component is opened relative to its parent's descriptor with ``O_NOFOLLOW``; a
    symbolic link is followed by hand, only when root or we own it. Missing components are
    created (``create``, mode 0755) relative to their parent, never through a link.

    Args:
        strict: also hold every directory reached to the StrictModes rule (the prefix).
        what: the option that named ``path``, for messages.

    Returns:
        A descriptor of the directory (the caller closes it), or None when it does not
        exist and ``create`` is False.

    Raises:
        UsageError: a component is not a directory, is a link owned by another user, or
            (``strict``) is owned or writable by another user.
    """
    # Not normalised: ``..`` after a link means what the kernel makes of it, here too.
    todo = list(Path(path).absolute().parts[1:])
    here = "/"
    fd = os.open("/", DIR_FLAGS)
    links = created = 0
    try:
        if strict:
            _check_strict(fd, here, last=not todo)
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            name = os.path.join(here, part)
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                created += 1
                if created > MAX_LINKS:  # someone removes each one as it is made
                    raise UsageError(f"{name}: cannot be created ({what} {path})") from None
                with contextlib.suppress(FileExistsError):  # raced: checked as found below
                    os.mkdir(part, 0o755, dir_fd=fd)
                todo.insert(0, part)
                continue
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise UsageError(f"{name}: not a directory ({what} {path})") from e
                if st.st_uid not in trusted_owners():
                    raise UsageError(
                        f"{name}: a symbolic link owned by uid {st.st_uid}, not by root or by "
                        f"the user running airgap, on the way to {what} {path}",
                        hint="That user could point it anywhere. Give the directory's real "
                        "path, after checking who controls it, or remove the link.",
                    ) from e
                links += 1
                if links > MAX_LINKS:
                    raise UsageError(f"{what} {path}: too many levels of symbolic links") from e
                target = os.readlink(part, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd, here = os.open("/", DIR_FLAGS), "/"
                todo[:0] = Path(target).parts[1:] if target.startswith("/") else Path(target).parts
                continue
            os.close(fd)
            fd = nfd
            here = (os.path.dirname(here) or "/") if part == ".." else name
            if strict:
                _check_strict(fd, here, last=not todo)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def check_entry(
    dir_fd: int, name: str, where: Path, kind: Kind, *, private: bool = False
) -> os.stat_result | None:
    """Is ``where`` (``name`` in ``dir_fd``) what airgap creates there, or absent?

    Raises:
        HostStateError: it is another kind of file (a symbolic link where a directory or
            file belongs), owned by another user, or (``private``: a directory or file
            airgap keeps its state in) writable by group or others.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    expected = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "link": stat.S_ISLNK}[kind]
    if not expected(st.st_mode):
        found = describe(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(OSError):
                found += f" to {os.readlink(name, dir_fd=dir_fd)}"
        raise HostStateError(
            f"{where}: a {found} where airgap keeps a "
            + {"dir": "directory", "file": "regular file", "link": "symbolic link"}[kind]
            + "; airgap never creates one there, so the install prefix was tampered with"
        )
    if kind != "link" and st.st_uid not in trusted_owners():
        raise HostStateError(
            f"{where}: owned by uid {st.st_uid}, not by root or by the user running airgap"
        )
    if private and kind != "link" and st.st_mode & 0o022:
        raise HostStateError(
            f"{where}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "airgap never makes it so",
            hint=f"Find out who changed it and why; then `chmod go-w {where}` and run the "
            "command again.",
        )
    return st


def check_tree(dir_fd: int, where: Path, depth: int = 8) -> None:
    """Everything under ``dir_fd`` is a directory or a regular file root or we own.

    Raises:
        HostStateError: a symbolic link, a device, a FIFO or a socket, or another owner.
    """
    with os.scandir(dir_fd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        kind: Kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        check_entry(dir_fd, name, where / name, kind)
        if kind == "dir":
            if depth <= 0:
                raise HostStateError(f"{where / name}: nested deeper than airgap ever writes")
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                check_tree(sub, where / name, depth - 1)
            finally:
                os.close(sub)


def describe(mode: int) -> str:
    """A file type in words."""
    for test, words in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISREG, "regular file"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return words
    return "special file"


class DirHandle:
    """A directory opened once; files are created, renamed and removed relative to it."""

    def __init__(self, path: Path, *, create: bool, what: str) -> None:
        fd = open_dir(path, create=create, strict=False, what=what)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(path))
        self.path = Path(path)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_temp(self, name: str) -> tuple[int, str]:
        """A new, empty, 0600 file beside ``name`` that nothing else names: (fd, its name)."""
        tmp = f".{name}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        return os.open(tmp, NEW_FILE_FLAGS, 0o600, dir_fd=self.fd), tmp

    def replace(self, tmp: str, name: str) -> None:
        """Rename ``tmp`` over ``name`` (a link at ``name`` is replaced, never followed)."""
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    @contextlib.contextmanager
    def atomic_output(self, name: str, mode: int = 0o644) -> Iterator[BinaryIO]:
        """Like :func:`bundler.fsutil.atomic_output`, relative to this directory."""
        fd, tmp = self.new_temp(name)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                yield f
                f.flush()
                os.fsync(f.fileno())
            self.replace(tmp, name)
        except BaseException:
            self.unlink(tmp)
            raise

    def remove_file(self, name: str) -> bool:
        """Remove ``name`` if it is a regular file (a link there is left alone)."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        self.unlink(name)
        return True
