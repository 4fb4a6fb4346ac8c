"""A sink that writes a bundle's payload into a fresh staging directory.

Nothing is written outside ``staging``: member paths were checked against the
signed index (relative, no ``..``, no links), the staging directory is created
new by this code (so it holds no symlink an attacker could have planted), and
files are opened with ``O_EXCL | O_NOFOLLOW``. The staging directory is removed
on abort; the caller moves it into place after ``commit``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from bundler.bundle.index import INDEX_MEMBER, SIGNATURE_DIR, SUMS_MEMBER, FileEntry, Index
from bundler.errors import UsageError
from bundler.fsutil import fsync_close, naming
from bundler.oci.media import OCI_INDEX

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


class StagingExtractor:
    """Extract into ``staging`` (must not exist yet); remove it on abort."""

    def __init__(self, staging: Path, *, fsync: bool = True, oci_layout: bool = True) -> None:
        self.staging = Path(staging)
        self.fsync = fsync
        self.oci_layout = oci_layout
        self._fd = -1
        self._path = self.staging  # the member being written (named in a write error)
        self._created = False
        self._flusher: ThreadPoolExecutor | None = None
        self._flushes: list[Future[None]] = []

    def _safe_open(self, rel: str) -> int:
        target = self.staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(target, flags, 0o644)

    def _write_small(self, rel: str, data: bytes) -> None:
        fd = self._safe_open(rel)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def begin(
        self, index: Index, index_bytes: bytes, signatures: list[tuple[str, bytes]], sums: bytes
    ) -> None:
        try:
            os.mkdir(self.staging, 0o755)
        except FileExistsError as e:
            raise UsageError(
                f"{self.staging}: staging directory exists already",
                hint="Remove it or choose another directory.",
            ) from e
        self._created = True
        self._write_small(INDEX_MEMBER, index_bytes)
        for keyid, sig in signatures:
            self._write_small(f"{SIGNATURE_DIR}{keyid}.sig", sig)
        self._write_small(SUMS_MEMBER, sums)
        self._index = index

    def verified_only(self, entry: FileEntry) -> bool:
        return False  # staging files are provisional until commit

    def open_member(self, entry: FileEntry) -> None:
        self._fd = self._safe_open(entry.path)
        self._path = self.staging / entry.path

    def write(self, data: memoryview) -> None:
        with naming(self._path):  # "No space left on device" must say where
            while data:
                data = data[os.write(self._fd, data) :]

    def close_member(self, entry: FileEntry) -> None:
        fd, self._fd = self._fd, -1
        if not self.fsync:
            os.close(fd)
            return
        # Flush in the background: the stream goes on while the disk catches up.
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._flushes.append(self._flusher.submit(fsync_close, fd))

    def commit(self) -> None:
        """Wait until every file is on disk; then finish the layout."""
        self._drain()
        if self._index.images and self.oci_layout:
            write_oci_layout(self.staging / "images", self._index)
        if self.fsync:
            fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _drain(self) -> None:
        if self._flusher is not None:
            for f in self._flushes:
                with naming(self.staging):
                    f.result()
            self._flushes.clear()
            self._flusher.shutdown()
            self._flusher = None

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            self._drain()
        if self._created:
            shutil.rmtree(self.staging, ignore_errors=True)


def write_oci_layout(images_dir: Path, index: Index) -> None:
    """Make ``images_dir`` (holding ``blobs/sha256``) a valid OCI image layout.

    Each image is listed under its role as ``org.opencontainers.image.ref.name``,
    so ``skopeo copy oci:<dir>:vllm …`` addresses it.
    """
    manifests = []
    for img in index.images:
        blob = images_dir / "blobs" / "sha256" / img.manifest_digest.removeprefix("sha256:")
        manifests.append(
            {
                "mediaType": img.manifest_media_type,
                "digest": img.manifest_digest,
                "size": blob.stat().st_size,
                "annotations": {"org.opencontainers.image.ref.name": img.role},
            }
        )
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }
    images_dir.mkdir(parents=True, exist_ok=True)
    (images_dir / "oci-layout").write_bytes(OCI_LAYOUT)
    (images_dir / "index.json").write_text(json.dumps(doc, indent=2) + "\n")
