"""Podman 4.3 runs the generated Deployment (``podman kube play``): the stand-in images
pulled from the local registry by digest, the model copied by the init container out of
the modelcar, Nginx answering over TLS with the token and 401 without it.

The only changes to what airgap wrote are :func:`podman43.podman_43`'s, and the test
checks that nothing else changed. The pod runs with ``--network none`` (its own network
namespace with only loopback: no host port, no iptables change), and the client runs
inside that namespace (``nsenter``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from podman43 import changes, podman_43
from test_k8s_install import install, make_bundle, receipt

from devkit import services

from conftest import Keys

# Every path a transform may touch (podman_43's docstring), and nothing else.
ALLOWED = [
    r"\.metadata\.annotations",
    r"\.spec\.template\.spec\.volumes\[\d+\]\.(secret|configMap)",
    r"\.spec\.template\.spec\.(initContainers|containers)\[\d+\]\.ports",
    r"\.spec\.template\.spec\.(initContainers|containers)\[\d+\]\.env\[\d+\]\.valueFrom\.(secretKeyRef|configMapKeyRef)",
]

CLIENT = """
import json, ssl, sys, urllib.request, urllib.error
port, ca, token = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()
out = {}
for name, auth in (("with", token), ("without", None)):
    req = urllib.request.Request(f"https://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Bearer " + auth)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            out[name] = [r.status, json.loads(r.read())]
    except urllib.error.HTTPError as e:
        out[name] = [e.code, e.read().decode()]
print(json.dumps(out))
"""


def test_podman_runs_the_deployment(
    tmp_path: Path, key: Keys, oci_registry: services.Service, podman_engine: services.Service
) -> None:
    bundle = make_bundle(tmp_path, key, real_images=True)
    port = services.free_port()
    r = install(
        bundle, key, tmp_path, oci_registry.url, "--k8s-version", "1.34",
        "--port", str(port), "--internal-port", str(services.free_port()),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    base = tmp_path / "base"
    docs: dict[str, Any] = {p.name: yaml.safe_load(p.read_text()) for p in base.glob("*.yaml")}
    deployment = docs["deployment.yaml"]
    assert deployment["spec"]["template"]["spec"]["initContainers"][0]["name"] == "model-copy"
    secrets = [docs[n] for n in ("secret-token.yaml", "secret-vllm-key.yaml", "secret-tls.yaml")]
    played, configmaps = podman_43(deployment, secrets)
    touched = changes(deployment, played)
    assert touched, "the transforms changed nothing"
    stray = [p for p in touched if not any(re.fullmatch(a, p) for a in ALLOWED)]
    assert stray == [], stray
    configmaps.append(docs["configmap-nginx.yaml"])
    work = tmp_path / "play"
    work.mkdir()
    (work / "deployment.yaml").write_text(yaml.safe_dump(played))
    args = []
    for i, cm in enumerate(configmaps):
        (work / f"cm-{i}.yaml").write_text(yaml.safe_dump(cm))
        args += ["--configmap", str(work / f"cm-{i}.yaml")]
    podman = podman_engine.env["PODMAN_BASE"].split()
    env = {**os.environ, "CONTAINERS_CONF": str(podman_engine.root / "containers.conf")}

    def run(*argv: str, check: bool = True) -> str:
        done = subprocess.run(
            [*podman, *argv], capture_output=True, text=True, env=env, check=False
        )
        assert not check or done.returncode == 0, done.stderr
        return done.stdout

    pod = f"{deployment['metadata']['name']}-pod-0"
    recorded = {i["role"]: i for i in receipt(tmp_path)["releases"]["demo-1"]["images"]}
    refs = [f"{i['ref'].rsplit(':', 1)[0]}@{i['id']}" for i in recorded.values()]
    try:
        run(
            "kube",
            "play",
            "--tls-verify=false",
            "--network",
            "none",
            *args,
            str(work / "deployment.yaml"),
        )
        images = run("images", "--digests", "--format", "{{.Repository}}@{{.Digest}}").split()
        assert sorted(recorded) == ["model", "nginx", "vllm"]
        assert set(refs) <= set(images)  # pulled from the registry, by digest
        infra = json.loads(run("pod", "inspect", pod))["InfraContainerID"]
        pid = run("inspect", "--format", "{{.State.Pid}}", infra).strip()
        ca = work / "ca.crt"
        tls = next(cm for cm in configmaps if cm["metadata"]["name"].endswith("-tls"))
        ca.write_text(tls["data"]["ca.crt"])
        token = next(cm for cm in configmaps if cm["metadata"]["name"].endswith("-token"))
        got: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["nsenter", "-t", pid, "-n", sys.executable, "-c", CLIENT, str(port), str(ca),
                 token["data"]["token"]],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                got = json.loads(done.stdout)
                if got["with"][0] == 200:  # else vLLM is still starting behind Nginx
                    break
            time.sleep(1)
        logs = {c: run("logs", f"{pod}-{c}", check=False) for c in ("model-copy", "vllm", "nginx")}
        assert got, logs
        status, answer = got["with"]
        assert status == 200, (got, logs)
        assert answer["model"] == "tiny" and answer["choices"][0]["message"]["content"]
        assert got["without"][0] == 401
        # copied once; Podman reruns an init container of type "always", and the marker
        # makes the reruns skip the copy
        copy_log = logs["model-copy"].splitlines()
        assert copy_log[0] == "model copied: /model-cache/tiny", copy_log[:3]
        assert set(copy_log[1:]) <= {"model already copied: /model-cache/tiny"}
        assert "from /models/tiny" in logs["vllm"]
    finally:
        run("pod", "rm", "-f", pod, check=False)
        run("rmi", "-f", *refs, check=False)
