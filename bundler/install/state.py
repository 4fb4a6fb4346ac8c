"""Install state that outlives one run, on disk: I/O only (the models are in
:mod:`bundler.install.records`).

* the receipt (:class:`ReceiptFile`), written atomically, 0600;
* rollback protection (:class:`VersionRegistry`): the highest version installed per
  bundle name is kept in ``versions.json`` under the state directory; an install of a
  lower version is refused unless the operator asks for a downgrade on purpose;
* :class:`InstallLock`: one install/uninstall/rollback at a time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from pathlib import Path

from pydantic import ValidationError

from bundler import __version__, safejson
from bundler.errors import HostStateError, InstallError, RollbackError
from bundler.fsutil import atomic_write_bytes
from bundler.install import hostfs
from bundler.install.layout import LOCK_FILE, RECEIPT_FILE, VERSIONS_FILE
from bundler.install.records import FORMAT_PREFIX, PREVIOUS_FORMAT, RECEIPT_FORMAT, Receipt


class VersionRegistry:
    """Highest installed version of each bundle name."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / VERSIONS_FILE

    def load(self) -> dict[str, int]:
        try:
            data = safejson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise InstallError(
                f"{self.path}: unreadable install state: {e}",
                hint="Restore it from backup; without it rollback protection cannot work.",
            ) from e
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in data.items()
        ):
            raise InstallError(f"{self.path}: malformed install state")
        return data

    def installed(self, name: str) -> int | None:
        return self.load().get(name)

    def check(self, name: str, version: int, *, allow_downgrade: bool = False) -> None:
        """Refuse a version lower than the highest one installed for ``name``.

        Raises:
            RollbackError: ``version`` is lower and ``allow_downgrade`` is False.
        """
        current = self.installed(name)
        if current is not None and version < current and not allow_downgrade:
            raise RollbackError(
                f"bundle {name} v{version} is older than the installed v{current}",
            )

    def record(self, name: str, version: int) -> None:
        """Remember ``version`` if it is the highest seen for ``name``."""
        data = self.load()
        if data.get(name, 0) >= version:
            return
        data[name] = version
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, (json.dumps(data, sort_keys=True, indent=2) + "\n").encode())


_CURRENT = int(RECEIPT_FORMAT.removeprefix(FORMAT_PREFIX))


class ReceiptFile:
    """The receipt on disk: :meth:`load` reads (and migrates) it, :meth:`save` writes it
    atomically, 0600. ``receipt`` is the value last loaded or saved."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / RECEIPT_FILE
        self.receipt = Receipt()

    @classmethod
    def load(cls, state_dir: Path) -> ReceiptFile:
        """Read the receipt under ``state_dir`` (an empty one when there is none).

        Raises:
            InstallError: it is unreadable, not a receipt, malformed, or written by a
                newer airgap.
        """
        f = cls(state_dir)
        try:
            data = safejson.loads(f.path.read_bytes())
        except FileNotFoundError:
            return f
        except (OSError, ValueError) as e:
            raise InstallError(
                f"{f.path}: unreadable receipt: {e}",
                hint="Restore it from backup; without it airgap cannot tell what it created.",
            ) from e
        f.receipt = parse_receipt(data, f.path)
        return f

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def save(self, receipt: Receipt | None = None) -> None:
        """Write ``receipt`` (default: the one held) and hold it."""
        if receipt is not None:
            self.receipt = receipt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.receipt.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(self.path, body.encode(), mode=0o600)


def parse_receipt(data: object, path: Path) -> Receipt:
    """The receipt in ``data``; the previous format is migrated (every value kept).

    Raises:
        InstallError: not a receipt, a newer format, or a malformed one.
    """
    fmt = data.get("format") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(fmt, str):
        raise InstallError(f"{path}: not an airgap receipt")
    if fmt == PREVIOUS_FORMAT:
        data = {**data, "format": RECEIPT_FORMAT}  # same shape: only the version changes
    elif fmt != RECEIPT_FORMAT:
        number = fmt.removeprefix(FORMAT_PREFIX)
        if fmt.startswith(FORMAT_PREFIX) and number.isdigit() and int(number) > _CURRENT:
            needs = data.get("needs")
            raise InstallError(
                f"{path}: written by a newer airgap (receipt format {number}): needs airgap "
                + (f">= {needs}" if isinstance(needs, str) else f"that reads {fmt}")
                + f"; this is airgap {__version__}, which reads {PREVIOUS_FORMAT} and "
                f"{RECEIPT_FORMAT}",
                hint="Install the newer airgap again to manage this prefix; an older one "
                "cannot tell what the newer one created.",
            )
        raise InstallError(f"{path}: not an airgap receipt")
    try:
        return Receipt.model_validate(data)
    except ValidationError as e:
        raise InstallError(
            f"{path}: malformed receipt: {e.error_count()} problem(s), first at "
            + ".".join(map(str, e.errors()[0]["loc"]))
            + f": {e.errors()[0]['msg']}",
            hint="Restore it from backup; without it airgap cannot tell what it created.",
        ) from e


def _open_lock(path: Path) -> int:
    """Open (or create, 0600) the lock file, relative to the checked prefix, never through a
    link, and never truncating before the lock is held.

    Raises:
        UsageError: the prefix fails the StrictModes rule (see :mod:`.hostfs`).
        HostStateError: the lock file is a link, not a regular file, not ours, or has
            another name too (a hard link): writing our pid there would change that file.
    """
    prefix_fd = hostfs.open_dir(path.parent, create=True, strict=True, what="--prefix")
    assert prefix_fd is not None
    try:
        fd = os.open(
            path.name,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=prefix_fd,
        )
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise HostStateError(
            f"{path}: a symbolic link where airgap keeps its lock file; airgap never creates "
            "one there, so the install prefix was tampered with"
        ) from e
    finally:
        os.close(prefix_fd)
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"a {hostfs.describe(st.st_mode)}"
    elif st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, not by the user running airgap"
    elif st.st_nlink != 1:
        problem = f"a file with {st.st_nlink} names (hard links)"
    if problem:
        os.close(fd)
        raise HostStateError(f"{path}: {problem}, where airgap keeps its lock file")
    return fd


class InstallLock:
    """An exclusive lock on a prefix: one install/uninstall/rollback at a time."""

    def __init__(self, prefix: Path) -> None:
        self.path = Path(prefix) / LOCK_FILE
        self._fd = -1

    def __enter__(self) -> InstallLock:
        self._fd = _open_lock(self.path)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = -1
            raise InstallError(
                f"{self.path.parent}: another airgap run holds the lock (pid {holder})",
                hint="Wait for it to finish; if no airgap process runs, the lock frees itself.",
            ) from e
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1
