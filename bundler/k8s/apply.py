"""``kubectl``, the operator's own, with the operator's kubeconfig: the exact commands for
a base, printed for GitOps sites or run with ``--apply``.

``apply --server-side --field-manager airgap -k DIR`` (server-side apply: the fields
airgap sets are owned by the ``airgap`` manager, so a GitOps controller or an operator
editing other fields is not overwritten, and a conflict is reported instead of lost),
then ``rollout status``; ``delete -k DIR --ignore-not-found`` to remove it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.errors import InstallError, UsageError

FIELD_MANAGER = "airgap"


@dataclass(frozen=True)
class Commands:
    base: Path
    namespace: str
    deployment: str
    timeout: int = 900

    def apply(self) -> list[str]:
        return [
            "kubectl",
            "apply",
            "--server-side",
            "--field-manager",
            FIELD_MANAGER,
            "-k",
            str(self.base),
        ]

    def rollout(self) -> list[str]:
        return [
            "kubectl",
            "-n",
            self.namespace,
            "rollout",
            "status",
            f"deployment/{self.deployment}",
            f"--timeout={self.timeout}s",
        ]

    def delete(self) -> list[str]:
        return ["kubectl", "delete", "-k", str(self.base), "--ignore-not-found"]

    def get(self) -> list[str]:
        return [
            "kubectl",
            "-n",
            self.namespace,
            "get",
            f"deployment/{self.deployment}",
            "-o",
            "json",
        ]

    def install_lines(self) -> list[str]:
        return [shlex.join(self.apply()), shlex.join(self.rollout())]


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise UsageError(
            "--apply: kubectl is not on PATH",
            hint="Install kubectl (and a kubeconfig for the cluster), or drop --apply and "
            "run the printed commands where kubectl is.",
        )
    return found


def run(argv: list[str], *, timeout: float = 1800) -> str:
    """Run one kubectl command; its standard output.

    Raises:
        UsageError: kubectl is not installed.
        InstallError: it failed (its own error text, which names the object or the cluster).
    """
    exe = _kubectl()
    try:
        done = subprocess.run(
            [exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise InstallError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise InstallError(
            f"`{shlex.join(argv)}` failed (exit {done.returncode}): {' / '.join(tail)}",
            hint="Check the kubeconfig (KUBECONFIG, the current context) and what kubectl "
            "says; the base is written, so the same command can be run by hand.",
        )
    return done.stdout


def rollout_state(doc: dict[str, Any]) -> tuple[bool, str]:
    """(ready, in words) from ``kubectl get deployment -o json``."""
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    st = doc.get("status") if isinstance(doc.get("status"), dict) else {}
    assert isinstance(spec, dict) and isinstance(st, dict)
    want = spec.get("replicas", 1)
    ready, updated = st.get("readyReplicas", 0), st.get("updatedReplicas", 0)
    ok = ready == want and updated == want
    return ok, f"{ready}/{want} ready, {updated} updated"


def deployed_images(doc: dict[str, Any]) -> dict[str, str]:
    """Container name -> image of the Deployment's pod template (init containers too)."""
    try:
        pod = doc["spec"]["template"]["spec"]
        containers = [*pod.get("initContainers", []), *pod["containers"]]
        return {str(c["name"]): str(c["image"]) for c in containers}
    except (KeyError, TypeError):
        return {}


def read_deployment(cmds: Commands) -> dict[str, Any]:
    """Raises: InstallError: kubectl failed or did not print a Deployment."""
    out = run(cmds.get(), timeout=60)
    try:
        doc = json.loads(out)
    except ValueError as e:
        raise InstallError(f"`{shlex.join(cmds.get())}` printed no JSON") from e
    if not isinstance(doc, dict):
        raise InstallError(f"`{shlex.join(cmds.get())}` printed no Deployment")
    return doc
