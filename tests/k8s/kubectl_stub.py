"""A ``kubectl`` for tests (no API server runs here): put on PATH as ``kubectl``.

It records every call (argv, and for ``-k DIR`` the directory's real path and the
sha256 of each file in it) as a JSON line in ``$KUBECTL_STUB_LOG``, and refuses a
``-k`` directory without a kustomization.yaml. ``get deployment -o json`` prints the
Deployment of the last applied directory with a status: ready unless
``KUBECTL_STUB_READY=0``. ``rollout status`` fails when not ready.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import yaml


def main(argv: list[str]) -> int:
    log = Path(os.environ["KUBECTL_STUB_LOG"])
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    entry: dict[str, object] = {"argv": argv}
    if "-k" in argv:
        d = Path(argv[argv.index("-k") + 1])
        if not (d / "kustomization.yaml").is_file():
            print(f"error: {d}: no kustomization.yaml", file=sys.stderr)
            return 1
        entry["dir"] = str(d.resolve())
        entry["files"] = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.yaml"))
        }
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    ready = os.environ.get("KUBECTL_STUB_READY", "1") == "1"
    applied = [c for c in calls if c["argv"][:1] == ["apply"]]
    if argv[:1] == ["apply"]:
        print("deployment.apps/x serverside-applied")
        return 0
    if "rollout" in argv:
        if not ready:
            print("error: timed out waiting for the condition", file=sys.stderr)
            return 1
        print('deployment "x" successfully rolled out')
        return 0
    if "get" in argv:
        if not applied:
            print('Error from server (NotFound): deployments.apps "x" not found', file=sys.stderr)
            return 1
        doc = yaml.safe_load((Path(str(applied[-1]["dir"])) / "deployment.yaml").read_text())
        n = doc["spec"]["replicas"]
        doc["status"] = {"readyReplicas": n if ready else 0, "updatedReplicas": n}
        print(json.dumps(doc))
        return 0
    if argv[:1] == ["delete"]:
        print("namespace/x deleted")
        return 0
    print(f"stub: unexpected {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
