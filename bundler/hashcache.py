"""Remembered digests of local source files, so a rebuild is a plain copy.

Keyed like git's index and rsync's quick check, but stricter: path, byte range,
chunk size, device, inode, size, mtime and ctime (ns). Any write to a file changes
its ctime, which a user cannot set back. A stale entry could only make a bundle
whose bytes disagree with its signed index, which every verifier refuses; it can
never make a wrong bundle verify. ``airgap build --no-hash-cache`` rehashes all.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from bundler.hashing import Digests, FileRange, ProgressFn, hash_sources

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    path TEXT, offset INTEGER, size INTEGER, chunk_size INTEGER,
    dev INTEGER, ino INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    sha256 TEXT NOT NULL, chunks TEXT NOT NULL,
    PRIMARY KEY (path, offset, size, chunk_size)
)
"""


class HashCache:
    """A small SQLite table in the cache directory (mode 0700 dir, 0600 file)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / "hashes.sqlite3"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            with self._lock, self._db:
                self._db.execute(SCHEMA)
        except sqlite3.Error as e:  # e.g. a full disk: its journal cannot be created
            self._db.close()
            raise OSError(errno.EIO, f"cannot use the digest cache ({e})", str(self.path)) from e

    @staticmethod
    def _stat(src: FileRange) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(src.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def get(self, src: FileRange, chunk_size: int) -> Digests | None:
        stat = self._stat(src)
        if stat is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT dev, ino, mtime_ns, ctime_ns, sha256, chunks FROM digests "
                "WHERE path=? AND offset=? AND size=? AND chunk_size=?",
                (str(src.path), src.offset, src.size, chunk_size),
            ).fetchone()
        if row is None or tuple(row[:4]) != stat:
            return None
        chunks = tuple(row[5].split(",")) if row[5] else ()
        return Digests(row[4], chunks)

    def put(
        self,
        src: FileRange,
        chunk_size: int,
        digests: Digests,
        stat_before: tuple[int, int, int, int] | None,
    ) -> None:
        """Remember ``digests`` if the file did not change while it was hashed."""
        if stat_before is None or self._stat(src) != stat_before:
            return
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO digests VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        str(src.path),
                        src.offset,
                        src.size,
                        chunk_size,
                        *stat_before,
                        digests.sha256,
                        ",".join(digests.chunks),
                    ),
                )
        except sqlite3.Error as e:
            # Only remembered work is lost (the file is hashed again when next needed);
            # a full disk shows itself at the next real write, with its path.
            logger.warning("%s: digests not remembered (%s)", self.path, e)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def hash_with_cache(
    sources: Sequence[FileRange | bytes],
    chunk_size: int,
    cache: HashCache | None,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> list[Digests]:
    """:func:`bundler.hashing.hash_sources`, reusing and recording remembered digests.

    Raises:
        OSError, EOFError: a source cannot be read in full.
    """
    found: list[Digests | None] = [None] * len(sources)
    if cache is not None:
        for i, src in enumerate(sources):
            if isinstance(src, FileRange) and (d := cache.get(src, chunk_size)) is not None:
                found[i] = d
                if progress:
                    progress(src.size)
    todo = [i for i, d in enumerate(found) if d is None]
    stats = {i: HashCache._stat(src) for i in todo if isinstance(src := sources[i], FileRange)}
    computed = hash_sources([sources[i] for i in todo], chunk_size, progress=progress, stop=stop)
    for i, d in zip(todo, computed, strict=True):
        found[i] = d
        src = sources[i]
        if cache is not None and isinstance(src, FileRange):
            cache.put(src, chunk_size, d, stats[i])
    return [d for d in found if d is not None]
