"""Run the generated Deployment with Podman 4.3's ``kube play``, which needs a few
transforms (ENVIRONMENT.md, measured on Debian 12): they are all in :func:`podman_43`,
and :func:`changes` lists every path a transform touched so a test can assert that
nothing else changed."""

from __future__ import annotations

import base64
import copy
from typing import Any

Obj = dict[str, Any]
INIT_ANNOTATION = "io.podman.annotations.init.container.type"


def podman_43(deployment: Obj, secrets: list[Obj]) -> tuple[Obj, list[Obj]]:
    """The only transforms, for Podman 4.3 ``kube play``:

    1. Secrets become ConfigMaps (Secret volumes crash it, podman#16636; it reads secret
       references as JSON, #16269): each Secret's ``data`` decoded into a ConfigMap's,
       ``secret`` volumes become ``configMap`` volumes (same items and mode), and
       ``secretKeyRef`` becomes ``configMapKeyRef``.
    2. ``ports`` are dropped from the containers (a ``containerPort`` becomes a host port
       mapping; the test reaches the pod inside its network namespace instead).
    3. The Deployment gets ``io.podman.annotations.init.container.type: always`` (Podman
       can miss a finished init container's exit; Kubernetes ignores the annotation).
    """
    d = copy.deepcopy(deployment)
    configmaps = []
    for s in secrets:
        data = {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()}
        configmaps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": copy.deepcopy(s["metadata"]),
                "data": data,
            }
        )
    pod = d["spec"]["template"]["spec"]
    for vol in pod.get("volumes", []):
        if "secret" in vol:
            src = vol.pop("secret")
            vol["configMap"] = {"name": src.pop("secretName"), **src}
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        c.pop("ports", None)
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).pop("secretKeyRef", None)
            if ref is not None:
                e["valueFrom"]["configMapKeyRef"] = ref
    d["metadata"].setdefault("annotations", {})[INIT_ANNOTATION] = "always"
    return d, configmaps


def changes(before: Any, after: Any, path: str = "") -> list[str]:
    """Every path where ``after`` differs from ``before`` (keys added, removed, changed)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after), key=str):
            p = f"{path}.{k}"
            if k not in before or k not in after:
                out.append(p)
            else:
                out += changes(before[k], after[k], p)
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            c
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for c in changes(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [path]
