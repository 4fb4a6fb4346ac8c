"""status, rollback and uninstall for a release installed with ``--target kubernetes``.

The registry part (are the pushed manifests still there, by digest) is the registry
target's, as for ``--registry``. What is added here: the base on disk against the
sha256s recorded when it was written, and, with ``--apply``, the Deployment in the
cluster (``kubectl get``): its images must be the recorded digests and its rollout
complete. Without ``--apply`` nothing talks to the cluster; the commands are printed.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
from pathlib import Path
from typing import Any

from bundler.errors import AirgapError
from bundler.install.k8s_target import apply, commands, remove_base
from bundler.install.options import Check, InstallOptions
from bundler.install.records import KubernetesRecord, Release
from bundler.k8s import apply as kubectl
from bundler.k8s.options import BASE_MARKER


def base_changes(rec: KubernetesRecord, directory: str | None = None) -> list[str]:
    """Files of the base that are missing or differ from what install wrote."""
    where = Path(directory or rec.base_dir)
    out = []
    for name, sha in sorted(rec.files.items()):
        try:
            got = hashlib.sha256((where / name).read_bytes()).hexdigest()
        except OSError:
            out.append(f"{name} missing")
            continue
        if got != sha:
            out.append(f"{name} changed")
    return out


def expected_images(rel: Release) -> dict[str, str]:
    """Container (or volume) name -> the image reference by digest the base names."""
    assert rel.kubernetes is not None
    refs = {i.role: f"{i.ref.rsplit(':', 1)[0]}@{i.id}" for i in rel.images}
    model = "model" if rel.kubernetes.model_volume == "image" else "model-copy"
    return {"vllm": refs["vllm"], "nginx": refs["nginx"], model: rel.kubernetes.model_ref}


def _images_in(doc: dict[str, Any]) -> dict[str, str]:
    found = kubectl.deployed_images(doc)
    try:
        for vol in doc["spec"]["template"]["spec"].get("volumes", []):
            if isinstance(vol.get("image"), dict):
                found[str(vol["name"])] = str(vol["image"].get("reference"))
    except (KeyError, TypeError, AttributeError):
        pass
    return found


def cluster_status(rel: Release, check_cluster: bool) -> dict[str, Any]:
    """The base (and with ``check_cluster`` the Deployment) against the receipt."""
    rec = rel.kubernetes
    assert rec is not None
    changed = base_changes(rec)
    out: dict[str, Any] = {
        "namespace": rec.namespace,
        "deployment": rec.deployment,
        "base": rec.base_dir,
        "base_state": "as written" if not changed else "; ".join(changed),
        "applied": rec.applied,
        "rollout": "not checked (add --apply to ask the cluster)",
        "ok": not changed,
    }
    if not check_cluster:
        return out
    try:
        doc = kubectl.read_deployment(commands(rec))
    except AirgapError as e:
        return {**out, "rollout": e.message, "ok": False}
    ready, words = kubectl.rollout_state(doc)
    running = _images_in(doc)
    wrong = [
        f"{name}: {running.get(name, 'absent')} (recorded {ref})"
        for name, ref in expected_images(rel).items()
        if running.get(name) != ref
    ]
    out["rollout"] = words
    out["images"] = "as recorded" if not wrong else "; ".join(wrong)
    out["ok"] = out["ok"] and ready and not wrong
    return out


def rollback_to(rel: Release, now: Release | None, run: bool, timeout: float) -> list[str]:
    """Put the earlier release's base back at ``-o DIR`` (for GitOps) and apply it (``run``)
    or say the commands."""
    rec = rel.kubernetes
    assert rec is not None
    out = Path(now.kubernetes.base_dir if now and now.kubernetes else rec.base_dir)
    notes = []
    if not out.exists() or (out / BASE_MARKER).is_file():
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in out.glob("*.yaml"):
            p.unlink()
        for p in Path(rec.release_base).iterdir():
            shutil.copy2(p, out / p.name)
        notes.append(f"wrote {rel.name} v{rel.version}'s base into {out}")
    if run:
        apply(rec, timeout, base=str(out))
        notes.append(f"applied {out} and the rollout finished")
    else:
        cmds = commands(rec, base=str(out), timeout=timeout)
        notes += ["to deploy it, run:", *(f"  {line}" for line in cmds.install_lines())]
    return notes


def uninstall_cluster(releases: list[Release], run: bool) -> list[str]:
    """Delete what the newest base created (with ``run``), or say the command; the
    bases airgap wrote at ``-o DIR`` go only once deleted (a printed command needs it)."""
    recs = [r.kubernetes for r in releases if r.kubernetes is not None]
    if not recs:
        return []
    rec = recs[-1]
    cmds = commands(rec)
    if not run:
        return [
            f"note: the cluster still runs {rec.namespace}/{rec.deployment}, whose images "
            f"were deleted from the registry: run `{shlex.join(cmds.delete())}`, then "
            f"remove {rec.base_dir}"
        ]
    kubectl.run(cmds.delete())
    for r in recs:
        remove_base(r)
    return [f"kubernetes objects of {rec.base_dir} (kubectl delete)", f"base {rec.base_dir}"]


def k8s_rows(opts: InstallOptions) -> list[Check]:
    k8s = opts.kubernetes
    if k8s is None:
        return []
    volume = f"{k8s.volume} volume" + (f" (PVC {k8s.model_pvc})" if k8s.model_pvc else "")
    rows = [
        Check(
            "kubernetes",
            True,
            f"{k8s.k8s_version}: model as {k8s.model_artifact}, {volume}, "
            f"{k8s.replicas} replica(s), base into {k8s.output}"
            + ("; then kubectl apply" if k8s.apply else "; kubectl commands printed"),
        )
    ]
    rows += [Check("kubernetes", None, w) for w in k8s.check()]
    return rows
