"""A delta bundle's base at install: find it, say where each reused byte comes from, and
check the files before the preflight lets the payload in.

Where reused bytes come from (README "Delta bundles"):

* files (model, Elastic artifacts, image manifests): the installed base release — the
  receipt's release whose index sha256 is the delta's ``base.index_sha256`` — re-hashed
  here on every core against the delta's signed entries, then hardlinked into the new
  release when on the same filesystem (else copied, re-hashed again as they are copied);
  or, with ``--base-bundle``, copied out of the base bundle, verified chunk by chunk.
* image configs and layers, only for an image the engine (or registry) does not have
  already: a layer the engine holds is named in the load with no bytes and the engine
  uses its own copy (Docker's classic store: when the image's leading layers, by
  diff_id, are a base image's leading layers; Podman: any base image's layer with that
  diff_id); a registry mounts a blob its repository has. Anything else comes from the
  base bundle (each chunk verified before it is handed on), or the install is refused
  naming the image, the blob and the fix.

Every check here runs in the preflight, before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bundler.bundle.delta import BaseIndex, is_engine_blob, kept_as_files, member_offsets
from bundler.bundle.index import BLOB_PREFIX, FileEntry, ImageEntry, Index, parse_index
from bundler.bundle.reader import read_head
from bundler.errors import AirgapError, InstallError, UsageError, VerificationError
from bundler.fmt import human
from bundler.hashing import FileRange, hash_sources
from bundler.install.layout import Layout
from bundler.install.options import Check
from bundler.install.records import Receipt
from bundler.install.targets import EngineTarget, ImageTarget
from bundler.oci.engine import RuntimeInfo


@dataclass(frozen=True)
class Source:
    """Where one reused file's bytes are: a file of the installed base release, or an
    offset in the base bundle's tar stream."""

    entry: FileEntry  # the delta's signed entry: the bytes must hash to it
    path: Path | None = None
    offset: int | None = None


@dataclass
class Reuse:
    """Everything a delta install takes from its base, decided in the preflight."""

    base: BaseIndex
    where: str  # the installed release's directory, or the base bundle, in words
    files: list[Source] = field(default_factory=list)  # into the new release
    link: bool = False  # hardlink ``files`` (installed base on the same filesystem)
    blobs: list[Source] = field(default_factory=list)  # base bundle -> image target
    held: dict[str, str] = field(default_factory=dict)  # digest -> repository ("" engine)
    present: int = 0  # bytes of reused blobs of images the target has whole already
    checked: dict[Path, tuple[int, int, int, int]] = field(default_factory=dict)

    @property
    def copy_bytes(self) -> int:
        """Bytes written under the prefix for reused files (nothing when hardlinked)."""
        return 0 if self.link else sum(s.entry.size for s in self.files)

    @property
    def feed_bytes(self) -> int:
        return sum(s.entry.size for s in self.blobs)

    def summary(self) -> str:
        n = sum(s.entry.size for s in self.files)
        how = "re-hashed, hardlinked" if self.link else "copied, each chunk verified"
        out = (
            f"{self.base.release} (index {self.base.sha256[:16]}…) from {self.where}: "
            f"{len(self.files)} files ({human(n)}) {how}"
        )
        if self.present:
            out += f"; unchanged images ({human(self.present)}) already in the image store"
        if self.held:
            out += f"; {len(self.held)} image blobs already in the image store"
        if self.blobs:
            out += f"; {len(self.blobs)} image blobs ({human(self.feed_bytes)}) from the bundle"
        return out


def _missing(index: Index, prefix: Path) -> InstallError:
    assert index.base is not None
    b = index.base
    return InstallError(
        f"this delta of {index.name} v{index.version} needs its base {b.name} v{b.version} "
        f"(index sha256 {b.index_sha256}): no release installed under {prefix} has that "
        "index, and no --base-bundle was given",
        hint=f"Pass --base-bundle with the bundle of {b.name} v{b.version}, install that "
        f"bundle first, or carry the full bundle of {index.name} v{index.version}.",
    )


def find_base(
    index: Index, base_bundle: str | None, layout: Layout, receipt: Receipt
) -> tuple[BaseIndex, Path | None]:
    """The delta's base: ``--base-bundle``, else the installed release with its index.

    Returns the base and, when it is an installed release, its directory.

    Raises:
        UsageError: ``--base-bundle`` is another bundle than the base.
        InstallError: no base (names it, and the fixes).
        VerificationError: the installed base's index differs from the receipt's.
    """
    assert index.base is not None
    want = index.base.index_sha256
    if base_bundle is not None:
        if base_bundle == "-":  # standard input is the delta's, if anything's
            raise UsageError("--base-bundle needs the base bundle's file (or its .part-000)")
        head = read_head(base_bundle)
        base = BaseIndex(
            head.index,
            head.index_bytes,
            head.location.label,
            tuple(k for k, _ in head.embedded),
            head.location,
        )
        if base.sha256 != want:
            raise UsageError(
                f"--base-bundle {base_bundle} is {base.release} (index sha256 {base.sha256}); "
                f"this delta needs {index.base.name} v{index.base.version} (index sha256 {want})",
                hint="Give the bundle this delta was built against (`airgap inspect` shows "
                "a bundle's index sha256).",
            )
        return base, None
    for key, rel in receipt.releases.items():
        release_dir = layout.release(key)
        if rel.index_sha256 != want or not release_dir.is_dir():
            continue
        index_file = layout.index_file(release_dir)
        data = index_file.read_bytes() if index_file.is_file() else b""
        if hashlib.sha256(data).hexdigest() != want:
            raise VerificationError(
                f"{index_file}: the installed base release {key} has lost or changed its "
                f"signed index (the receipt says sha256 {want})",
                hint=f"Pass --base-bundle with the bundle of {key}, or install the full bundle.",
            )
        return BaseIndex(parse_index(data, bundle=str(index_file)), data, key), release_dir
    raise _missing(index, layout.prefix)


def _held(
    index: Index, base: BaseIndex, target: ImageTarget, info: RuntimeInfo | None
) -> dict[str, str]:
    """Reused image blobs the target has already: digest -> repository ("" for an engine)."""
    assert index.base is not None
    held: dict[str, str] = {}
    if isinstance(target, EngineTarget):
        if info is not None and info.containerd_store:
            return held  # its load needs every layer's bytes
        runtime = target.runtime
        chains = [c for i in base.index.images if (c := runtime.image_layers(i.config_digest))]
        ids = index.base.layers or {}
        have = {d for c in chains for d in c}
        for img in index.images:
            if runtime.kind == "podman":  # reuses any layer it has with that diff_id
                held.update({la.digest: "" for la in img.layers if ids.get(la.digest) in have})
                continue
            # Docker's classic store reuses a layer only on the same chain of layers below
            # it: the image's leading layers must be a base image's leading layers.
            prefix: list[str] = []
            for la in img.layers:
                if (diff_id := ids.get(la.digest)) is None:
                    break
                prefix.append(diff_id)
                if not any(c[: len(prefix)] == prefix for c in chains):
                    break
                held[la.digest] = ""
        return held
    reused = set(index.base.reused)
    for img in index.images:
        repo = target.name_for(img)[0]  # the base's repository too (the tag is the version)
        for digest in [img.config_digest, *(la.digest for la in img.layers)]:
            if BLOB_PREFIX + digest[7:] in reused and target.registry.has_blob(repo, digest):
                held[digest] = repo
    return held


def plan_reuse(
    index: Index,
    base: BaseIndex,
    release_dir: Path | None,
    layout: Layout,
    target: ImageTarget,
    info: RuntimeInfo | None,
) -> Reuse:
    """Where each reused file and blob comes from.

    Raises:
        InstallError: something the delta needs is neither in the base nor in the target
            (every such thing is named, with the fix).
    """
    assert index.base is not None
    where = str(release_dir) if release_dir is not None else f"--base-bundle {base.label}"
    reuse = Reuse(base, where)
    offsets = member_offsets(base) if release_dir is None else {}
    as_files = kept_as_files(base.index)
    base_paths = {f.path: f for f in base.index.files}
    to_load = {img.role: img for img in index.images if not target.present(img)}
    needed = {
        d: img
        for img in to_load.values()
        for d in (img.config_digest, *(la.digest for la in img.layers))
    }
    reuse.held = _held(index, base, target, info) if to_load else {}
    missing: list[str] = []
    for entry in index.reused:
        digest = "sha256:" + entry.path[len(BLOB_PREFIX) :]
        blob = is_engine_blob(index, entry.path)
        if blob and (digest not in needed or digest in reuse.held):
            reuse.present += entry.size if digest not in needed else 0
            continue
        same = base_paths.get(entry.path)
        name = (
            entry.path
            if same is not None and (same.sha256, same.size) == (entry.sha256, entry.size)
            else as_files.get((entry.sha256, entry.size), entry.path)
        )
        if release_dir is not None and not blob:
            reuse.files.append(Source(entry, path=release_dir / name))
        elif release_dir is None and name in offsets:
            (reuse.blobs if blob else reuse.files).append(Source(entry, offset=offsets[name]))
        else:
            missing.append(_what(entry, digest, needed.get(digest), index, release_dir is None))
    if missing:
        b = index.base
        source = f"--base-bundle {base.label}" if release_dir is None else "its base"
        raise InstallError(
            f"this delta reuses what {source} does not give: {'; '.join(missing)}",
            hint=f"Pass --base-bundle with the full bundle of {b.name} v{b.version} (its "
            f"bytes are verified and used), or carry the full bundle of {index.name} "
            f"v{index.version}.",
        )
    if release_dir is not None:
        reuse.link = os.stat(release_dir).st_dev == os.stat(layout.releases).st_dev
    return reuse


def _what(entry: FileEntry, digest: str, img: ImageEntry | None, index: Index, bundle: bool) -> str:
    if img is None:
        return f"{entry.path} (not carried in the base bundle, itself a delta)"
    where = "the base bundle does not carry it" if bundle else "the image store lacks it (pruned?)"
    if digest == img.config_digest:  # the image itself is gone (its ID is this digest)
        return f"image {img.role}: its config {digest}: {where}"
    ids = index.base.layers if index.base else None
    diff = f", diff_id {ids[digest]}" if ids and digest in ids else ""
    return f"image {img.role}: layer {digest}{diff}: {where}"


def check_files(reuse: Reuse, chunk_size: int) -> None:
    """Hash every reused file of the installed base release (all cores) against the
    delta's signed entry; remember what was hashed so the link can prove it is the same.

    Raises:
        VerificationError: a file is missing, not a regular file reached without links,
            or its bytes differ (each names the path).
    """
    todo = [s for s in reuse.files if s.path is not None]
    root = Path(os.path.realpath(reuse.where))
    for s in todo:
        assert s.path is not None
        st = os.lstat(s.path) if os.path.lexists(s.path) else None
        real = os.path.realpath(s.path)
        if (
            st is None
            or not stat.S_ISREG(st.st_mode)
            or real != str(root / s.path.relative_to(reuse.where))
        ):
            raise _rotted(s, reuse, "is missing, or not a regular file reached without links")
        if st.st_size != s.entry.size:
            raise _rotted(s, reuse, f"is {st.st_size} bytes, not the signed {s.entry.size}")
        reuse.checked[s.path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    ranges = [FileRange(s.path, 0, s.entry.size) for s in todo if s.path is not None]
    try:
        digests = hash_sources(ranges, chunk_size)
    except (OSError, EOFError) as e:
        raise _rotted(todo[0], reuse, f"cannot be read: {e}") from e
    for s, d in zip(todo, digests, strict=True):
        assert s.path is not None
        if d.sha256 != s.entry.sha256 or list(d.chunks) != s.entry.chunks:
            raise _rotted(s, reuse, f"differs from the signed sha256 {s.entry.sha256}")


def _rotted(s: Source, reuse: Reuse, why: str) -> VerificationError:
    b = reuse.base
    return VerificationError(
        f"{s.path}: {why} of {s.entry.path} (the installed base release {b.label} is "
        "damaged; nothing was changed)",
        hint=f"Pass --base-bundle with the bundle of {b.release} (the delta then takes its "
        "bytes from there), or install the full bundle.",
    )


def base_preflight(
    index: Index,
    base_bundle: str | None,
    layout: Layout,
    receipt: Receipt,
    target: ImageTarget,
    info: RuntimeInfo | None,
) -> tuple[tuple[Check, ...], dict[str, AirgapError], Reuse | None]:
    """The preflight's "base" row for a delta: found, planned and checked, or the error."""
    try:
        base, release_dir = find_base(index, base_bundle, layout, receipt)
        reuse = plan_reuse(index, base, release_dir, layout, target, info)
        check_files(reuse, index.chunk_size)
    except AirgapError as e:
        return (Check("base", False, e.message),), {"base": e}, None
    return (Check("base", True, reuse.summary()),), {}, reuse
