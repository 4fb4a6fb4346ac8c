"""``airgap install``: verify and unpack a bundle in one pass, load its images, switch release.

Under ``--prefix`` (default ``/opt/airgap``)::

    .airgap.lock                      one run at a time
    state/receipt.json                what this tool created (0600)
    state/versions.json               highest version installed per name (rollback protection)
    releases/<name>-<version>/        models/, elastic/, airgap/ (signed index), image manifests
    releases/.staging-…               a run in progress (removed on failure, or by the next run)
    current -> releases/<name>-<version>

Nothing is switched in until every byte verified and every image's ID equals its
signed config digest. Image layers go from the bundle straight into the engine's
``load`` (no copy on our disk), and only after their chunk matched its signed hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bundler.bundle.extract import StagingExtractor
from bundler.bundle.index import BLOB_PREFIX, FileEntry, ImageEntry, Index
from bundler.bundle.reader import TrustPolicy, VerifyResult, read_bundle
from bundler.bundle.signing import TrustedKey
from bundler.errors import AirgapError, InstallError, RollbackError
from bundler.fmt import human
from bundler.hashing import FileRange, hash_sources
from bundler.install.runtime import ArchiveFeed, Runtime
from bundler.install.state import InstallLock, Receipt, VersionRegistry

logger = logging.getLogger(__name__)
DEFAULT_PREFIX = Path("/opt/airgap")


@dataclass(frozen=True)
class Check:
    """One row of the preflight table. ``ok`` None means a warning or a skipped check."""

    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class InstallOptions:
    bundle: str
    trusted: dict[str, TrustedKey]
    threshold: int = 1
    detached: tuple[tuple[str, bytes], ...] = ()
    prefix: Path = DEFAULT_PREFIX
    runtime: str = "docker"
    runtime_url: str | None = None
    dry_run: bool = False
    allow_downgrade: bool = False
    no_gpu: bool = False
    ports: tuple[int, ...] = ()


@dataclass
class InstallResult:
    status: str  # "installed", "unchanged", "reactivated" or "dry-run"
    name: str
    version: int
    release: Path
    index_sha256: str
    checks: list[Check] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0


class Layout:
    """Paths under an install prefix."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.releases = self.prefix / "releases"
        self.state = self.prefix / "state"
        self.current = self.prefix / "current"

    def release(self, key: str) -> Path:
        return self.releases / key

    def switch_current(self, key: str | None) -> None:
        """Point ``current`` at ``releases/<key>`` atomically (or remove it)."""
        if key is None:
            with contextlib.suppress(FileNotFoundError):
                self.current.unlink()
            return
        tmp = self.prefix / f".current.{os.getpid()}.{secrets.token_hex(4)}"
        os.symlink(os.path.join("releases", key), tmp)
        os.replace(tmp, self.current)


def release_key(index: Index) -> str:
    return f"{index.name}-{index.version}"


class _Stop(Exception):
    """Raised from the preflight hook to end the pass early on purpose."""

    def __init__(self, status: str, key: str) -> None:
        super().__init__(status)
        self.status = status
        self.key = key


class InstallSink:
    """Routes verified payload: files into a staging release, layers into the engine."""

    def __init__(self, layout: Layout, receipt: Receipt, runtime: Runtime) -> None:
        self.layout = layout
        self.receipt = receipt
        self.runtime = runtime
        self.staging: Path | None = None
        self.extractor: StagingExtractor | None = None
        self.feed: ArchiveFeed | None = None
        self.to_load: list[ImageEntry] = []
        self.images: list[ImageEntry] = []
        # open/write/close come from two threads (files from the reader, layers from
        # the delivery thread), each with its own current member.
        self._local = threading.local()
        self._manifests: set[str] = set()

    def begin(
        self, index: Index, index_bytes: bytes, signatures: list[tuple[str, bytes]], sums: bytes
    ) -> None:
        key = release_key(index)
        self.images = list(index.images)
        present = {
            img.config_digest
            for img in index.images
            if self.runtime.image_id(img.config_digest) == img.config_digest
        }
        self.to_load = [img for img in index.images if img.config_digest not in present]
        self._manifests = {img.manifest_digest for img in index.images}
        self.staging = self.layout.releases / f".staging-{key}-{secrets.token_hex(6)}"
        self.layout.releases.mkdir(parents=True, exist_ok=True)
        # Written before anything is created, so a killed run is cleaned up by the next.
        self.receipt.data["pending"] = {
            "staging": str(self.staging),
            "images": sorted({img.config_digest for img in self.to_load}),
        }
        self.receipt.save()
        self.extractor = StagingExtractor(self.staging, oci_layout=False)
        self.extractor.begin(index, index_bytes, signatures, sums)
        if self.to_load:
            self.feed = ArchiveFeed(self.runtime, self.to_load)
            self.feed.start()

    def _digest(self, entry: FileEntry) -> str | None:
        if entry.path.startswith(BLOB_PREFIX):
            return "sha256:" + entry.path[len(BLOB_PREFIX) :]
        return None

    def verified_only(self, entry: FileEntry) -> bool:
        digest = self._digest(entry)
        return digest is not None and self.feed is not None and self.feed.wants(digest)

    def open_member(self, entry: FileEntry) -> None:
        assert self.extractor is not None
        digest = self._digest(entry)
        if digest is None or digest in self._manifests:
            self._local.route = "file"
            self.extractor.open_member(entry)
        elif self.feed is not None and self.feed.wants(digest):
            self._local.route = "engine"
            self.feed.open_blob(digest, entry.size)
        else:
            self._local.route = "drop"  # a layer the engine has already: verified, not kept

    def write(self, data: memoryview) -> None:
        route = self._local.route
        if route == "file":
            assert self.extractor is not None
            self.extractor.write(data)
        elif route == "engine":
            assert self.feed is not None
            self.feed.write(data)

    def close_member(self, entry: FileEntry) -> None:
        route = self._local.route
        if route == "file":
            assert self.extractor is not None
            self.extractor.close_member(entry)
        elif route == "engine":
            assert self.feed is not None
            self.feed.close_blob(entry.size)

    def commit(self) -> None:
        assert self.extractor is not None
        if self.feed is not None:
            messages = self.feed.finish()
            logger.info("image load: %s", "; ".join(messages))
        for img in self.images:
            loaded = self.runtime.image_id(img.config_digest)
            if loaded != img.config_digest:
                raise InstallError(
                    f"image {img.role} ({img.ref}): the engine has {loaded or 'nothing'} where "
                    f"the signed config digest is {img.config_digest}",
                    hint="The engine did not load what the bundle carries; see its log.",
                )
            if img.ref not in self.runtime.image_tags(img.config_digest):
                self.runtime.tag(img.config_digest, img.ref)
        self.extractor.commit()

    def abort(self) -> None:
        if self.feed is not None:
            self.feed.abort()
        if self.extractor is not None:
            self.extractor.abort()
        self.remove_loaded()

    def remove_loaded(self) -> None:
        in_use = self.receipt.images_in_use()
        for img in self.to_load:
            if img.config_digest not in in_use:
                with contextlib.suppress(AirgapError):
                    self.runtime.remove_image(img.config_digest)


def recover(layout: Layout, receipt: Receipt, runtime: Runtime | None) -> list[str]:
    """Undo what a killed run left: its staging dir and the images it may have loaded."""
    done = []
    pending = receipt.data.get("pending")
    if pending:
        if runtime is not None:
            in_use = receipt.images_in_use()
            for image_id in pending.get("images", []):
                if image_id not in in_use and runtime.remove_image(image_id):
                    done.append(f"removed image {image_id} of an interrupted run")
        receipt.data["pending"] = None
        receipt.save()
    if layout.releases.is_dir():
        for stale in layout.releases.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
            done.append(f"removed {stale.name} of an interrupted run")
    return done


def _free_space(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def install(
    opts: InstallOptions,
    *,
    on_preflight: Callable[[list[Check]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    notes: Callable[[str], None] | None = None,
) -> InstallResult:
    """Install a bundle, or change nothing.

    Raises:
        TrustError, ExpiredError, RollbackError, BundleError: the bundle is not acceptable.
        InstallError: a preflight check failed or an install step failed (rolled back).
    """
    layout = Layout(opts.prefix)
    started = time.monotonic()
    with InstallLock(layout.prefix):
        receipt = Receipt.load(layout.state)
        versions = VersionRegistry(layout.state)
        runtime = Runtime(opts.runtime, opts.runtime_url)
        try:
            info = runtime.info()
            for line in recover(layout, receipt, runtime):
                if notes:
                    notes(line)
            sink = InstallSink(layout, receipt, runtime)
            checks: list[Check] = []

            def preflight(vr: VerifyResult) -> None:
                index = vr.index
                key = release_key(index)
                checks.extend(
                    [
                        Check(
                            "signatures",
                            True,
                            f"{len(vr.signers)} trusted (need "
                            f"{opts.threshold}): " + ", ".join(k[:16] for k in vr.signers),
                        ),
                        Check("expiry", True, f"valid until {index.expires}"),
                    ]
                )
                installed = versions.installed(index.name)
                known = receipt.releases.get(key)
                if known and known["index_sha256"] != vr.index_sha256:
                    checks.append(Check("version", False, f"{key} is installed with other content"))
                elif (
                    installed is not None
                    and index.version < installed
                    and not (opts.allow_downgrade)
                ):
                    checks.append(
                        Check(
                            "version",
                            False,
                            f"v{index.version} is older than "
                            f"installed v{installed} (--allow-downgrade)",
                        )
                    )
                else:
                    was = f"installed: v{installed}" if installed is not None else "first install"
                    checks.append(Check("version", True, f"v{index.version} ({was})"))
                checks.append(Check("runtime", True, f"{info.kind} {info.version} at {info.url}"))
                files = sum(f.size for f in index.files if not f.path.startswith(BLOB_PREFIX))
                image_bytes = index.payload_bytes - files
                free = _free_space(layout.prefix)
                checks.append(
                    Check(
                        "disk",
                        free >= files,
                        f"{human(files)} needed under {layout.prefix}, {human(free)} free",
                    )
                )
                engine_free = runtime.free_bytes(info.root_dir)
                if engine_free is not None:
                    checks.append(
                        Check(
                            "image storage",
                            engine_free >= image_bytes,
                            f"{human(image_bytes)} of images, {human(engine_free)} "
                            f"free in {info.root_dir}",
                        )
                    )
                if opts.no_gpu:
                    checks.append(Check("gpu", None, "skipped (--no-gpu)"))
                else:
                    checks.append(
                        Check(
                            "gpu",
                            True if info.gpu else None,
                            info.gpu_detail + ("" if info.gpu else "; use --no-gpu for CPU images"),
                        )
                    )
                for port in opts.ports:
                    free_port = _port_free(port)
                    checks.append(
                        Check(f"port {port}", free_port, "free" if free_port else "in use")
                    )
                if on_preflight:
                    on_preflight(list(checks))
                failed = [c for c in checks if c.ok is False]
                if failed:
                    if failed[0].name == "version" and "older" in failed[0].detail:
                        raise RollbackError(f"bundle {index.name} {failed[0].detail}")
                    raise InstallError(
                        "preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                        hint="Fix what the preflight table marks as failed, then run again.",
                    )
                if opts.dry_run:
                    raise _Stop("dry-run", key)
                if (
                    known
                    and layout.release(key).is_dir()
                    and all(runtime.image_id(i["id"]) == i["id"] for i in known.get("images", []))
                ):
                    raise _Stop("unchanged" if receipt.current == key else "reactivated", key)

            policy = TrustPolicy(opts.trusted, opts.threshold, before_payload=preflight)
            try:
                vr = read_bundle(
                    opts.bundle, policy, sink, detached=list(opts.detached), progress=progress
                )
            except _Stop as stop:
                return _stopped(stop, layout, receipt, checks, started)
            except BaseException:
                receipt.data["pending"] = None
                if receipt.exists or receipt.releases:
                    receipt.save()
                raise
            return _activate(vr, sink, layout, receipt, versions, checks, started)
        finally:
            runtime.close()


def _stopped(
    stop: _Stop, layout: Layout, receipt: Receipt, checks: list[Check], started: float
) -> InstallResult:
    name, _, version = stop.key.rpartition("-")
    if stop.status == "reactivated":
        layout.switch_current(stop.key)
        receipt.data["current"] = stop.key
        receipt.data["history"].append(stop.key)
        receipt.save()
    known = receipt.releases.get(stop.key, {})
    return InstallResult(
        status=stop.status,
        name=name,
        version=int(version),
        release=layout.release(stop.key),
        index_sha256=known.get("index_sha256", ""),
        checks=checks,
        images=list(known.get("images", [])),
        seconds=time.monotonic() - started,
    )


def _activate(
    vr: VerifyResult,
    sink: InstallSink,
    layout: Layout,
    receipt: Receipt,
    versions: VersionRegistry,
    checks: list[Check],
    started: float,
) -> InstallResult:
    """Move the verified staging dir into place, switch ``current``, write the receipt."""
    index = vr.index
    key = release_key(index)
    assert sink.staging is not None
    target = layout.release(key)
    loaded = {img.config_digest for img in sink.to_load}
    images = [
        {
            "role": img.role,
            "ref": img.ref,
            "id": img.config_digest,
            "platform": img.platform,
            "created_by_us": img.config_digest in loaded,
        }
        for img in index.images
    ]
    try:
        if target.exists():  # same name and version, left without a receipt entry
            shutil.rmtree(target)
        os.replace(sink.staging, target)
        layout.switch_current(key)
        receipt.releases[key] = {
            "name": index.name,
            "version": index.version,
            "index_sha256": vr.index_sha256,
            "signers": list(vr.signers),
            "installed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "path": str(target),
            "images": images,
        }
        receipt.data["current"] = key
        receipt.data["history"].append(key)
        receipt.data["pending"] = None
        receipt.save()
        versions.record(index.name, index.version)
    except BaseException:
        sink.remove_loaded()
        shutil.rmtree(sink.staging, ignore_errors=True)
        raise
    return InstallResult(
        status="installed",
        name=index.name,
        version=index.version,
        release=target,
        index_sha256=vr.index_sha256,
        checks=checks,
        images=images,
        bytes_read=vr.bytes_read,
        seconds=time.monotonic() - started,
    )


@dataclass
class StatusReport:
    prefix: Path
    current: str | None
    ok: bool
    releases: list[dict[str, Any]]


def status(
    prefix: Path,
    runtime_kind: str = "docker",
    runtime_url: str | None = None,
    *,
    deep: bool = False,
) -> StatusReport:
    """The receipt, checked against what is really there (files, images).

    Raises:
        InstallError: no receipt under ``prefix``, or the engine is unreachable.
    """
    layout = Layout(prefix)
    receipt = Receipt.load(layout.state)
    if not receipt.exists:
        raise InstallError(
            f"{prefix}: nothing installed here (no receipt)",
            hint="Check --prefix, or run `airgap install` first.",
        )
    runtime = Runtime(runtime_kind, runtime_url)
    ok = True
    rows = []
    try:
        for key, rel in receipt.releases.items():
            path = layout.release(key)
            index_file = path / "airgap" / "index.json"
            index_ok = (
                index_file.is_file()
                and hashlib.sha256(index_file.read_bytes()).hexdigest() == rel["index_sha256"]
            )
            files_ok = None
            if deep and index_ok:
                files_ok = _deep_check(path, index_file)
            images = []
            for img in rel.get("images", []):
                present = runtime.image_id(img["id"]) == img["id"]
                images.append({**img, "present": present})
            healthy = index_ok and files_ok is not False and all(i["present"] for i in images)
            if key == receipt.current:
                ok = ok and healthy
            rows.append(
                {
                    "release": key,
                    "version": rel["version"],
                    "active": key == receipt.current,
                    "path": str(path),
                    "index_ok": index_ok,
                    "files_ok": files_ok,
                    "images": images,
                    "healthy": healthy,
                    "installed_at": rel.get("installed_at"),
                }
            )
    finally:
        runtime.close()
    current_link = layout.current.resolve() if layout.current.is_symlink() else None
    if receipt.current and current_link != layout.release(receipt.current).resolve():
        ok = False
    return StatusReport(layout.prefix, receipt.current, ok and receipt.current is not None, rows)


def _deep_check(path: Path, index_file: Path) -> bool:
    from bundler.bundle.index import parse_index

    index = parse_index(index_file.read_bytes())
    files = [
        f for f in index.files if not f.path.startswith(BLOB_PREFIX) or (path / f.path).exists()
    ]
    sources = [FileRange(path / f.path, 0, f.size) for f in files]
    try:
        digests = hash_sources(sources, index.chunk_size)
    except (OSError, EOFError):
        return False
    return all(d.sha256 == f.sha256 for d, f in zip(digests, files, strict=True))


def uninstall(
    prefix: Path, runtime_kind: str = "docker", runtime_url: str | None = None
) -> list[str]:
    """Remove exactly what the receipt says this tool created: images, releases, state.

    Raises:
        InstallError: no receipt under ``prefix``.
    """
    layout = Layout(prefix)
    removed: list[str] = []
    with InstallLock(layout.prefix):
        receipt = Receipt.load(layout.state)
        if not receipt.exists:
            raise InstallError(
                f"{prefix}: nothing installed here (no receipt)", hint="Check --prefix."
            )
        runtime = Runtime(runtime_kind, runtime_url)
        try:
            recover(layout, receipt, runtime)
            for image_id in sorted(receipt.our_images()):
                if runtime.remove_image(image_id):
                    removed.append(f"image {image_id}")
        finally:
            runtime.close()
        layout.switch_current(None)
        for key in list(receipt.releases):
            shutil.rmtree(layout.release(key), ignore_errors=True)
            removed.append(f"release {key}")
        for p in (receipt.path, VersionRegistry(layout.state).path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        for d in (layout.state, layout.releases):
            with contextlib.suppress(OSError):
                d.rmdir()
    with contextlib.suppress(OSError):
        (layout.prefix / ".airgap.lock").unlink()
        layout.prefix.rmdir()
    return removed


def rollback(prefix: Path) -> str:
    """Switch ``current`` back to the release that was active before it.

    Raises:
        InstallError: there is no earlier release still on disk.
    """
    layout = Layout(prefix)
    with InstallLock(layout.prefix):
        receipt = Receipt.load(layout.state)
        current = receipt.current
        history = [k for k in receipt.data["history"] if k in receipt.releases]
        earlier = [k for k in reversed(history) if k != current and layout.release(k).is_dir()]
        if not earlier:
            raise InstallError(
                f"{prefix}: no earlier release to roll back to",
                hint="`airgap status` lists the releases on this host.",
            )
        target = earlier[0]
        layout.switch_current(target)
        receipt.data["current"] = target
        receipt.data["history"].append(target)
        receipt.save()
        return str(target)
