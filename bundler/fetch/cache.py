"""The download cache: content addressed, verified before use, resumable, shared safely.

Layout under the cache directory (default ``~/.cache/airgap``)::

    blobs/sha256/<hex>        complete files, named by their verified sha256
    alias/<kind>/<key>        small files mapping another identity to a sha256
                              (a git blob id, a URL without a published digest)
    partial/<key>.part        downloads in progress (resumed with HTTP Range)
    partial/<key>.lock        one downloader per file at a time (flock)
    hashes.sqlite3            chunk digests of blobs (see bundler.hashcache)

A file enters ``blobs/`` only by an atomic rename after its bytes matched the
expected digest; a killed download leaves only a ``.part`` that the next run
resumes (and verifies as a whole) or restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from bundler.fsutil import atomic_write_bytes, remove_stale_temps
from bundler.hashcache import HashCache
from bundler.hashing import Digests, FileRange

_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("blobs/sha256", "partial", "alias"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        for kind in (self.root / "alias").iterdir():  # temp files of killed runs
            if kind.is_dir() and not kind.is_symlink():
                remove_stale_temps(kind)
        self.hashes = HashCache(self.root)

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has(self, sha256: str, size: int | None = None) -> bool:
        try:
            actual = self.blob(sha256).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or actual == size

    def partial(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            key = hashlib.sha256(key.encode()).hexdigest()
        return self.root / "partial" / f"{key}.part"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the download lock for ``key`` (blocks while another build downloads it)."""
        lock = self.partial(key).with_suffix(".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def commit(self, partial: Path, sha256: str, digests: Digests, chunk_size: int) -> Path:
        """Move a verified download into ``blobs/`` and remember its chunk digests."""
        target = self.blob(sha256)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)  # a blob's name promises its content, even after a power cut
        finally:
            os.close(fd)
        os.chmod(partial, 0o444)
        os.replace(partial, target)
        size = target.stat().st_size
        st = os.stat(target)
        self.hashes.put(
            FileRange(target.resolve(), 0, size),
            chunk_size,
            digests,
            (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns),
        )
        return target

    def alias(self, kind: str, key: str) -> str | None:
        try:
            value = (self.root / "alias" / kind / _safe(key)).read_text().strip()
        except FileNotFoundError:
            return None
        return value if re.fullmatch(r"[0-9a-f]{64}", value) and self.has(value) else None

    def set_alias(self, kind: str, key: str, sha256: str) -> None:
        d = self.root / "alias" / kind
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / _safe(key), sha256.encode())

    def close(self) -> None:
        self.hashes.close()


def _safe(key: str) -> str:
    return key if _KEY_RE.match(key) else hashlib.sha256(key.encode()).hexdigest()
