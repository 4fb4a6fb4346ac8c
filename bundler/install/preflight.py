"""Preflight: gather the facts about this host, turn them into the checks table, decide.

Three steps, so that the judgement is testable without an engine:

* :func:`gather` asks the host (disk, engine, GPU, ports, tags, Kibana/Elasticsearch,
  the receipt and the version registry) and returns :class:`Facts`;
* :func:`evaluate` turns facts into the table the operator sees (pure);
* :func:`decide` refuses when a row failed, else returns the :class:`Decision`:
  proceed with the payload, or end before it (dry run, unchanged, reactivate).

The signed names are checked (``check_signed_names``) before anything else is asked.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bundler.bundle.index import BLOB_PREFIX, Index
from bundler.bundle.policy import VerifyResult
from bundler.errors import (
    AirgapError,
    InstallError,
    LicenseError,
    RollbackError,
    VerificationError,
)
from bundler.fmt import human
from bundler.fsutil import free_space
from bundler.install.contents import check_signed_names
from bundler.install.elastic.checks import elastic_preflight
from bundler.install.elastic.wiring import Plan
from bundler.install.fit import gpu_preflight
from bundler.install.k8s_manage import k8s_rows
from bundler.install.layout import Layout
from bundler.install.licence import license_check
from bundler.install.options import Check, InstallOptions
from bundler.install.records import Receipt, Release
from bundler.install.reuse import Reuse, base_preflight
from bundler.install.sink import release_key
from bundler.install.targets import EngineTarget, ImageTarget
from bundler.oci.engine import RuntimeInfo

PortState = Literal["ours", "free", "busy"]


class Decision(enum.Enum):
    """What the run does once the preflight passed."""

    PROCEED = "proceed"  # read the payload and install it
    DRY_RUN = "dry-run"  # end here, nothing changed
    UNCHANGED = "unchanged"  # the same release is installed and current
    REACTIVATE = "reactivate"  # the same release is installed: make it current again


@dataclass(frozen=True)
class Facts:
    """What preflight found; everything :func:`evaluate` and :func:`decide` need."""

    name: str
    version: int
    index_sha256: str
    signers: tuple[str, ...]
    expires: str
    installed: int | None  # the highest version of ``name`` installed here
    known: Release | None  # the receipt's record of this name and version
    reusable: bool  # ``known`` is on disk, in the same target, every image there
    is_current: bool
    where: str  # the image target, in words
    tags_taken: tuple[str, ...]  # wanted tags that name other images now
    tag_names: tuple[str, ...]  # what the images will be called
    files_bytes: int
    image_bytes: int
    free: int
    prefix: Path
    engine_free: int | None  # None: not known (or images go to a registry)
    root_dir: str | None
    gpu: bool | None  # None: images go to a registry
    gpu_detail: str
    ports: dict[int, PortState] = field(default_factory=dict)
    elastic: tuple[Check, ...] = ()
    elastic_errors: dict[str, AirgapError] = field(default_factory=dict)
    elastic_plan: Plan | None = None  # how the model is wired into Elastic (None: not at all)
    gpus: tuple[Check, ...] = ()  # serving with GPUs: nvidia-smi, driver, fit (install/fit.py)
    gpu_errors: dict[str, AirgapError] = field(default_factory=dict)
    index: Index | None = None  # the signed index (its model licence is shown and checked)
    base: tuple[Check, ...] = ()  # a delta: its base found and checked (install/reuse.py)
    base_errors: dict[str, AirgapError] = field(default_factory=dict)
    reuse: Reuse | None = None
    kubernetes: tuple[Check, ...] = ()  # the version, the model's form and volume, warnings


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _our_ports(receipt: Receipt, target: ImageTarget) -> set[int]:
    """Ports held by airgap's own containers (any release whose containers still exist):
    the new start replaces those containers, so their ports count as free."""
    ours: set[int] = set()
    if not isinstance(target, EngineTarget):
        return ours
    for rel in receipt.releases.values():
        if rel.serve is None:
            continue
        if any(target.runtime.container_exists(c.id) for c in rel.serve.containers.values()):
            ours.update(rel.serve.ports())
    return ours


def wanted_ports(opts: InstallOptions, has_elastic: bool, will_serve: bool) -> list[int]:
    """The host ports this run will bind."""
    ports = list(opts.ports)
    if opts.serve is not None and will_serve:
        if opts.serve.artifacts_port and has_elastic:
            ports.append(opts.serve.artifacts_port)  # only needed when there is something
        if opts.serve.network == "host":
            ports.append(opts.serve.internal_port)  # vLLM binds it on the host
    return list(dict.fromkeys(ports))


def gather(
    vr: VerifyResult,
    opts: InstallOptions,
    layout: Layout,
    receipt: Receipt,
    installed: int | None,
    target: ImageTarget,
    info: RuntimeInfo | None,
    where: str,
) -> Facts:
    """Ask the host what :func:`evaluate` needs.

    Raises:
        BundleError: a signed name cannot be used safely (checked first).
    """
    index = vr.index
    key = release_key(index)
    # Names become paths, mounts, containers and tags: refused before use.
    check_signed_names(index, bundle=opts.bundle)
    target.bind(index)
    known = receipt.releases.get(key)
    reusable = bool(
        known
        and layout.release(key).is_dir()
        and known.target == target.spec()
        and all(target.exists(i) for i in known.images)
    )
    base: tuple[tuple[Check, ...], dict[str, AirgapError], Reuse | None] = ((), {}, None)
    if index.base is not None and not reusable:
        base = base_preflight(index, opts.base_bundle, layout, receipt, target, info)
    reuse = base[2]
    carried = index.carried  # a delta: plus what it copies from its base
    k8s = opts.kubernetes
    # Kubernetes: the model goes to the registry as it streams, never onto this disk
    model = ("models/",) if k8s is not None else ()
    files = sum(f.size for f in carried if not f.path.startswith((BLOB_PREFIX, *model)))
    files += reuse.copy_bytes if reuse else 0
    blobs = sum(f.size for f in carried if f.path.startswith(BLOB_PREFIX))
    blobs += reuse.feed_bytes if reuse else 0
    engine = isinstance(target, EngineTarget)
    will_serve = (opts.serve is not None and engine) or bool(k8s and k8s.public_url)
    ours = _our_ports(receipt, target)
    has_elastic = any(f.path.startswith("elastic/") for f in index.files)
    ports: dict[int, PortState] = {}
    for port in wanted_ports(opts, has_elastic, will_serve and engine):
        ports[port] = "ours" if port in ours else ("free" if _port_free(port) else "busy")
    errors: dict[str, AirgapError] = {}
    elastic, plan = elastic_preflight(opts, index, errors, will_serve)
    gpu_errors: dict[str, AirgapError] = {}
    on_gpus = opts.serve is not None and opts.serve.gpus != "none" and not opts.no_gpu
    gpus = (
        tuple(gpu_preflight(index, opts, info, gpu_errors))
        if will_serve and on_gpus and info is not None
        else ()
    )
    return Facts(
        name=index.name,
        version=index.version,
        index_sha256=vr.index_sha256,
        signers=tuple(vr.signers),
        expires=index.expires,
        installed=installed,
        known=known,
        reusable=reusable,
        is_current=receipt.current == key,
        where=where,
        tags_taken=tuple(c for img in index.images for c in target.conflicts(img)),
        tag_names=tuple(t for img in index.images for t in target.names(img)),
        files_bytes=files,
        image_bytes=blobs,
        free=free_space(layout.prefix),
        prefix=layout.prefix,
        engine_free=target.runtime.free_bytes(info.root_dir)
        if isinstance(target, EngineTarget) and info
        else None,
        root_dir=info.root_dir if info else None,
        gpu=info.gpu if engine and info else None,
        gpu_detail=info.gpu_detail if info else "",
        ports=ports,
        elastic=tuple(elastic),
        elastic_errors=errors,
        elastic_plan=plan,
        gpus=gpus,
        gpu_errors=gpu_errors,
        index=index,
        base=base[0],
        base_errors=base[1],
        reuse=reuse,
        kubernetes=tuple(k8s_rows(opts)),
    )


def evaluate(f: Facts, opts: InstallOptions) -> list[Check]:
    """The preflight table, in the order the operator reads it."""
    checks = [
        Check(
            "signatures",
            True,
            f"{len(f.signers)} trusted (need {opts.threshold}): "
            + ", ".join(k[:16] for k in f.signers),
        ),
        Check("expiry", True, f"valid until {f.expires}"),
    ]
    key = f"{f.name}-{f.version}"
    if f.known and f.known.index_sha256 != f.index_sha256:
        checks.append(Check("version", False, f"{key} is installed with other content"))
    elif f.installed is not None and f.version < f.installed and not opts.allow_downgrade:
        checks.append(
            Check(
                "version",
                False,
                f"v{f.version} is older than installed v{f.installed} (--allow-downgrade)",
            )
        )
    else:
        was = f"installed: v{f.installed}" if f.installed is not None else "first install"
        checks.append(Check("version", True, f"v{f.version} ({was})"))
    checks.extend(f.base)
    checks.append(Check("images to", True, f.where))
    checks.append(license_check(f.index, opts))
    if f.tags_taken and not opts.replace_tags:
        detail = "already name other images: " + "; ".join(f.tags_taken) + " (--replace-tags)"
        checks.append(Check("tags", False, detail))
    else:
        moved = f"; moving {'; '.join(f.tags_taken)}" if f.tags_taken else ""
        checks.append(Check("tags", None if f.tags_taken else True, ", ".join(f.tag_names) + moved))
    checks.append(
        Check(
            "disk",
            f.free >= f.files_bytes,
            f"{human(f.files_bytes)} needed under {f.prefix}, {human(f.free)} free",
        )
    )
    if f.engine_free is not None:
        checks.append(
            Check(
                "image storage",
                f.engine_free >= f.image_bytes,
                f"{human(f.image_bytes)} of images, {human(f.engine_free)} free in {f.root_dir}",
            )
        )
    if opts.no_gpu:
        checks.append(Check("gpu", None, "skipped (--no-gpu)"))
    elif f.gpu is None:
        where = "the cluster's GPU nodes" if opts.kubernetes else "a registry"
        checks.append(Check("gpu", None, f"not checked: images go to {where}"))
    elif f.gpus:
        checks.extend(f.gpus)
    else:
        hint = "" if f.gpu else "; use --no-gpu for CPU images"
        checks.append(Check("gpu", True if f.gpu else None, f.gpu_detail + hint))
    for port, state in f.ports.items():
        if state == "ours":
            detail = (
                "served by airgap's current release (replaced only after the new one "
                "proves healthy)"
            )
            checks.append(Check(f"port {port}", True, detail))
        else:
            checks.append(
                Check(f"port {port}", state == "free", "free" if state == "free" else "in use")
            )
    checks.extend(f.kubernetes)
    checks.extend(f.elastic)
    return checks


def decide(f: Facts, checks: list[Check], opts: InstallOptions) -> Decision:
    """What to do, once every check passed.

    Raises:
        RollbackError: the bundle is older than the installed version.
        VerificationError: the same name and version is installed with other content.
        InstallError (or the Elastic check's own error): a check failed.
    """
    failed = [c for c in checks if c.ok is False]
    if failed and failed[0].name in f.elastic_errors:
        raise f.elastic_errors[failed[0].name]
    if failed and failed[0].name in f.gpu_errors:
        raise f.gpu_errors[failed[0].name]
    if failed and failed[0].name == "licence":
        raise LicenseError(
            f"bundle {f.name} v{f.version}: the model's licence {failed[0].detail}",
            hint="Read the model's licence (the model card and LICENSE files in the bundle, "
            "`airgap sbom`); if your organisation accepts it, run the install again with "
            "--accept-license <licence id>.",
        )
    if failed and failed[0].name in f.base_errors:
        raise f.base_errors[failed[0].name]
    if failed:
        if failed[0].name == "version" and "older" in failed[0].detail:
            raise RollbackError(f"bundle {f.name} {failed[0].detail}")
        if f.known is not None and f.known.index_sha256 != f.index_sha256:
            # A version names one content for good: receipts, tags and rollback rely on it.
            raise VerificationError(
                f"bundle {f.name} v{f.version} is installed with other content: installed "
                f"index sha256 {f.known.index_sha256}, this bundle's {f.index_sha256}",
                hint=f"Build the new content as a higher version (`version:` in the manifest), "
                f"or `airgap uninstall --prefix {f.prefix}` first.",
            )
        raise InstallError(
            "preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
            hint="Fix what the preflight table marks as failed, then run again.",
        )
    if opts.dry_run:
        return Decision.DRY_RUN
    if f.reusable:
        return Decision.UNCHANGED if f.is_current else Decision.REACTIVATE
    return Decision.PROCEED
