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

import requests

from bundler.bundle.extract import StagingExtractor
from bundler.bundle.index import BLOB_PREFIX, FileEntry, ImageEntry, Index, parse_index
from bundler.bundle.reader import TrustPolicy, VerifyResult, read_bundle
from bundler.bundle.signing import TrustedKey
from bundler.errors import AirgapError, InstallError, RollbackError
from bundler.fmt import human
from bundler.fsutil import atomic_write_bytes, free_space
from bundler.hashing import FileRange, hash_sources
from bundler.install import elasticsearch as es_mod
from bundler.install.contents import check_signed_names
from bundler.install.elastic_api import Credentials
from bundler.install.feeds import ArchiveFeed, RegistryFeed
from bundler.install.kibana import Kibana, KibanaOptions, register, trust_snippet, unregister
from bundler.install.serve import ServeOptions, Server, served_record
from bundler.install.state import InstallLock, Receipt, VersionRegistry
from bundler.manifest import parse_manifest
from bundler.names import image_tag, registry_name
from bundler.oci.engine import Runtime
from bundler.oci.media import OCI_MANIFEST
from bundler.oci.ref import IMAGE_REF_RE
from bundler.oci.registry import Registry

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
    serve: ServeOptions | None = None  # None: put files and images in place, start nothing
    registry: str | None = None  # HOST[:PORT][/PREFIX]: push images there instead
    registry_insecure: bool = False
    registry_ca: Path | None = None
    replace_tags: bool = False  # move an existing tag that names another image
    tag_source_refs: bool = False  # also tag the signed source refs (engine)
    kibana: KibanaOptions | None = None  # register the connector (needs serve)
    elasticsearch: es_mod.EsOptions | None = None  # create the ELSER inference endpoint
    elser_dir: Path | None = None  # copy ELSER into Elasticsearch's config/models
    product_docs_dir: Path | None = None  # copy product docs (+ index.xml) for file://


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
    serving: dict[str, Any] | None = None
    elastic: dict[str, Any] | None = None  # settings to add, connector, endpoint, files

    def to_json(self) -> dict[str, Any]:
        """What ``airgap install --json`` prints."""
        return {
            "status": self.status,
            "name": self.name,
            "version": self.version,
            "release": str(self.release),
            "index_sha256": self.index_sha256,
            "images": self.images,
            "serving": self.serving,
            "elastic": self.elastic,
            "bytes": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


class Layout:
    """Paths under an install prefix."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.releases = self.prefix / "releases"
        self.state = self.prefix / "state"
        self.current = self.prefix / "current"

    def release(self, key: str) -> Path:
        return self.releases / key

    @property
    def token_file(self) -> Path:
        """The bearer token Kibana's connector sends (0600)."""
        return self.prefix / "secrets" / "bearer-token"

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


class EngineTarget:
    """Images go into a local Docker engine or Podman.

    Tags are airgap's own (``localhost/airgap/<bundle>/<role>:<version>``), plus the
    signed source references only when the operator asks (``--tag-source-refs``). A tag
    that already names another image is never moved without ``--replace-tags``, and
    uninstall removes only the tags install created.
    """

    kind = "engine"

    def __init__(
        self, runtime: Runtime, *, replace_tags: bool = False, source_refs: bool = False
    ) -> None:
        self.runtime = runtime
        self.replace_tags = replace_tags
        self.source_refs = source_refs
        self.index: Index | None = None
        self._created: dict[str, list[str]] = {}  # role -> tags this run created

    def spec(self) -> dict[str, Any]:
        return {"kind": "engine", "runtime": self.runtime.kind, "url": self.runtime.url}

    def bind(self, index: Index) -> None:
        """The bundle whose images this run handles (names its tags)."""
        self.index = index

    def wanted_tags(self, img: ImageEntry) -> list[str]:
        assert self.index is not None
        tags = [image_tag(self.index.name, self.index.version, img.role)]
        if self.source_refs:
            for ref in (img.ref, *img.tags):
                m = IMAGE_REF_RE.match(ref.split("@", 1)[0])
                if m and m["tag"]:
                    tags.append(ref.split("@", 1)[0])
        return list(dict.fromkeys(tags))

    def conflicts(self, img: ImageEntry) -> list[str]:
        """Wanted tags that name another image now."""
        out = []
        for tag in self.wanted_tags(img):
            have = self.runtime.image_id(tag)
            if have is not None and have != img.config_digest:
                out.append(f"{tag} is {have[:19]}")
        return out

    def present(self, img: ImageEntry) -> bool:
        return self.runtime.image_id(img.config_digest) == img.config_digest

    def feed(self, images: list[ImageEntry]) -> ArchiveFeed:
        feed = ArchiveFeed(self.runtime, images)
        feed.start()
        return feed

    def finish(self, feed: Any, images: list[ImageEntry], manifests: dict[str, bytes]) -> None:
        if feed is not None:
            logger.info("image load: %s", "; ".join(feed.finish()))
        for img in images:
            loaded = self.runtime.image_id(img.config_digest)
            if loaded != img.config_digest:
                raise InstallError(
                    f"image {img.role} ({img.ref}): the engine has {loaded or 'nothing'} where "
                    f"the signed config digest is {img.config_digest}",
                    hint="The engine did not load what the bundle carries; see its log.",
                )
        for img in images:
            created = self._created.setdefault(img.role, [])
            for tag in self.wanted_tags(img):
                have = self.runtime.image_id(tag)
                if have == img.config_digest:
                    continue
                if have is not None and not self.replace_tags:
                    raise InstallError(
                        f"tag {tag} names image {have}, not this bundle's {img.role} "
                        f"({img.config_digest}); airgap does not move it",
                        hint="Remove or rename that tag, or pass --replace-tags to move it.",
                    )
                self.runtime.tag(img.config_digest, tag)
                created.append(tag)

    def undo_tags(self) -> None:
        """Remove the tags this run created (a failed run)."""
        ids = {img.role: img.config_digest for img in (self.index.images if self.index else [])}
        for role, tags in self._created.items():
            for tag in tags:
                with contextlib.suppress(AirgapError):
                    if self.runtime.image_id(tag) == ids.get(role):
                        self.runtime.untag(tag)
        self._created.clear()

    def record(self, img: ImageEntry, created: bool) -> dict[str, Any]:
        return {
            "role": img.role,
            "ref": img.ref,
            "id": img.config_digest,
            "platform": img.platform,
            "created_by_us": created,
            "tags": list(self._created.get(img.role, [])),
        }

    def pending_record(self, img: ImageEntry, loads: bool) -> dict[str, Any]:
        """What a killed run may have created for ``img``: the image (if this run loads
        it), and the tags that do not exist yet."""
        return {
            **self.record(img, loads),
            "tags": [t for t in self.wanted_tags(img) if self.runtime.image_id(t) is None],
        }

    def pending_id(self, img: ImageEntry) -> str:
        return img.config_digest

    def exists(self, record: dict[str, Any]) -> bool:
        return self.runtime.image_id(str(record["id"])) == str(record["id"])

    def remove(self, record: dict[str, Any]) -> bool:
        """Remove the tags install created for ``record`` (only while they still name its
        image), then the image itself if install loaded it and no other tag names it.
        Returns whether the image was removed."""
        image_id = str(record["id"])
        existed = self.exists(record)
        tags = record.get("tags")
        if tags is None:  # receipts written before tags were recorded: the source ref
            tags = [record["ref"]]
        for tag in tags:
            if self.runtime.image_id(str(tag)) == image_id:
                self.runtime.untag(str(tag))  # the engine drops an image with its last tag
        if not record.get("created_by_us", True) or not existed:
            return False
        if not self.exists(record):
            return True
        others = self.runtime.image_tags(image_id)
        if others:
            logger.warning("kept image %s: also tagged %s", image_id, ", ".join(others))
            return False
        return self.runtime.remove_image(image_id)

    def close(self) -> None:
        self.runtime.close()


class RegistryTarget:
    """Images are pushed to an internal OCI registry (``--registry HOST[/PREFIX]``),
    under ``PREFIX/<bundle>/<role>:<version>`` (``airgap/…`` without a prefix), never
    under a name taken from the index. An existing tag there that names another
    manifest is not overwritten without ``--replace-tags``."""

    kind = "registry"

    def __init__(self, registry: Registry, *, replace_tags: bool = False) -> None:
        self.registry = registry
        self.replace_tags = replace_tags
        self.index: Index | None = None

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "registry",
            "registry": self.registry.spec,
            "insecure": self.registry.scheme == "http",
        }

    def bind(self, index: Index) -> None:
        self.index = index

    def name_for(self, img: ImageEntry) -> tuple[str, str]:
        assert self.index is not None
        return registry_name(self.registry.prefix, self.index.name, self.index.version, img.role)

    def target_ref(self, img: ImageEntry) -> str:
        name, tag = self.name_for(img)
        return f"{self.registry.host}/{name}:{tag}"

    def _digest(self, img: ImageEntry) -> str | None:
        name, tag = self.name_for(img)
        return self.registry.manifest_digest(name, tag, img.manifest_media_type)

    def conflicts(self, img: ImageEntry) -> list[str]:
        got = self._digest(img)
        if got is None or got == img.manifest_digest:
            return []
        return [f"{self.target_ref(img)} is {got[:19]}"]

    def present(self, img: ImageEntry) -> bool:
        return self._digest(img) == img.manifest_digest

    def feed(self, images: list[ImageEntry]) -> RegistryFeed:
        feed = RegistryFeed(self.registry, images, self.name_for)
        feed.start()
        return feed

    def finish(self, feed: Any, images: list[ImageEntry], manifests: dict[str, bytes]) -> None:
        if not self.replace_tags:
            for img in images:
                if self.conflicts(img):
                    raise InstallError(
                        f"{self.target_ref(img)} names another manifest than the signed "
                        f"{img.manifest_digest}; airgap does not overwrite it",
                        hint="Remove that tag in the registry, or pass --replace-tags.",
                    )
        if feed is not None:
            feed.finish_with(manifests)
        for img in images:
            if not self.present(img):
                raise InstallError(
                    f"{self.target_ref(img)} does not resolve to the "
                    f"signed manifest {img.manifest_digest} after the push"
                )

    def undo_tags(self) -> None:
        """Nothing: a failed push's manifests go with its images (remove)."""

    def record(self, img: ImageEntry, created: bool) -> dict[str, Any]:
        return {
            "role": img.role,
            "ref": self.target_ref(img),
            "source_ref": img.ref,
            "id": img.manifest_digest,
            "media_type": img.manifest_media_type,
            "platform": img.platform,
            "created_by_us": created,
        }

    def pending_record(self, img: ImageEntry, loads: bool) -> dict[str, Any]:
        return self.record(img, loads)

    def pending_id(self, img: ImageEntry) -> str:
        return img.manifest_digest

    def _name(self, record: dict[str, Any]) -> tuple[str, str]:
        ref = str(record["ref"]).removeprefix(self.registry.host + "/")
        name, _, tag = ref.rpartition(":")
        return name, tag

    def exists(self, record: dict[str, Any]) -> bool:
        name, tag = self._name(record)
        media = record.get("media_type", OCI_MANIFEST)
        return self.registry.manifest_digest(name, tag, str(media)) == str(record["id"])

    def remove(self, record: dict[str, Any]) -> bool:
        if not record.get("created_by_us", True):
            return False
        name, _ = self._name(record)
        return self.registry.delete_manifest(name, record["id"])

    def close(self) -> None:
        self.registry.session.close()


ImageTarget = EngineTarget | RegistryTarget


def target_from_spec(
    spec: dict[str, Any], runtime: str | None = None, runtime_url: str | None = None
) -> ImageTarget:
    """Rebuild the image target a release was installed into (from its receipt)."""
    if spec.get("kind") == "registry":
        return RegistryTarget(Registry(spec["registry"], insecure=bool(spec.get("insecure"))))
    return EngineTarget(
        Runtime(runtime or spec.get("runtime", "docker"), runtime_url or spec.get("url"))
    )


class InstallSink:
    """Routes verified payload: files into a staging release, layers into the engine."""

    def __init__(self, layout: Layout, receipt: Receipt, target: ImageTarget) -> None:
        self.layout = layout
        self.receipt = receipt
        self.target = target
        self.staging: Path | None = None
        self.extractor: StagingExtractor | None = None
        self.feed: ArchiveFeed | RegistryFeed | None = None
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
        self.target.bind(index)
        self.images = list(index.images)
        self.to_load = [img for img in index.images if not self.target.present(img)]
        self._manifests = {img.manifest_digest for img in index.images}
        self.staging = self.layout.releases / f".staging-{key}-{secrets.token_hex(6)}"
        self.layout.releases.mkdir(parents=True, exist_ok=True)
        # Written before anything is created, so a killed run is cleaned up by the next.
        self.receipt.data["pending"] = {
            "staging": str(self.staging),
            "target": self.target.spec(),
            # every image: loaded ones may be removed, present ones untagged
            "images": [self.target.pending_record(img, img in self.to_load) for img in self.images],
        }
        self.receipt.save()
        self.extractor = StagingExtractor(self.staging, oci_layout=False)
        self.extractor.begin(index, index_bytes, signatures, sums)
        if self.to_load:
            self.feed = self.target.feed(self.to_load)

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
        route: str = self._local.route
        if route == "file":
            assert self.extractor is not None
            self.extractor.write(data)
        elif route == "engine":
            assert self.feed is not None
            self.feed.write(data)

    def close_member(self, entry: FileEntry) -> None:
        route: str = self._local.route
        if route == "file":
            assert self.extractor is not None
            self.extractor.close_member(entry)
        elif route == "engine":
            assert self.feed is not None
            self.feed.close_blob(entry.size)

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
        if self.extractor is not None:
            self.extractor.abort()
        self.remove_loaded()

    def remove_loaded(self) -> None:
        """Undo this run's tags, and remove the images it loaded that no release uses."""
        with contextlib.suppress(AirgapError):
            self.target.undo_tags()
        in_use = self.receipt.images_in_use()
        for img in self.to_load:
            record = self.target.record(img, True)
            if record["id"] not in in_use:
                with contextlib.suppress(AirgapError):
                    self.target.remove(record)


def recover(layout: Layout, receipt: Receipt, target: ImageTarget | None) -> list[str]:
    """Undo what a killed run left: its staging dir and the images it may have loaded."""
    done = []
    pending = receipt.data.get("pending")
    if pending:
        in_use = receipt.images_in_use()
        records = [r for r in pending.get("images", []) if isinstance(r, dict)]
        spec = pending.get("target")
        owned: ImageTarget | None = None
        if records and target is not None and target.spec() != spec and isinstance(spec, dict):
            # The killed run loaded into another engine or registry: clean that one.
            try:
                owned = target = target_from_spec(spec)
            except (AirgapError, OSError) as e:
                done.append(f"could not reach {spec} to remove an interrupted run's images: {e}")
                target = None
        try:
            for record in records:
                if target is None:
                    break
                try:
                    # its new tags always go; the image only when no release uses it
                    mine = record.get("created_by_us", True) and record["id"] not in in_use
                    if target.remove({**record, "created_by_us": mine}):
                        done.append(f"removed image {record['id']} of an interrupted run")
                except (AirgapError, OSError) as e:
                    done.append(f"could not remove image {record['id']}: {e}")
        finally:
            if owned is not None:
                owned.close()
        receipt.data["pending"] = None
        receipt.save()
    if layout.releases.is_dir():
        for stale in layout.releases.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
            done.append(f"removed {stale.name} of an interrupted run")
    return done


def _our_ports(receipt: Receipt, target: ImageTarget) -> set[int]:
    """Ports held by airgap's own containers (any release whose containers still exist):
    the new start replaces those containers, so their ports count as free."""
    ours: set[int] = set()
    if not isinstance(target, EngineTarget):
        return ours
    for rel in receipt.releases.values():
        serve = rel.get("serve") or {}
        containers = serve.get("containers") or {}
        alive = False
        for c in containers.values():
            with contextlib.suppress(Exception):
                target.runtime.api.inspect_container(c["id"])
                alive = True
        if not alive:
            continue
        options = serve.get("options") or {}
        ports = [serve.get("port"), serve.get("artifacts_port")]
        if options.get("network", "host") == "host":
            ports.append(serve.get("internal_port"))
        ours.update(int(p) for p in ports if p)
    return ours


def _tag_check(target: ImageTarget, index: Index, replace: bool) -> Check:
    """The tags install will create: none may name another image (unless replacing)."""
    taken = [c for img in index.images for c in target.conflicts(img)]
    if taken and not replace:
        return Check(
            "tags", False, "already name other images: " + "; ".join(taken) + " (--replace-tags)"
        )
    if isinstance(target, EngineTarget):
        names = [t for img in index.images for t in target.wanted_tags(img)]
    else:
        names = [target.target_ref(img) for img in index.images]
    moved = f"; moving {'; '.join(taken)}" if taken else ""
    return Check("tags", None if taken else True, ", ".join(names) + moved)


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
        target: ImageTarget
        if opts.registry:
            target = RegistryTarget(
                Registry(opts.registry, insecure=opts.registry_insecure, ca=opts.registry_ca),
                replace_tags=opts.replace_tags,
            )
        else:
            target = EngineTarget(
                Runtime(opts.runtime, opts.runtime_url),
                replace_tags=opts.replace_tags,
                source_refs=opts.tag_source_refs,
            )
        try:
            if isinstance(target, EngineTarget):
                info = target.runtime.info()
                where = f"{info.kind} {info.version} at {info.url}"
            else:
                where = f"registry {target.registry.host} ({target.registry.ping()})"
            for line in recover(layout, receipt, target):
                if notes:
                    notes(line)
            sink = InstallSink(layout, receipt, target)
            checks: list[Check] = []
            errors: dict[str, AirgapError] = {}

            def preflight(vr: VerifyResult) -> None:
                index = vr.index
                key = release_key(index)
                # Names become paths, mounts, containers and tags: refused before use.
                check_signed_names(index, bundle=opts.bundle)
                target.bind(index)
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
                checks.append(Check("images to", True, where))
                checks.append(_tag_check(target, index, opts.replace_tags))
                files = sum(f.size for f in index.files if not f.path.startswith(BLOB_PREFIX))
                image_bytes = index.payload_bytes - files
                free = free_space(layout.prefix)
                checks.append(
                    Check(
                        "disk",
                        free >= files,
                        f"{human(files)} needed under {layout.prefix}, {human(free)} free",
                    )
                )
                engine_free = None
                if isinstance(target, EngineTarget):
                    engine_free = target.runtime.free_bytes(info.root_dir)
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
                elif isinstance(target, RegistryTarget):
                    checks.append(Check("gpu", None, "not checked: images go to a registry"))
                else:
                    checks.append(
                        Check(
                            "gpu",
                            True if info.gpu else None,
                            info.gpu_detail + ("" if info.gpu else "; use --no-gpu for CPU images"),
                        )
                    )
                ours = _our_ports(receipt, target)
                will_serve = opts.serve is not None and isinstance(target, EngineTarget)
                ports = list(opts.ports)
                artifacts = opts.serve.artifacts_port if opts.serve and will_serve else None
                if artifacts and any(f.path.startswith("elastic/") for f in index.files):
                    ports.append(artifacts)  # only needed when there is something to serve
                if opts.serve and will_serve and opts.serve.network == "host":
                    ports.append(opts.serve.internal_port)  # vLLM binds it on the host
                for port in dict.fromkeys(ports):
                    if port in ours:
                        checks.append(
                            Check(
                                f"port {port}",
                                True,
                                "served by airgap's current release (replaced "
                                "only after the new one proves healthy)",
                            )
                        )
                        continue
                    free_port = _port_free(port)
                    checks.append(
                        Check(f"port {port}", free_port, "free" if free_port else "in use")
                    )
                checks.extend(_elastic_preflight(opts, index, errors, will_serve))
                if on_preflight:
                    on_preflight(list(checks))
                failed = [c for c in checks if c.ok is False]
                if failed and failed[0].name in errors:
                    raise errors[failed[0].name]
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
                    and known.get("target") == target.spec()
                    and all(target.exists(i) for i in known.get("images", []))
                ):
                    raise _Stop("unchanged" if receipt.current == key else "reactivated", key)

            policy = TrustPolicy(opts.trusted, opts.threshold, before_payload=preflight)
            try:
                vr = read_bundle(
                    opts.bundle, policy, sink, detached=list(opts.detached), progress=progress
                )
            except _Stop as stop:
                result = _stopped(stop, layout, receipt, checks, started, opts, target)
            except BaseException:
                receipt.data["pending"] = None
                if receipt.exists or receipt.releases:
                    receipt.save()
                raise
            else:
                result = _activate(vr, sink, layout, receipt, versions, checks, started, opts)
            if result.status != "dry-run":
                _elastic_steps(result, layout, receipt, opts)
            return result
        finally:
            target.close()


def _elastic_preflight(
    opts: InstallOptions, index: Index, errors: dict[str, AirgapError], will_serve: bool
) -> list[Check]:
    """Kibana and Elasticsearch reachable, credentials accepted, ES ready for ELSER:
    checked before a byte of payload is read."""
    checks = []
    serve = opts.serve
    if opts.kibana is not None and opts.kibana.mode == "api":
        try:
            kibana = Kibana(opts.kibana)
            try:
                v = kibana.version()
                kibana.api.request(
                    "GET", kibana._path("connectors"), what=f"listing space {kibana.space}"
                )
            finally:
                kibana.close()
            detail = f"{'.'.join(map(str, v))} at {kibana.api.base}, space {kibana.space}"
            checks.append(Check("kibana", True, detail))
        except AirgapError as e:
            errors["kibana"] = e
            checks.append(Check("kibana", False, e.message))
        if serve is not None and not (serve.server_names or serve.ips):
            checks.append(
                Check(
                    "kibana calls",
                    None,
                    f"https://localhost:{serve.port}: right only when Kibana runs on this "
                    "host; else give --server-name",
                )
            )
    elser = es_mod.elser_ids(index)
    if opts.elasticsearch is not None:
        try:
            if not elser:
                raise InstallError(
                    "--es-url: this bundle carries no ELSER model to deploy",
                    hint="Drop --es-url, or build a bundle with elastic.elser in its manifest.",
                )
            expected = _elser_repository(opts, will_serve=will_serve)
            if expected is None:
                raise InstallError(
                    "--es-url: nothing will serve ELSER to Elasticsearch (--no-serve or "
                    "--registry)",
                    hint="Give --elser-dir with Elasticsearch's config/models directory, or "
                    "let airgap serve the release.",
                )
            es = es_mod.Elasticsearch(opts.elasticsearch)
            try:
                version = es.version()
                repo = es.check_repository(expected)
            finally:
                es.close()
            checks.append(Check("elasticsearch", True, f"{version}, model repository {repo}"))
        except AirgapError as e:
            errors["elasticsearch"] = e
            checks.append(Check("elasticsearch", False, e.message))
    return checks


def _elser_repository(
    opts: InstallOptions, served: dict[str, Any] | None = None, *, will_serve: bool = False
) -> str | None:
    """Where Elasticsearch reads ELSER from: ``--elser-dir`` or the Nginx artifact server
    (the one that serves, or, before serving, the one this run will start)."""
    if opts.elser_dir is not None:
        return f"file://{opts.elser_dir.resolve()}"
    if served is not None:
        return str((served.get("artifacts") or {}).get("elser") or "") or None
    s = opts.serve
    if s is None or not will_serve:
        return None
    host = s.server_names[0] if s.server_names else (s.ips[0] if s.ips else "localhost")
    return (
        f"http://{host}:{s.artifacts_port}/elser"
        if s.artifacts_port
        else f"https://{host}:{s.port}/elser"
    )


def _identity(kind: str, rec: dict[str, Any]) -> tuple[Any, ...]:
    if kind == "kibana":
        return (rec.get("mode"), rec.get("url"), rec.get("space"), rec.get("connector_id"))
    if kind == "elasticsearch":
        return (rec.get("url"), rec.get("endpoint_id"))
    return (rec.get("path"),)


def _elastic_steps(
    result: InstallResult, layout: Layout, receipt: Receipt, opts: InstallOptions
) -> None:
    """After the release serves: Elastic files, settings to add, connector, ELSER endpoint.

    These run after the switch on purpose: Kibana must reach (and trust) the endpoint
    before its test can pass, so a failure here leaves the new release serving and the
    same command, run again, repeats only these steps. What this tool creates is in the
    receipt as soon as it exists; a rerun with other options keeps the earlier records
    (``earlier``) so that uninstall still removes them.
    """
    key = f"{result.name}-{result.version}"
    rel = receipt.releases.get(key)
    if rel is None:
        return
    release = layout.release(key)
    served = rel.get("serve")
    previous = dict(rel.get("elastic") or {})
    earlier: list[dict[str, Any]] = list(previous.get("earlier") or [])
    record: dict[str, Any] = {}
    settings: list[tuple[str, str]] = []

    def keep(kind: str, new: dict[str, Any]) -> None:
        """Record ``new``; an earlier, different object of this kind moves to ``earlier``."""
        old = previous.get(kind)
        if old and _identity(kind, old) != _identity(kind, new):
            earlier.append({"kind": kind, **old})
        record[kind] = new
        save()

    def save() -> None:
        rel["elastic"] = {**previous, **record, "earlier": earlier}
        receipt.save()

    try:
        index = parse_index((release / "airgap" / "index.json").read_bytes())
        if opts.elser_dir is not None:
            files = es_mod.copy_elser(release, index, opts.elser_dir)
            keep("elser_dir", {"path": str(opts.elser_dir), "files": [str(f) for f in files]})
        if opts.product_docs_dir is not None:
            files = es_mod.copy_product_docs(release, index, opts.product_docs_dir)
            keep(
                "product_docs_dir",
                {"path": str(opts.product_docs_dir), "files": [str(f) for f in files]},
            )
        elser_repo = _elser_repository(opts, served) if es_mod.elser_ids(index) else None
        docs_repo = None
        if opts.product_docs_dir is not None:
            docs_repo = f"file://{opts.product_docs_dir.resolve()}"
        elif served:
            docs_repo = (served.get("artifacts") or {}).get("product_docs")
        settings = es_mod.settings_lines(elser_repo, docs_repo)
        if served:
            ca_pem = Path(served["ca_cert"]).read_text()
            settings.append(("kibana.yml", trust_snippet(served["url"], ca_pem, "full")))
        if settings:
            settings_file = layout.prefix / "serve" / "elastic-settings.txt"
            settings_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(settings_file, es_mod.settings_text(settings).encode(), mode=0o644)
            record["settings_file"] = str(settings_file)
        if opts.kibana is not None:
            if not served:
                raise InstallError(
                    "the Kibana connector needs the served endpoint",
                    hint="Drop --no-serve/--registry, or register the connector by hand.",
                )
            token = (layout.prefix / "secrets" / "bearer-token").read_text().strip()
            reg = register(
                opts.kibana,
                parse_manifest(index.manifest, source=f"{key} (signed manifest)"),
                result.name,
                served["url"],
                token,
                Path(served["ca_cert"]).read_text(),
                layout.prefix / "secrets",
                previous.get("kibana"),
                on_created=lambda r: keep("kibana", r.record()),
            )
            keep("kibana", reg.record())
            if reg.test_error is not None:
                raise reg.test_error
            if reg.test_reply is not None:
                record["kibana"]["test_reply"] = reg.test_reply[:200]
        if opts.elasticsearch is not None:
            model = es_mod.elser_ids(index)[0]
            dep = es_mod.deploy_elser(
                opts.elasticsearch,
                model,
                previous.get("elasticsearch"),
                on_created=lambda d: keep("elasticsearch", dict(d)),
            )
            keep("elasticsearch", dep)
    except BaseException as e:
        save()
        result.elastic = {**record, "settings": settings}
        if not isinstance(e, Exception):
            raise  # Ctrl-C: recorded, then out
        err = e if isinstance(e, AirgapError) else InstallError(f"{type(e).__name__}: {e}")
        where = f" Settings to add: {record['settings_file']}." if "settings_file" in record else ""
        raise InstallError(
            f"{key} is installed and serving, but an Elastic step failed: {err.message}",
            hint=(err.hint + " " if err.hint else "")
            + where
            + " Running the same `airgap install` again repeats only the Elastic steps.",
        ) from e
    save()
    result.elastic = {**record, "settings": settings}


def _stopped(
    stop: _Stop,
    layout: Layout,
    receipt: Receipt,
    checks: list[Check],
    started: float,
    opts: InstallOptions,
    target: ImageTarget,
) -> InstallResult:
    name, _, version = stop.key.rpartition("-")
    known = receipt.releases.get(stop.key, {})
    if stop.status != "dry-run" and opts.serve is not None and isinstance(target, EngineTarget):
        # Same bundle again: leave a healthy service alone, unless asked to rotate the
        # token, or the containers are gone (then start them again).
        server = Server(target.runtime, layout.prefix, name)
        serving = (known.get("serve") or {}).get("containers", {})
        running = server.running(serving) if serving else {}
        if (
            stop.status == "reactivated"
            or opts.serve.rotate_token
            or not running
            or not all(running.values())
        ):
            current = receipt.releases.get(receipt.current or "", {})
            served = _serve(
                server,
                layout.release(stop.key),
                stop.key,
                known,
                opts,
                (current.get("serve") or {}).get("containers"),
            )
            known["serve"] = served
    if stop.status == "reactivated":
        layout.switch_current(stop.key)
        receipt.data["current"] = stop.key
        receipt.data["history"].append(stop.key)
    if stop.status != "dry-run":
        receipt.save()
    return InstallResult(
        status=stop.status,
        name=name,
        version=int(version),
        release=layout.release(stop.key),
        index_sha256=known.get("index_sha256", ""),
        checks=checks,
        images=list(known.get("images", [])),
        seconds=time.monotonic() - started,
        serving=known.get("serve"),
    )


def _serve(
    server: Server,
    release_dir: Path,
    key: str,
    release: dict[str, Any],
    opts: InstallOptions,
    previous: dict[str, dict[str, str]] | None,
) -> dict[str, Any]:
    assert opts.serve is not None
    index = parse_index((release_dir / "airgap" / "index.json").read_bytes())
    m = parse_manifest(index.manifest, source=f"{key} (signed manifest)")
    images = {img.role: img.config_digest for img in index.images}
    served = server.start(m, release_dir, key, images, opts.serve, opts.no_gpu, previous)
    record = served_record(served)
    record["internal_port"] = opts.serve.internal_port
    record["artifacts_port"] = opts.serve.artifacts_port
    record["token_file"] = str(server.secrets / "bearer-token")  # the path, never the token
    record["options"] = _serve_options_record(opts.serve, opts.no_gpu)
    return record


def _serve_options_record(s: ServeOptions, no_gpu: bool) -> dict[str, Any]:
    """How a release was served (no secret in it), so rollback can serve it the same way."""
    return {
        "port": s.port,
        "internal_port": s.internal_port,
        "server_names": list(s.server_names),
        "ips": list(s.ips),
        "tls_cert": str(s.tls_cert) if s.tls_cert else None,
        "tls_key": str(s.tls_key) if s.tls_key else None,
        "gpus": s.gpus,
        "health_timeout": s.health_timeout,
        "network": s.network,
        "extra_vllm_args": list(s.extra_vllm_args),
        "artifacts_port": s.artifacts_port,
        "no_gpu": no_gpu,
    }


def _serve_options(rec: dict[str, Any]) -> tuple[ServeOptions, bool]:
    return (
        ServeOptions(
            port=int(rec["port"]),
            internal_port=int(rec["internal_port"]),
            server_names=tuple(rec.get("server_names") or ()),
            ips=tuple(rec.get("ips") or ()),
            tls_cert=Path(rec["tls_cert"]) if rec.get("tls_cert") else None,
            tls_key=Path(rec["tls_key"]) if rec.get("tls_key") else None,
            gpus=str(rec.get("gpus", "all")),
            health_timeout=float(rec.get("health_timeout", 900.0)),
            network=str(rec.get("network", "host")),
            extra_vllm_args=tuple(rec.get("extra_vllm_args") or ()),
            artifacts_port=rec.get("artifacts_port"),
        ),
        bool(rec.get("no_gpu")),
    )


def _activate(
    vr: VerifyResult,
    sink: InstallSink,
    layout: Layout,
    receipt: Receipt,
    versions: VersionRegistry,
    checks: list[Check],
    started: float,
    opts: InstallOptions,
) -> InstallResult:
    """Move the verified staging dir into place, switch ``current``, write the receipt."""
    index = vr.index
    key = release_key(index)
    assert sink.staging is not None
    target = layout.release(key)
    loaded = {img.config_digest for img in sink.to_load}
    images = [sink.target.record(img, img.config_digest in loaded) for img in index.images]
    try:
        if target.exists():  # same name and version, left without a receipt entry
            shutil.rmtree(target)
        os.replace(sink.staging, target)
        serve_record = None
        if opts.serve is not None and isinstance(sink.target, EngineTarget):
            current = receipt.releases.get(receipt.current or "", {})
            serve_record = _serve(
                Server(sink.target.runtime, layout.prefix, index.name),
                target,
                key,
                {},
                opts,
                (current.get("serve") or {}).get("containers"),
            )
        layout.switch_current(key)
        receipt.releases[key] = {
            "name": index.name,
            "version": index.version,
            "index_sha256": vr.index_sha256,
            "signers": list(vr.signers),
            "installed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "path": str(target),
            "target": sink.target.spec(),
            "images": images,
            **({"serve": serve_record} if serve_record else {}),
        }
        receipt.data["current"] = key
        receipt.data["history"].append(key)
        receipt.data["pending"] = None
        receipt.save()
        versions.record(index.name, index.version)
    except BaseException:
        sink.remove_loaded()
        shutil.rmtree(sink.staging, ignore_errors=True)
        if receipt.releases.get(key, {}).get("index_sha256") != vr.index_sha256:
            shutil.rmtree(target, ignore_errors=True)  # this run's release, never activated
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
        serving=serve_record,
    )


@dataclass
class StatusReport:
    prefix: Path
    current: str | None
    ok: bool
    releases: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """What ``airgap status --json`` prints."""
        return {
            "prefix": str(self.prefix),
            "current": self.current,
            "ok": self.ok,
            "releases": self.releases,
        }


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
    targets = _Targets(runtime_kind, runtime_url)
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
            target = targets.get(rel.get("target", {}))
            images = [{**img, "present": target.exists(img)} for img in rel.get("images", [])]
            serve = rel.get("serve")
            serving = None
            if serve and key == receipt.current and isinstance(target, EngineTarget):
                serving = _probe(Server(target.runtime, layout.prefix, rel["name"]), serve)
            healthy = (
                index_ok
                and files_ok is not False
                and all(i["present"] for i in images)
                and (serving is None or serving["ok"])
            )
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
                    "serving": serving,
                    "elastic": rel.get("elastic"),
                    "healthy": healthy,
                    "installed_at": rel.get("installed_at"),
                }
            )
    finally:
        targets.close()
    current_link = layout.current.resolve() if layout.current.is_symlink() else None
    if receipt.current and current_link != layout.release(receipt.current).resolve():
        ok = False
    return StatusReport(layout.prefix, receipt.current, ok and receipt.current is not None, rows)


def _probe(server: Server, serve: dict[str, Any]) -> dict[str, Any]:
    """Are the containers running, and does /health answer through nginx over TLS?"""
    running = server.running(serve.get("containers", {}))
    health: int | str | None = None
    try:
        r = requests.get(
            f"https://127.0.0.1:{serve['port']}/health", timeout=5, verify=serve["ca_cert"]
        )
        health = r.status_code
    except requests.RequestException as e:
        health = str(e)[:120]
    return {
        "url": serve["url"],
        "ca_cert": serve["ca_cert"],
        "containers": running,
        "health": health,
        "ok": all(running.values()) and health == 200,
    }


class _Targets:
    """Image targets named in a receipt, opened once each."""

    def __init__(self, runtime: str | None, runtime_url: str | None) -> None:
        self.runtime = runtime
        self.runtime_url = runtime_url
        self._open: dict[str, ImageTarget] = {}

    def get(self, spec: dict[str, Any]) -> ImageTarget:
        key = repr(sorted(spec.items()))
        if key not in self._open:
            self._open[key] = target_from_spec(spec, self.runtime, self.runtime_url)
        return self._open[key]

    def close(self) -> None:
        for t in self._open.values():
            t.close()


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


@dataclass(frozen=True)
class ElasticAccess:
    """Credentials (never stored) to undo what install did in Kibana and Elasticsearch."""

    kibana: Credentials | None = None
    kibana_ca: Path | None = None
    kibana_insecure: bool = False
    es: Credentials | None = None
    es_ca: Path | None = None
    es_insecure: bool = False
    keep: bool = False  # leave the connector and the endpoint in place


def _undo_elastic(receipt: Receipt, access: ElasticAccess) -> list[str]:
    """Delete the connector and the inference endpoint this tool created, files it copied.

    Raises:
        InstallError: something must be deleted in Kibana/Elasticsearch and no
            credentials were given (nothing was removed yet), or the deletion failed.
    """
    connectors: dict[tuple[str, str, str], dict[str, Any]] = {}
    endpoints: dict[tuple[str, str], dict[str, Any]] = {}
    files: list[str] = []
    preconfigured: set[str] = set()
    for rel in receipt.releases.values():
        el = rel.get("elastic") or {}
        records = [(kind, el.get(kind) or {}) for kind in ("kibana", "elasticsearch")]
        records += [(kind, el.get(kind) or {}) for kind in ("elser_dir", "product_docs_dir")]
        records += [(str(r.get("kind")), r) for r in el.get("earlier") or []]
        for kind, rec in records:
            if kind == "kibana" and rec.get("mode") == "api" and rec.get("created_by_us"):
                connectors[(rec["url"], rec.get("space", "default"), rec["connector_id"])] = rec
            elif kind == "elasticsearch" and rec.get("created_by_us"):
                endpoints[(rec["url"], rec["endpoint_id"])] = rec
            elif kind in ("elser_dir", "product_docs_dir"):
                files += rec.get("files", [])
            if kind == "kibana" and rec.get("mode") == "preconfigured":
                preconfigured.add(str(rec.get("connector_id")))
    removed = []
    if not access.keep:
        if connectors and access.kibana is None:
            raise InstallError(
                "airgap created Kibana connector(s) "
                + ", ".join(f"{i} at {u}" for u, _, i in connectors)
                + " and needs Kibana credentials to delete them",
                hint="Set AIRGAP_KIBANA_API_KEY (or --kibana-api-key-file / "
                "--kibana-credentials-file), or pass --keep-elastic to leave them.",
            )
        if endpoints and access.es is None:
            raise InstallError(
                "airgap created inference endpoint(s) "
                + ", ".join(f"{i} at {u}" for u, i in endpoints)
                + " and needs Elasticsearch credentials to delete them",
                hint="Set AIRGAP_ES_API_KEY (or --es-api-key-file / --es-credentials-file), "
                "or pass --keep-elastic to leave them.",
            )
        for (url, space, _), record in connectors.items():
            opts = KibanaOptions(
                url=url,
                credentials=access.kibana,
                space=space,
                ca=access.kibana_ca,
                insecure=access.kibana_insecure,
            )
            if line := unregister(record, opts):
                removed.append(line)
        for url, ident in endpoints:
            es = es_mod.Elasticsearch(
                es_mod.EsOptions(url, access.es, ca=access.es_ca, insecure=access.es_insecure)
            )
            try:
                gone = es.delete_endpoint(ident)
            finally:
                es.close()
            removed.append(f"inference endpoint {ident} ({url}){'' if gone else ' was gone'}")
    removed += es_mod.remove_dir_files(files)
    removed += [
        f"note: remove the preconfigured connector {ident} from kibana.yml (airgap never "
        "edits kibana.yml)"
        for ident in sorted(preconfigured)
    ]
    return removed


def uninstall(
    prefix: Path,
    runtime_kind: str = "docker",
    runtime_url: str | None = None,
    access: ElasticAccess | None = None,
) -> list[str]:
    """Remove exactly what the receipt says this tool created: the Kibana connector and
    ELSER endpoint, containers, images, releases, secrets, state.

    Raises:
        InstallError: no receipt under ``prefix``; or Kibana/Elasticsearch objects to
            delete without credentials (then nothing is removed).
    """
    layout = Layout(prefix)
    removed: list[str] = []
    with InstallLock(layout.prefix):
        receipt = Receipt.load(layout.state)
        if not receipt.exists:
            raise InstallError(
                f"{prefix}: nothing installed here (no receipt)", hint="Check --prefix."
            )
        removed += _undo_elastic(receipt, access or ElasticAccess())
        targets = _Targets(runtime_kind, runtime_url)
        try:
            pending = receipt.data.get("pending") or {}
            recover(
                layout, receipt, targets.get(pending["target"]) if pending.get("target") else None
            )
            for rel in receipt.releases.values():
                target = targets.get(rel.get("target", {}))
                serve = rel.get("serve") or {}
                if serve.get("containers") and isinstance(target, EngineTarget):
                    server = Server(target.runtime, layout.prefix, rel["name"])
                    removed += server.remove(serve["containers"])
            # First every release's own tags, then the images install loaded (an image
            # two releases share is removed once neither tag names it).
            for created in (False, True):
                done: set[str] = set()
                for rel in receipt.releases.values():
                    target = targets.get(rel.get("target", {}))
                    for img in rel.get("images", []):
                        if created and (not img.get("created_by_us") or img["id"] in done):
                            continue
                        done.add(img["id"])
                        record = {**img, "tags": []} if created else {**img, "created_by_us": False}
                        if target.remove(record):
                            removed.append(f"image {img['ref']} ({img['id']})")
        finally:
            targets.close()
        layout.switch_current(None)
        for key in list(receipt.releases):
            shutil.rmtree(layout.release(key), ignore_errors=True)
            removed.append(f"release {key}")
        for d, what in (
            (layout.prefix / "secrets", "tokens, TLS keys"),
            (layout.prefix / "serve", "nginx configuration"),
        ):
            if d.exists():
                shutil.rmtree(d)
                removed.append(f"{d.name}/ ({what})")
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


def _connector_note(receipt: Receipt, key: str, served: dict[str, Any]) -> list[str]:
    """What the operator must do about Kibana after a rollback, from the recorded connector."""
    records = [(r.get("elastic") or {}).get("kibana") or {} for r in receipt.releases.values()]
    records = [r for r in records if r]
    if not records:
        return []
    model = served.get("model")
    if any(r.get("mode") == "api" for r in records):
        return [
            f"the Kibana connector still names the newer release's model: run `airgap install` "
            f"of {key}'s bundle with --allow-downgrade and the same --kibana-* options to "
            f"point it at {model}"
        ]
    return [
        f"the preconfigured connector in kibana.yml still names the newer release's model: "
        f"set its defaultModel to {model} and restart Kibana"
    ]


def rollback(prefix: Path, runtime_url: str | None = None) -> tuple[str, list[str]]:
    """Make the release that was active before the current one current again, and serve it.

    When the releases were served, the earlier release's containers are started the way
    it was served before (same ports, names, flags) and proven healthy before ``current``
    moves; if that fails, the current containers serve again and nothing changes.

    Returns:
        The release now current, and notes for the operator.

    Raises:
        InstallError: there is no earlier release still on disk, or it failed to serve.
    """
    layout = Layout(prefix)
    notes: list[str] = []
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
        key = earlier[0]
        rel = receipt.releases[key]
        now = receipt.releases.get(current or "", {})
        now_serve = now.get("serve") or {}
        options = (rel.get("serve") or {}).get("options")
        if now_serve.get("containers"):
            if rel.get("name") != now.get("name"):
                raise InstallError(
                    f"{key} is another bundle than the current {current}; rollback stays "
                    "within one bundle name",
                    hint=f"Install {key}'s bundle again to serve it.",
                )
            if not rel.get("serve"):
                raise InstallError(
                    f"{key} was installed without serving (--no-serve or --registry), so "
                    f"there is nothing to switch {current}'s containers back to",
                    hint=f"Install {key}'s bundle again with --allow-downgrade to serve it.",
                )
            if not options:
                raise InstallError(
                    f"{key} was served by an older airgap that did not record how",
                    hint=f"Install {key}'s bundle again with --allow-downgrade to serve it.",
                )
            spec = rel.get("target", {})
            if spec.get("kind") == "registry":
                raise InstallError(f"{key}'s images are in a registry; nothing to serve here")
            target = target_from_spec(spec, runtime_url=runtime_url)
            try:
                assert isinstance(target, EngineTarget)
                try:
                    serve, no_gpu = _serve_options(options)
                except (KeyError, TypeError, ValueError) as e:
                    raise InstallError(
                        f"the receipt's record of how {key} was served is unreadable: {e}",
                        hint=f"Install {key}'s bundle again with --allow-downgrade.",
                    ) from e
                if serve.tls_cert and not serve.tls_cert.is_file():
                    raise InstallError(
                        f"{key} was served with --tls-cert {serve.tls_cert}, which is gone",
                        hint=f"Install {key}'s bundle again with --allow-downgrade and the "
                        "certificate to use now.",
                    )
                opts = InstallOptions(
                    bundle="", trusted={}, prefix=layout.prefix, serve=serve, no_gpu=no_gpu
                )
                rel["serve"] = _serve(
                    Server(target.runtime, layout.prefix, rel["name"]),
                    layout.release(key),
                    key,
                    rel,
                    opts,
                    now_serve["containers"],
                )
            finally:
                target.close()
            now_serve["containers"] = {}  # replaced by the earlier release's
            notes.append(f"{key} serves {rel['serve'].get('model')} (proven healthy)")
            if rel["serve"].get("model") != now_serve.get("model"):
                notes += _connector_note(receipt, key, rel["serve"])
        layout.switch_current(key)
        receipt.data["current"] = key
        receipt.data["history"].append(key)
        receipt.save()
        return key, notes
