"""The payload's digests: every file hashed on all cores, checked against what it claims.

:class:`PayloadHashing` starts that work before the rest of the bundle is planned, so
what a build does in between (reading image layers for the SBOM) runs beside it
instead of before it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bundler.bundle.index import FileEntry
from bundler.bundle.plan import LateBytes, Payload
from bundler.errors import SourceError
from bundler.hashcache import HashCache, hash_with_cache
from bundler.hashing import Digests, FileRange

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
    payloads: Sequence[Payload],
    chunk_size: int,
    progress: ProgressFn | None = None,
    cache: HashCache | None = None,
    stop: threading.Event | None = None,
) -> list[FileEntry]:
    """Hash what is not hashed yet (all cores) and check each against its expected digest.

    Raises:
        SourceError: a source cannot be read or does not match its expected sha256.
        Cancelled: ``stop`` was set (the build failed elsewhere).
    """
    digests: list[Digests | None] = [p.digests for p in payloads]
    todo = [i for i, d in enumerate(digests) if d is None]
    try:
        sources = [s for i in todo if not isinstance(s := payloads[i].source, LateBytes)]
        computed = hash_with_cache(sources, chunk_size, cache, progress, stop)
    except (OSError, EOFError) as e:
        raise SourceError(
            f"cannot read source: {e}", hint="Check the file exists and is readable."
        ) from e
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


def stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class PayloadHashing:
    """Hashing of the payload files a plan has so far, running in the background.

    The sources' stamps (size, mtime) are taken before the first byte is read, so the
    writer can tell a file changed while it was hashed. Files added to the plan later
    must be :class:`LateBytes` (the SBOM): they are hashed once rendered.
    """

    def __init__(
        self,
        payloads: Sequence[Payload],
        chunk_size: int,
        progress: ProgressFn | None = None,
        cache: HashCache | None = None,
    ) -> None:
        self.payloads = [p for p in _dedupe(payloads) if not isinstance(p.source, LateBytes)]
        self.chunk_size = chunk_size
        self.stamps = {
            p.source.path: stamp(p.source.path)
            for p in self.payloads
            if isinstance(p.source, FileRange)
        }
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-all")
        self.future = self._pool.submit(
            compute_entries, self.payloads, chunk_size, progress, cache, self._stop
        )

    def covers(self, payloads: Sequence[Payload]) -> bool:
        """Whether these (deduplicated, not late) payloads are exactly the ones hashed."""
        return [(p.path, p.source) for p in payloads] == [(p.path, p.source) for p in self.payloads]

    def result(self) -> list[FileEntry]:
        return self.future.result()

    def __enter__(self) -> PayloadHashing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop hashing if it is still running (the build failed), and wait for it."""
        if not self.future.done():
            self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
