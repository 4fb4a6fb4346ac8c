"""Where a bundle's images go: a local engine (Docker, Podman) or an OCI registry.

Both targets answer the same questions (is it there, which tags would clash, feed the
verified layers, prove the result, record it, remove exactly what was recorded), so
the installer, recovery, status and uninstall never ask which one they hold.
"""

from __future__ import annotations

import contextlib
import logging

from bundler import faults
from bundler.bundle.index import ImageEntry, Index
from bundler.errors import AirgapError, InstallError
from bundler.install.feeds import ArchiveFeed, RegistryFeed
from bundler.install.records import EngineSpec, ImageRecord, KubernetesSpec, RegistrySpec
from bundler.names import image_tag, registry_name
from bundler.oci.engine import Runtime
from bundler.oci.media import OCI_MANIFEST
from bundler.oci.ref import IMAGE_REF_RE
from bundler.oci.registry import Registry

logger = logging.getLogger(__name__)


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

    def spec(self) -> EngineSpec:
        return EngineSpec(runtime=self.runtime.kind, url=self.runtime.url)

    def bind(self, index: Index) -> None:
        """The bundle whose images this run handles (names its tags)."""
        self.index = index

    def wanted_tags(self, img: ImageEntry) -> list[str]:
        assert self.index is not None
        tags = [image_tag(self.index.name, self.index.version, img.role)]
        if self.source_refs:
            for ref in (img.ref, *img.tags):
                m = IMAGE_REF_RE.fullmatch(ref.split("@", 1)[0])
                if m and m["tag"]:
                    tags.append(ref.split("@", 1)[0])
        return list(dict.fromkeys(tags))

    def names(self, img: ImageEntry) -> list[str]:
        """What the image will be called once installed."""
        return self.wanted_tags(img)

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

    def finish(
        self,
        feed: ArchiveFeed | RegistryFeed | None,
        images: list[ImageEntry],
        manifests: dict[str, bytes],
    ) -> None:
        if isinstance(feed, ArchiveFeed):
            logger.info("image load: %s", "; ".join(feed.finish()))
        for img in images:
            loaded = self.runtime.image_id(img.config_digest)
            if loaded != img.config_digest:
                raise InstallError(
                    f"image {img.role} ({img.ref}): the engine has {loaded or 'nothing'} where "
                    f"the signed config digest is {img.config_digest}",
                    hint="The engine did not load what the bundle carries; see its log.",
                )
        faults.point("install.images-loaded")
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
        faults.point("install.images-tagged")

    def undo_tags(self) -> None:
        """Remove the tags this run created (a failed run)."""
        ids = {img.role: img.config_digest for img in (self.index.images if self.index else [])}
        for role, tags in self._created.items():
            for tag in tags:
                with contextlib.suppress(AirgapError):
                    if self.runtime.image_id(tag) == ids.get(role):
                        self.runtime.untag(tag)
        self._created.clear()

    def record(self, img: ImageEntry, created: bool) -> ImageRecord:
        return ImageRecord(
            role=img.role,
            ref=img.ref,
            id=img.config_digest,
            platform=img.platform,
            created_by_us=created,
            tags=list(self._created.get(img.role, [])),
        )

    def pending_record(self, img: ImageEntry, loads: bool) -> ImageRecord:
        """What a killed run may have created for ``img``: the image (if this run loads
        it), and the tags that do not exist yet."""
        tags = [t for t in self.wanted_tags(img) if self.runtime.image_id(t) is None]
        return self.record(img, loads).model_copy(update={"tags": tags})

    def exists(self, record: ImageRecord) -> bool:
        return self.runtime.image_id(record.id) == record.id

    def remove(self, record: ImageRecord) -> bool:
        """Remove the tags install created for ``record`` (only while they still name its
        image), then the image itself if install loaded it and no other tag names it.
        Returns whether the image was removed."""
        existed = self.exists(record)
        # receipts written before tags were recorded: the source ref
        tags = record.tags if record.tags is not None else [record.ref]
        for tag in tags:
            if self.runtime.image_id(tag) == record.id:
                self.runtime.untag(tag)  # the engine drops an image with its last tag
        if not record.created_by_us or not existed:
            return False
        if not self.exists(record):
            return True
        others = self.runtime.image_tags(record.id)
        if others:
            logger.warning("kept image %s: also tagged %s", record.id, ", ".join(others))
            return False
        return self.runtime.remove_image(record.id)

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

    def spec(self) -> RegistrySpec:
        return RegistrySpec(registry=self.registry.spec, insecure=self.registry.scheme == "http")

    def bind(self, index: Index) -> None:
        self.index = index

    def name_for(self, img: ImageEntry) -> tuple[str, str]:
        assert self.index is not None
        return registry_name(self.registry.prefix, self.index.name, self.index.version, img.role)

    def target_ref(self, img: ImageEntry) -> str:
        name, tag = self.name_for(img)
        return f"{self.registry.host}/{name}:{tag}"

    def names(self, img: ImageEntry) -> list[str]:
        return [self.target_ref(img)]

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

    def finish(
        self,
        feed: ArchiveFeed | RegistryFeed | None,
        images: list[ImageEntry],
        manifests: dict[str, bytes],
    ) -> None:
        if not self.replace_tags:
            for img in images:
                if self.conflicts(img):
                    raise InstallError(
                        f"{self.target_ref(img)} names another manifest than the signed "
                        f"{img.manifest_digest}; airgap does not overwrite it",
                        hint="Remove that tag in the registry, or pass --replace-tags.",
                    )
        if isinstance(feed, RegistryFeed):
            feed.finish_with(manifests)
        for img in images:
            if not self.present(img):
                raise InstallError(
                    f"{self.target_ref(img)} does not resolve to the "
                    f"signed manifest {img.manifest_digest} after the push"
                )

    def undo_tags(self) -> None:
        """Nothing: a failed push's manifests go with its images (remove)."""

    def record(self, img: ImageEntry, created: bool) -> ImageRecord:
        return ImageRecord(
            role=img.role,
            ref=self.target_ref(img),
            source_ref=img.ref,
            id=img.manifest_digest,
            media_type=img.manifest_media_type,
            platform=img.platform,
            created_by_us=created,
        )

    def pending_record(self, img: ImageEntry, loads: bool) -> ImageRecord:
        return self.record(img, loads)

    def _name(self, record: ImageRecord) -> tuple[str, str]:
        ref = record.ref.removeprefix(self.registry.host + "/")
        name, _, tag = ref.rpartition(":")
        return name, tag

    def exists(self, record: ImageRecord) -> bool:
        name, tag = self._name(record)
        media = record.media_type or OCI_MANIFEST
        return self.registry.manifest_digest(name, tag, media) == record.id

    def remove(self, record: ImageRecord) -> bool:
        """Delete the manifest install pushed, unless another tag in its repository names
        it too (a delete by digest would take that tag with it)."""
        if not record.created_by_us:
            return False
        name, tag = self._name(record)
        media = record.media_type or OCI_MANIFEST
        others = [
            t
            for t in self.registry.tags(name)
            if t != tag and self.registry.manifest_digest(name, t, media) == record.id
        ]
        if others:
            logger.warning("kept %s in %s: also tagged %s", record.id, name, ", ".join(others))
            return False
        return self.registry.delete_manifest(name, record.id)

    def close(self) -> None:
        self.registry.session.close()


ImageTarget = EngineTarget | RegistryTarget


AnySpec = EngineSpec | RegistrySpec | KubernetesSpec


def target_from_spec(
    spec: AnySpec, runtime: str | None = None, runtime_url: str | None = None
) -> ImageTarget:
    """Rebuild the image target a release was installed into (from its receipt): for a
    Kubernetes release, the registry its images and model went to."""
    if isinstance(spec, RegistrySpec | KubernetesSpec):
        return RegistryTarget(Registry(spec.registry, insecure=spec.insecure))
    return EngineTarget(Runtime(runtime or spec.runtime, runtime_url or spec.url))


class TargetPool:
    """Image targets named in a receipt, opened once each (closed together)."""

    def __init__(self, runtime: str | None, runtime_url: str | None) -> None:
        self.runtime = runtime
        self.runtime_url = runtime_url
        self._open: dict[AnySpec, ImageTarget] = {}

    def get(self, spec: AnySpec) -> ImageTarget:
        if spec not in self._open:
            self._open[spec] = target_from_spec(spec, self.runtime, self.runtime_url)
        return self._open[spec]

    def close(self) -> None:
        for t in self._open.values():
            t.close()
