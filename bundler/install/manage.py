"""After install: ``status`` (the receipt against what is really there), ``rollback`` (the
release active before, served as it was served) and ``uninstall`` (exactly what the
receipt says airgap created, and nothing else)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path

import requests

from bundler import faults
from bundler.bundle.index import BLOB_PREFIX, parse_index
from bundler.errors import AirgapError, InstallError
from bundler.hashing import FileRange, hash_sources
from bundler.install.elastic import kb, llm
from bundler.install.elastic.steps import ElasticAccess, connector_note, undo
from bundler.install.elastic.truststore_state import check_nodes
from bundler.install.k8s_manage import cluster_status, rollback_to, uninstall_cluster
from bundler.install.layout import Layout
from bundler.install.records import Receipt, RegistrySpec, ServeRecord
from bundler.install.report import ImageStatus, ReleaseStatus, ServingProbe, StatusReport
from bundler.install.serve import Server, serve_release
from bundler.install.sink import recover
from bundler.install.state import InstallLock, ReceiptFile
from bundler.install.targets import EngineTarget, TargetPool, target_from_spec
from bundler.oci.engine import recover_containers


def _no_receipt(prefix: Path, hint: str) -> InstallError:
    return InstallError(f"{prefix}: nothing installed here (no receipt)", hint=hint)


def status(
    prefix: Path,
    runtime_kind: str = "docker",
    runtime_url: str | None = None,
    *,
    deep: bool = False,
    access: ElasticAccess | None = None,
    check_cluster: bool = False,
) -> StatusReport:
    """The receipt, checked against what is really there (files, images; with
    credentials in ``access``, the current release's Kibana and Elasticsearch objects).

    Raises:
        InstallError: no receipt under ``prefix``, or the engine is unreachable.
    """
    layout = Layout(prefix)
    if not layout.verify():
        raise _no_receipt(prefix, "Check --prefix, or run `airgap install` first.")
    store = ReceiptFile.load(layout.state)
    if not store.exists:
        raise _no_receipt(prefix, "Check --prefix, or run `airgap install` first.")
    receipt = store.receipt
    targets = TargetPool(runtime_kind, runtime_url)
    ok = True
    rows: list[ReleaseStatus] = []
    try:
        for key, rel in receipt.releases.items():
            path = layout.release(key)
            index_file = layout.index_file(path)
            index_ok = (
                index_file.is_file()
                and hashlib.sha256(index_file.read_bytes()).hexdigest() == rel.index_sha256
            )
            files_ok = None
            if deep and index_ok:
                files_ok = _deep_check(path, index_file, models=rel.kubernetes is None)
            target = targets.get(rel.target)
            images = [ImageStatus(img, target.exists(img)) for img in rel.images]
            serving = None
            if rel.serve and key == receipt.current and isinstance(target, EngineTarget):
                serving = _probe(Server(target.runtime, layout, rel.name), rel.serve)
            live = None
            if key == receipt.current and rel.elastic and access is not None:
                live = {**llm.live(rel.elastic, access), **kb.live(rel.elastic, access)}
            cluster = None
            if key == receipt.current and rel.kubernetes is not None:
                cluster = cluster_status(rel, check_cluster)
            row = ReleaseStatus(
                release=key,
                version=rel.version,
                active=key == receipt.current,
                path=path,
                index_ok=index_ok,
                files_ok=files_ok,
                images=images,
                serving=serving,
                elastic=rel.elastic,
                elastic_live=live,
                installed_at=rel.installed_at,
                base_chain=base_chain(receipt, key),
                cluster=cluster,
            )
            if key == receipt.current:
                ok = ok and row.healthy
            rows.append(row)
    finally:
        targets.close()
    current_link = layout.current.resolve() if layout.current.is_symlink() else None
    if receipt.current and current_link != layout.release(receipt.current).resolve():
        ok = False
    trust = check_nodes(layout.prefix)  # a store older than its node's cacerts is a fault
    ok = ok and all(t["ok"] for t in trust) and receipt.current is not None
    return StatusReport(layout.prefix, receipt.current, ok, rows, trust)


def base_chain(receipt: Receipt, key: str) -> tuple[str, ...]:
    """The releases ``key`` was built on as a delta, nearest first (a base not installed
    here is named by its index sha256)."""
    by_index = {rel.index_sha256: k for k, rel in receipt.releases.items()}
    chain: list[str] = []
    base = receipt.releases[key].base
    while base is not None and len(chain) < len(receipt.releases):
        found = by_index.get(base)
        if found is None:
            chain.append(f"index {base}")
            break
        chain.append(found)
        base = receipt.releases[found].base
    return tuple(chain)


def _probe(server: Server, serve: ServeRecord) -> ServingProbe:
    """Are the containers running, and does /health answer through nginx over TLS?"""
    running = server.running(serve.containers)
    health: int | str | None = None
    try:
        r = requests.get(f"https://127.0.0.1:{serve.port}/health", timeout=5, verify=serve.ca_cert)
        health = r.status_code
    except requests.RequestException as e:
        health = str(e)[:120]
    return ServingProbe(serve.url, serve.ca_cert, running, health)


def _deep_check(path: Path, index_file: Path, *, models: bool = True) -> bool:
    """Re-hash the release's files (a Kubernetes release keeps no model: it is in the
    registry, checked by digest)."""
    index = parse_index(index_file.read_bytes())
    files = [
        f
        for f in index.files
        if (not f.path.startswith(BLOB_PREFIX) or (path / f.path).exists())
        and (models or not f.path.startswith("models/"))
    ]
    sources = [FileRange(path / f.path, 0, f.size) for f in files]
    try:
        digests = hash_sources(sources, index.chunk_size)
    except (OSError, EOFError):
        return False
    return all(d.sha256 == f.sha256 for d, f in zip(digests, files, strict=True))


def uninstall(
    prefix: Path,
    runtime_kind: str = "docker",
    runtime_url: str | None = None,
    access: ElasticAccess | None = None,
    check_cluster: bool = False,
) -> list[str]:
    """Remove exactly what the receipt says this tool created: the Kibana connector and
    ELSER endpoint, containers, images, releases, secrets, state; for Kubernetes, the
    objects of the base (with ``check_cluster``: ``--apply``), else the delete to run.

    Raises:
        InstallError: no receipt under ``prefix``; or Kibana/Elasticsearch objects to
            delete without credentials (then nothing is removed).
    """
    layout = Layout(prefix)
    removed: list[str] = []
    if not layout.verify():
        raise _no_receipt(prefix, "Check --prefix.")
    with InstallLock(layout.prefix):
        store = ReceiptFile.load(layout.state)
        if not store.exists:
            raise _no_receipt(prefix, "Check --prefix.")
        removed += undo(store.receipt, access or ElasticAccess())
        # the cluster first: its pods are what uses the registry's images
        removed += uninstall_cluster(list(store.receipt.releases.values()), check_cluster)
        targets = TargetPool(runtime_kind, runtime_url)
        try:
            pending = store.receipt.pending
            recover(layout, store, targets.get(pending.target) if pending else None)
            releases = store.receipt.releases
            for rel in releases.values():
                target = targets.get(rel.target)
                if rel.serve and rel.serve.containers and isinstance(target, EngineTarget):
                    removed += Server(target.runtime, layout, rel.name).remove(rel.serve.containers)
            # and any a killed serving start left behind (not on record)
            for spec in {rel.target for rel in releases.values()}:
                target = targets.get(spec)
                if isinstance(target, EngineTarget):
                    owner = str(layout.prefix.resolve())
                    removed += recover_containers(target.runtime, owner, set())
            faults.point("uninstall.containers-removed")
            # First every release's own tags, then the images install loaded (an image
            # two releases share is removed once neither tag names it).
            for created in (False, True):
                done: set[str] = set()
                for rel in releases.values():
                    target = targets.get(rel.target)
                    for img in rel.images:
                        if created and (not img.created_by_us or img.id in done):
                            continue
                        done.add(img.id)
                        record = img.model_copy(
                            update={"tags": []} if created else {"created_by_us": False}
                        )
                        try:
                            if target.remove(record):
                                removed.append(f"image {img.ref} ({img.id})")
                        except AirgapError as e:  # e.g. in use by another install's container
                            removed.append(f"kept image {img.ref} ({img.id}): {e.message}")
        finally:
            targets.close()
        faults.point("uninstall.images-removed")
        layout.switch_current(None)
        for key in list(releases):
            shutil.rmtree(layout.release(key), ignore_errors=True)
            removed.append(f"release {key}")
            faults.point("uninstall.release-removed")
        for d, what in (
            (layout.secrets, "tokens, TLS keys"),
            (layout.serve, "nginx configuration"),
            (layout.es_truststore_script.parent, "es-truststore.sh"),
        ):
            if d.exists():
                shutil.rmtree(d)
                removed.append(f"{d.name}/ ({what})")
        for p in (layout.receipt_file, layout.versions_file, layout.es_truststores):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        for d in (layout.state, layout.releases):
            with contextlib.suppress(OSError):
                d.rmdir()
    with contextlib.suppress(OSError):
        layout.lock_file.unlink()
        layout.prefix.rmdir()
    return removed


def rollback(
    prefix: Path, runtime_url: str | None = None, *, apply: bool = False
) -> tuple[str, list[str]]:
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
    if not layout.verify():
        raise _no_receipt(prefix, "Check --prefix.")
    with InstallLock(layout.prefix):
        store = ReceiptFile.load(layout.state)
        current = store.receipt.current
        # first undo what a killed install or rollback left (containers, staging, images)
        spec = store.receipt.pending.target if store.receipt.pending else None
        if spec is None and current in store.receipt.releases:
            spec = store.receipt.releases[current].target
        pool = TargetPool(None, runtime_url)
        try:
            notes += recover(layout, store, pool.get(spec) if spec else None)
        finally:
            pool.close()
        receipt = store.receipt
        history = [k for k in receipt.history if k in receipt.releases]
        earlier = [k for k in reversed(history) if k != current and layout.release(k).is_dir()]
        if not earlier:
            raise InstallError(
                f"{prefix}: no earlier release to roll back to",
                hint="`airgap status` lists the releases on this host.",
            )
        key = earlier[0]
        rel = receipt.releases[key]
        now = receipt.releases.get(current or "")
        if rel.kubernetes is not None:
            timeout = rel.serve.options.health_timeout if rel.serve and rel.serve.options else 900
            notes += rollback_to(rel, now, apply, timeout)
        elif current and now and now.serve and now.serve.containers:
            if rel.name != now.name:
                raise InstallError(
                    f"{key} is another bundle than the current {current}; rollback stays "
                    "within one bundle name",
                    hint=f"Install {key}'s bundle again to serve it.",
                )
            if not rel.serve:
                raise InstallError(
                    f"{key} was installed without serving (--no-serve or --registry), so "
                    f"there is nothing to switch {current}'s containers back to",
                    hint=f"Install {key}'s bundle again with --allow-downgrade to serve it.",
                )
            if not rel.serve.options:
                raise InstallError(
                    f"{key} was served by an older airgap that did not record how",
                    hint=f"Install {key}'s bundle again with --allow-downgrade to serve it.",
                )
            if isinstance(rel.target, RegistrySpec):
                raise InstallError(f"{key}'s images are in a registry; nothing to serve here")
            serve, no_gpu = rel.serve.options.split()
            if serve.tls_cert and not serve.tls_cert.is_file():
                raise InstallError(
                    f"{key} was served with --tls-cert {serve.tls_cert}, which is gone",
                    hint=f"Install {key}'s bundle again with --allow-downgrade and the "
                    "certificate to use now.",
                )
            target = target_from_spec(rel.target, runtime_url=runtime_url)
            try:
                assert isinstance(target, EngineTarget)
                server = Server(target.runtime, layout, rel.name)
                served = serve_release(server, layout.release(key), key, serve, no_gpu)
            finally:
                target.close()
            faults.point("rollback.served")  # the earlier release serves; nothing recorded yet
            receipt = receipt.with_release(key, rel.model_copy(update={"serve": served}))
            # the current release's containers were replaced by the earlier release's
            stopped = now.serve.model_copy(update={"containers": {}})
            receipt = receipt.with_release(current, now.model_copy(update={"serve": stopped}))
            notes.append(f"{key} serves {served.model} (proven healthy)")
            if served.model != now.serve.model:
                notes += connector_note(receipt, key, served)
        layout.switch_current(key)
        faults.point("rollback.switched")  # `current` moved, the receipt not yet
        store.save(receipt.activated(key))
        return key, notes
