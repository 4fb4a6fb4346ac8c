"""``airgap install``: verify and unpack a bundle in one pass, load its images, switch release.

The run, in order: open the image target → :func:`~bundler.install.sink.recover` what a
killed run left → read the bundle, with the preflight (:mod:`.preflight`) between the
signature checks and the payload → activate the new release, or reuse the installed one
when the preflight decided so → the Elastic steps (:mod:`.elastic.steps`).

Nothing is switched in until every byte verified and every image's ID equals its
signed config digest. Image layers go from the bundle straight into the engine's
``load`` (no copy on our disk), and only after their chunk matched its signed hash.
The paths are :mod:`.layout`'s; the receipt's records are :mod:`.records`'.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bundler import faults
from bundler.bundle.index import Index
from bundler.bundle.policy import TrustPolicy, VerifyResult
from bundler.bundle.reader import read_bundle
from bundler.install.elastic import steps as elastic_steps
from bundler.install.elastic.wiring import Plan
from bundler.install.k8s_target import KubernetesTarget, after_deploy, deploy
from bundler.install.layout import Layout
from bundler.install.licence import license_acceptance
from bundler.install.options import Check, InstallOptions, InstallResult, InstallStatus
from bundler.install.preflight import Decision, decide, evaluate, gather
from bundler.install.records import (
    ImageRecord,
    KubernetesRecord,
    Release,
    ServeOptions,
    ServeRecord,
)
from bundler.install.serve import Server, serve_release
from bundler.install.sink import InstallSink, recover, release_key
from bundler.install.state import InstallLock, ReceiptFile, VersionRegistry
from bundler.install.targets import EngineTarget, ImageTarget, RegistryTarget
from bundler.k8s.options import check_output_dir
from bundler.oci.engine import Runtime, RuntimeInfo
from bundler.oci.registry import Registry

_STATUS: dict[Decision, InstallStatus] = {
    Decision.PROCEED: "installed",
    Decision.DRY_RUN: "dry-run",
    Decision.UNCHANGED: "unchanged",
    Decision.REACTIVATE: "reactivated",
}


def open_target(opts: InstallOptions) -> ImageTarget:
    """The engine or registry this run puts images into."""
    if opts.kubernetes is not None:
        assert opts.registry is not None
        check_output_dir(Path(opts.kubernetes.output))  # before anything is pushed
        return KubernetesTarget(
            Registry(opts.registry, insecure=opts.registry_insecure, ca=opts.registry_ca),
            opts.kubernetes,
            replace_tags=opts.replace_tags,
        )
    if opts.registry:
        return RegistryTarget(
            Registry(opts.registry, insecure=opts.registry_insecure, ca=opts.registry_ca),
            replace_tags=opts.replace_tags,
        )
    return EngineTarget(
        Runtime(opts.runtime, opts.runtime_url),
        replace_tags=opts.replace_tags,
        source_refs=opts.tag_source_refs,
    )


@dataclass
class InstallRun:
    """One install under the lock: what every step of it shares."""

    opts: InstallOptions
    layout: Layout
    store: ReceiptFile
    target: ImageTarget
    started: float
    checks: list[Check] = field(default_factory=list)
    plan: Plan | None = None  # the Elastic wiring the preflight chose

    def _serve(
        self, key: str, name: str, images: list[ImageRecord]
    ) -> tuple[ServeRecord | None, KubernetesRecord | None]:
        """Serve ``key`` when this run serves (an engine target and serve options); for
        Kubernetes, write the base instead (a release with only the records set)."""
        if isinstance(self.target, KubernetesTarget):
            serve = self.opts.serve or ServeOptions()
            k8s, served = deploy(self.target, self.layout, key, images, serve, self.opts.no_gpu)
            return served, k8s
        if self.opts.serve is None or not isinstance(self.target, EngineTarget):
            return None, None
        server = Server(self.target.runtime, self.layout, name)
        served = serve_release(
            server, self.layout.release(key), key, self.opts.serve, self.opts.no_gpu
        )
        return served, None

    def activate(
        self, vr: VerifyResult, sink: InstallSink, versions: VersionRegistry
    ) -> InstallResult:
        """Move the verified staging dir into place, serve, switch ``current``, record."""
        index = vr.index
        key = release_key(index)
        assert sink.staging is not None
        release_dir = self.layout.release(key)
        loaded = {img.config_digest for img in sink.to_load}
        images = [sink.target.record(img, img.config_digest in loaded) for img in index.images]
        if isinstance(sink.target, KubernetesTarget):
            images.append(sink.target.model_record())
        serve_record = None
        try:
            # same name and version, left without a receipt entry
            self.layout.remove_release_dir(key)
            os.replace(sink.staging, release_dir)
            serve_record, k8s_record = self._serve(key, index.name, images)
            self.layout.switch_current(key)
            release = Release(
                name=index.name,
                version=index.version,
                index_sha256=vr.index_sha256,
                signers=list(vr.signers),
                installed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                path=str(release_dir),
                target=sink.target.spec(),
                images=images,
            )
            if serve_record is not None:  # a release not served has no serve key at all
                release = release.model_copy(update={"serve": serve_record})
            if (acceptance := license_acceptance(index, self.opts)) is not None:
                release = release.model_copy(update={"license_acceptance": acceptance})
            if index.base is not None:  # a delta: the release it was built on
                release = release.model_copy(update={"base": index.base.index_sha256})
            if k8s_record is not None:
                release = release.model_copy(update={"kubernetes": k8s_record})
            receipt = self.store.receipt.with_release(key, release).activated(key)
            self.store.save(receipt.with_pending(None))
            versions.record(index.name, index.version)
        except BaseException:
            sink.remove_loaded()
            shutil.rmtree(sink.staging, ignore_errors=True)
            kept = self.store.receipt.releases.get(key)
            if kept is None or kept.index_sha256 != vr.index_sha256:
                shutil.rmtree(release_dir, ignore_errors=True)  # this run's, never activated
            if not sink.leftovers and self.store.receipt.pending is not None:
                with contextlib.suppress(OSError):  # all undone; the error that matters is e
                    self.store.save(self.store.receipt.with_pending(None))
            raise
        return InstallResult(
            status="installed",
            name=index.name,
            version=index.version,
            release=release_dir,
            index_sha256=vr.index_sha256,
            checks=self.checks,
            images=list(images),
            bytes_read=vr.bytes_read,
            seconds=time.monotonic() - self.started,
            serving=serve_record,
        )

    def reuse(self, index: Index, decision: Decision) -> InstallResult:
        """The preflight ended the pass: a dry run, or the release is installed already."""
        key = release_key(index)
        receipt = self.store.receipt
        known = receipt.releases.get(key)
        if known is not None and decision is not Decision.DRY_RUN:
            # Same bundle again: leave a healthy service alone, unless asked to rotate the
            # token, or the containers are gone (then start them again).
            serve = self.opts.serve
            if isinstance(self.target, KubernetesTarget):  # the base, with today's options
                served, k8s = self._serve(key, index.name, list(known.images))
                update = {"kubernetes": k8s, **({"serve": served} if served else {})}
                known = known.model_copy(update=update)
                receipt = receipt.with_release(key, known)
            elif serve is not None and isinstance(self.target, EngineTarget):
                server = Server(self.target.runtime, self.layout, index.name)
                serving = known.serve.containers if known.serve else {}
                running = server.running(serving) if serving else {}
                if (
                    decision is Decision.REACTIVATE
                    or serve.rotate_token
                    or not running
                    or not all(running.values())
                ):
                    served = serve_release(
                        server, self.layout.release(key), key, serve, self.opts.no_gpu
                    )
                    known = known.model_copy(update={"serve": served})
                    receipt = receipt.with_release(key, known)
        if decision is Decision.REACTIVATE:
            self.layout.switch_current(key)
            receipt = receipt.activated(key)
        if decision is not Decision.DRY_RUN:
            self.store.save(receipt)
        return InstallResult(
            status=_STATUS[decision],
            name=index.name,
            version=index.version,
            release=self.layout.release(key),
            index_sha256=known.index_sha256 if known else "",
            checks=self.checks,
            images=list(known.images) if known else [],
            seconds=time.monotonic() - self.started,
            serving=known.serve if known else None,
        )


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
        ElasticStepError: installed and serving, but an Elastic step failed.
    """
    layout = Layout(opts.prefix)
    layout.verify(create=True)  # before anything is written there, the lock included
    with InstallLock(layout.prefix):
        store = ReceiptFile.load(layout.state)
        versions = VersionRegistry(layout.state)
        target = open_target(opts)
        run = InstallRun(opts, layout, store, target, time.monotonic())
        try:
            info: RuntimeInfo | None = None
            if isinstance(target, EngineTarget):
                info = target.runtime.info()
                where = f"{info.kind} {info.version} at {info.url}"
            else:
                where = f"registry {target.registry.host} ({target.registry.ping()})"
                if isinstance(target, KubernetesTarget):
                    where += f", then a kustomize base into {target.k8s.output}"
            for line in recover(layout, store, target):
                if notes:
                    notes(line)
            sink = InstallSink(layout, store, target)
            decided: list[Decision] = []

            def preflight(vr: VerifyResult) -> bool:
                installed = versions.installed(vr.index.name)
                facts = gather(vr, opts, layout, store.receipt, installed, target, info, where)
                run.checks.extend(evaluate(facts, opts))
                run.plan = facts.elastic_plan
                sink.reuse = facts.reuse
                if on_preflight:
                    on_preflight(list(run.checks))
                decided.append(decide(facts, run.checks, opts))
                faults.point("install.preflight-done")
                return decided[-1] is not Decision.PROCEED  # True: end before the payload

            policy = TrustPolicy(opts.trusted, opts.threshold, before_payload=preflight)
            try:
                vr = read_bundle(
                    opts.bundle,
                    policy,
                    sink,
                    detached=list(opts.detached),
                    progress=progress,
                    stall_timeout=opts.stall_timeout,
                    start_timeout=opts.start_timeout,
                )
            except BaseException:
                if not sink.leftovers:  # undone: nothing for the next run to recover
                    store.receipt = store.receipt.with_pending(None)
                    if store.exists or store.receipt.releases:
                        store.save()
                raise
            if vr.ended_early:
                result = run.reuse(vr.index, decided[-1])
            else:
                result = run.activate(vr, sink, versions)
            if result.status != "dry-run" and isinstance(target, KubernetesTarget):
                after_deploy(result, layout, store, target.k8s, opts.serve)
            faults.point("install.served")  # serving and recorded; the Elastic steps next
            if result.status != "dry-run":
                elastic_steps.run(result, layout, store, opts, run.plan)
            return result
        finally:
            target.close()
