"""Where verified payload goes during an install, and how a killed run is undone.

:class:`InstallSink` is the reader's sink: files into a staging release, image layers
into the engine (or registry) as soon as their chunk verified, layers the target has
already verified and dropped. Before it creates anything it records a
:class:`~bundler.install.records.PendingRun` in the receipt, so :func:`recover` in the
next run can remove what a killed one left.
"""

from __future__ import annotations

import enum
import shutil
import threading
from pathlib import Path

from bundler import faults
from bundler.bundle.extract import StagingExtractor
from bundler.bundle.index import BLOB_PREFIX, FileEntry, ImageEntry, Index
from bundler.errors import AirgapError
from bundler.install.feeds import ArchiveFeed, RegistryFeed
from bundler.install.k8s_target import KubernetesTarget
from bundler.install.layout import Layout
from bundler.install.records import PendingRun
from bundler.install.reuse import Reuse
from bundler.install.reusecopy import feed_blobs, put_files
from bundler.install.state import ReceiptFile
from bundler.install.targets import EngineTarget, ImageTarget, target_from_spec
from bundler.k8s.artifact import ModelFeed
from bundler.oci.engine import recover_containers


def release_key(index: Index) -> str:
    return f"{index.name}-{index.version}"


class Route(enum.Enum):
    """Where the member being written goes."""

    FILE = "file"  # into the staging release
    ENGINE = "engine"  # into the image feed (engine load or registry push)
    DROP = "drop"  # a layer the target has already: verified, not kept
    MODEL = "model"  # a model file pushed to a registry (Kubernetes), never kept here


class InstallSink:
    """Routes verified payload: files into a staging release, layers into the engine."""

    def __init__(self, layout: Layout, store: ReceiptFile, target: ImageTarget) -> None:
        self.layout = layout
        self.store = store
        self.target = target
        self.staging: Path | None = None
        self.extractor: StagingExtractor | None = None
        self.feed: ArchiveFeed | RegistryFeed | None = None
        self.model_feed: ModelFeed | None = None
        self.to_load: list[ImageEntry] = []
        self.images: list[ImageEntry] = []
        # open/write/close come from two threads (files from the reader, layers from
        # the delivery thread), each with its own current member.
        self._local = threading.local()
        self._manifests: set[str] = set()
        self.reuse: Reuse | None = None  # a delta's base, as the preflight found it
        # True once undoing this run's images failed (an engine gone): the receipt's
        # pending record must then stay, so that the next run finishes the job.
        self.leftovers = False

    def begin(
        self, index: Index, index_bytes: bytes, signatures: list[tuple[str, bytes]], sums: bytes
    ) -> None:
        self.target.bind(index)
        self.images = list(index.images)
        self.to_load = [img for img in index.images if not self.target.present(img)]
        self._manifests = {img.manifest_digest for img in index.images}
        self.staging = self.layout.staging(release_key(index))
        self.layout.releases.mkdir(parents=True, exist_ok=True)
        # Written before anything is created, so a killed run is cleaned up by the next.
        pending = PendingRun(
            staging=str(self.staging),
            target=self.target.spec(),
            # every image: loaded ones may be removed, present ones untagged
            images=[self.target.pending_record(img, img in self.to_load) for img in self.images],
        )
        self.store.save(self.store.receipt.with_pending(pending))
        self.extractor = StagingExtractor(self.staging, oci_layout=False)
        self.extractor.begin(index, index_bytes, signatures, sums)
        if self.reuse is not None:  # a delta: what it reuses, checked, before its payload
            put_files(self.reuse, self.staging, index.chunk_size)
        if self.to_load:
            self.feed = self.target.feed(self.to_load)
            if self.reuse is not None:
                feed_blobs(self.reuse, self.feed, index.chunk_size)
        if isinstance(self.target, KubernetesTarget):
            self.model_feed = self.target.open_model_feed()

    def _digest(self, entry: FileEntry) -> str | None:
        if entry.path.startswith(BLOB_PREFIX):
            return "sha256:" + entry.path[len(BLOB_PREFIX) :]
        return None

    def verified_only(self, entry: FileEntry) -> bool:
        if self.model_feed is not None and self.model_feed.wants(entry):
            return True
        digest = self._digest(entry)
        return digest is not None and self.feed is not None and self.feed.wants(digest)

    def open_member(self, entry: FileEntry) -> None:
        assert self.extractor is not None
        digest = self._digest(entry)
        if self.model_feed is not None and self.model_feed.wants(entry):
            self._local.route = Route.MODEL
            self.model_feed.open_file(entry)
        elif digest is None or digest in self._manifests:
            self._local.route = Route.FILE
            self.extractor.open_member(entry)
        elif self.feed is not None and self.feed.wants(digest):
            self._local.route = Route.ENGINE
            self.feed.open_blob(digest, entry.size)
        else:
            self._local.route = Route.DROP

    def write(self, data: memoryview) -> None:
        route: Route = self._local.route
        if route is Route.FILE:
            assert self.extractor is not None
            self.extractor.write(data)
        elif route is Route.ENGINE:
            assert self.feed is not None
            self.feed.write(data)
        elif route is Route.MODEL:
            assert self.model_feed is not None
            self.model_feed.write(data)

    def close_member(self, entry: FileEntry) -> None:
        route: Route = self._local.route
        if route is Route.FILE:
            assert self.extractor is not None
            self.extractor.close_member(entry)
            faults.point("install.file-written")
        elif route is Route.ENGINE:
            assert self.feed is not None
            self.feed.close_blob(entry.size)
            faults.point("install.layer-fed")
        elif route is Route.MODEL:
            assert self.model_feed is not None
            self.model_feed.close_file(entry)

    def commit(self) -> None:
        assert self.extractor is not None and self.staging is not None
        manifests = {
            img.manifest_digest: (
                self.staging / BLOB_PREFIX / img.manifest_digest.removeprefix("sha256:")
            ).read_bytes()
            for img in self.images
        }
        self.target.finish(self.feed, self.images, manifests)
        self.extractor.commit()

    def abort(self) -> None:
        if self.feed is not None:
            self.feed.abort()
        if self.model_feed is not None:
            self.model_feed.abort()
        if self.extractor is not None:
            self.extractor.abort()
        self.remove_loaded()

    def remove_loaded(self) -> None:
        """Undo this run's tags, and remove the images it loaded that no release uses."""
        try:
            self.target.undo_tags()
        except AirgapError:
            self.leftovers = True
        in_use = self.store.receipt.images_in_use()
        records = [self.target.record(img, True) for img in self.to_load]
        if isinstance(self.target, KubernetesTarget) and self.target.model_digest:
            records.append(self.target.model_record())
        for record in records:
            if record.id not in in_use:
                try:
                    self.target.remove(record)
                except AirgapError:
                    self.leftovers = True


def recover(layout: Layout, store: ReceiptFile, target: ImageTarget | None) -> list[str]:
    """Undo what a killed run left: the containers of a half-done serving start (what
    served before serves again), its staging dir and the images it may have loaded."""
    done = []
    if isinstance(target, EngineTarget):
        owner = str(layout.prefix.resolve())
        done += recover_containers(target.runtime, owner, store.receipt.container_ids())
    pending = store.receipt.pending
    if pending:
        in_use = store.receipt.images_in_use()
        records = pending.images
        owned: ImageTarget | None = None
        if records and target is not None and target.spec() != pending.target:
            # The killed run loaded into another engine or registry: clean that one.
            try:
                owned = target = target_from_spec(pending.target)
            except (AirgapError, OSError) as e:
                done.append(
                    f"could not reach {pending.target.to_json()} to remove an interrupted "
                    f"run's images: {e}"
                )
                target = None
        try:
            for record in records:
                if target is None:
                    break
                try:
                    # its new tags always go; the image only when no release uses it
                    mine = record.created_by_us and record.id not in in_use
                    if target.remove(record.model_copy(update={"created_by_us": mine})):
                        done.append(f"removed image {record.id} of an interrupted run")
                except (AirgapError, OSError) as e:
                    done.append(f"could not remove image {record.id}: {e}")
        finally:
            if owned is not None:
                owned.close()
        store.save(store.receipt.with_pending(None))
    for stale in layout.stale_staging():
        shutil.rmtree(stale, ignore_errors=True)
        done.append(f"removed {stale.name} of an interrupted run")
    for temp in layout.stale_temps():
        temp.unlink(missing_ok=True)
        done.append(f"removed {temp.relative_to(layout.prefix)} of an interrupted run")
    return done
