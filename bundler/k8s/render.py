"""The kustomize base: every object as a plain dict, written as YAML (PyYAML ``safe_dump``).

No I/O but :func:`write_base`. What the objects say, and why:

* one Deployment, vLLM plus an Nginx sidecar in the same pod (the pod's loopback is the
  only path from Nginx to vLLM); images by digest; vLLM with ``HF_HUB_OFFLINE=1``, its
  internal key from a Secret, ``nvidia.com/gpu`` limits of tensor x pipeline parallel
  size, ``/dev/shm`` as a memory-backed emptyDir (NCCL and vLLM's workers share memory
  there), startup/readiness/liveness probes on ``/health``; Nginx non-root (uid 101, as
  the nginx image has it), TLS and the bearer-token check from Secrets, its configuration
  from a ConfigMap. ``maxSurge: 0`` so an update never needs a second set of GPUs.
* the model: an ``image`` volume of the modelcar (or artifact), or ``init-copy``: an init
  container running the modelcar copies ``/models/<name>`` into an emptyDir (with an
  ``ephemeral-storage`` request of the model's size, or the kubelet evicts the pod once
  it writes that much) or into an existing PVC (copied once per modelcar digest).
* a Service (443 -> Nginx), optionally an Ingress or an OpenShift Route (passthrough:
  Nginx keeps the TLS and the token check), a PodDisruptionBudget with
  ``maxUnavailable: 1`` (``minAvailable`` with one replica would block every node
  drain), a NetworkPolicy that admits only Nginx's port, and the Namespace.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bundler.fsutil import atomic_write_bytes
from bundler.k8s.options import BASE_MARKER, ModelVolume

Obj = dict[str, Any]
NGINX_UID = 101  # the nginx user of the nginx image (and of the stand-in)
MODEL_ROOT = "/models"  # where vLLM sees the model directory's parent
CACHE_ROOT = "/model-cache"  # where the init container writes
MARKER_PREFIX = ".airgap-modelcar-"
SECRET_FILES = ("secret-token.yaml", "secret-vllm-key.yaml", "secret-tls.yaml")

# Run by the modelcar's own Python (the vLLM image's, which the modelcar is built on).
# Copies once per modelcar digest (the marker), never into a half-copied directory.
COPY_SCRIPT = """\
import os, shutil, sys
src, root, name, mark = sys.argv[1:5]
dst, done = os.path.join(root, name), os.path.join(root, mark)
if os.path.isfile(done) and os.path.isdir(dst):
    sys.stdout.write("model already copied: " + dst + "\\n")
    raise SystemExit(0)
for old in os.listdir(root):
    p = os.path.join(root, old)
    if old in (name, name + ".partial") or old.startswith(".airgap-modelcar-"):
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
shutil.copytree(src, dst + ".partial")
os.replace(dst + ".partial", dst)
open(done, "w").close()
sys.stdout.write("model copied: " + dst + "\\n")
"""


@dataclass(frozen=True)
class Secrets:
    token: str
    api_key: str
    auth_conf: str  # Nginx's token map (holds both)
    tls_crt: bytes
    tls_key: bytes
    ca_crt: bytes

    def __repr__(self) -> str:
        return "Secrets(…)"


@dataclass(frozen=True)
class Deployable:
    """Everything the base says, decided by the installer."""

    name: str  # object names: airgap-<slug>
    bundle: str
    version: int
    namespace: str
    served_name: str
    model_dir_name: str  # the model's directory under /models (its slug)
    vllm_image: str  # by digest
    nginx_image: str
    model_image: str  # the modelcar or artifact, by digest
    model_bytes: int
    vllm_args: list[str]
    nginx_conf: str
    secrets: Secrets
    port: int = 8443
    internal_port: int = 8000
    gpus: int = 1  # 0: no GPU limit (CPU images)
    replicas: int = 1
    volume: ModelVolume = "init-copy"
    pvc: str | None = None
    health_timeout: float = 900.0
    ingress_host: str | None = None
    ingress_class: str | None = None
    openshift: bool = False
    runtime_class: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/instance": self.name}

    def meta(self, name: str, *, namespaced: bool = True) -> Obj:
        out: Obj = {"name": name}
        if namespaced:
            out["namespace"] = self.namespace
        out["labels"] = {
            **self.selector,
            "app.kubernetes.io/version": str(self.version),
            "app.kubernetes.io/managed-by": "airgap",
            "airgap/bundle": self.name,
            **self.labels,
        }
        return out


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def secrets(d: Deployable) -> dict[str, Obj]:
    s = d.secrets
    return {
        "secret-token.yaml": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": d.meta(f"{d.name}-token"),
            "type": "Opaque",
            "data": {"token": _b64(s.token), "auth.conf": _b64(s.auth_conf)},
        },
        "secret-vllm-key.yaml": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": d.meta(f"{d.name}-vllm-key"),
            "type": "Opaque",
            "data": {"api-key": _b64(s.api_key)},
        },
        "secret-tls.yaml": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": d.meta(f"{d.name}-tls"),
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": _b64(s.tls_crt),
                "tls.key": _b64(s.tls_key),
                "ca.crt": _b64(s.ca_crt),
            },
        },
    }


def _probe(path: str, port: int | str, period: int, failures: int, scheme: str = "HTTP") -> Obj:
    return {
        "httpGet": {"path": path, "port": port, "scheme": scheme},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _mebibytes(n: int) -> str:
    return f"{max(1, -(-n // (1 << 20)))}Mi"


def _model_volume(d: Deployable) -> tuple[Obj, list[Obj], Obj | None]:
    """(the volume vLLM reads, volumes besides it, the init container or None)."""
    if d.volume == "image":
        vol: Obj = {
            "name": "model",
            "image": {"reference": d.model_image, "pullPolicy": "IfNotPresent"},
        }
        mount = {"name": "model", "mountPath": MODEL_ROOT, "subPath": "models", "readOnly": True}
        return mount, [vol], None
    if d.pvc:
        vol = {"name": "model", "persistentVolumeClaim": {"claimName": d.pvc}}
    else:
        vol = {"name": "model", "emptyDir": {}}
    digest = d.model_image.rpartition("@sha256:")[2][:16]
    init: Obj = {
        "name": "model-copy",
        "image": d.model_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", COPY_SCRIPT],
        "args": [
            f"{MODEL_ROOT}/{d.model_dir_name}",
            CACHE_ROOT,
            d.model_dir_name,
            MARKER_PREFIX + digest,
        ],
        "volumeMounts": [{"name": "model", "mountPath": CACHE_ROOT}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if not d.pvc:  # the copy lives on the node's disk: say how much, or be evicted
        init["resources"] = {"requests": {"ephemeral-storage": _mebibytes(d.model_bytes)}}
    mount = {"name": "model", "mountPath": MODEL_ROOT, "readOnly": True}
    return mount, [vol], init


def deployment(d: Deployable) -> Obj:
    model_mount, volumes, init = _model_volume(d)
    startup_failures = max(3, -(-int(d.health_timeout) // 10))
    vllm: Obj = {
        "name": "vllm",
        "image": d.vllm_image,
        "imagePullPolicy": "IfNotPresent",
        "args": d.vllm_args,
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
            {
                "name": "VLLM_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": f"{d.name}-vllm-key", "key": "api-key"}},
            },
        ],
        "ports": [{"name": "vllm", "containerPort": d.internal_port}],
        "volumeMounts": [model_mount, {"name": "dshm", "mountPath": "/dev/shm"}],
        "startupProbe": _probe("/health", d.internal_port, 10, startup_failures),
        "readinessProbe": _probe("/health", d.internal_port, 10, 3),
        "livenessProbe": _probe("/health", d.internal_port, 20, 3),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    resources: Obj = {}
    if d.gpus:
        resources["limits"] = {"nvidia.com/gpu": str(d.gpus)}
    if init is not None and not d.pvc:
        resources["requests"] = {"ephemeral-storage": _mebibytes(d.model_bytes)}
    if resources:
        vllm["resources"] = resources
    nginx: Obj = {
        "name": "nginx",
        "image": d.nginx_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/sbin/nginx"],
        "args": ["-g", "daemon off;", "-c", "/etc/airgap/conf/nginx.conf"],
        "ports": [{"name": "https", "containerPort": d.port}],
        "volumeMounts": [
            {"name": "nginx-conf", "mountPath": "/etc/airgap/conf", "readOnly": True},
            {"name": "nginx-auth", "mountPath": "/etc/airgap/auth", "readOnly": True},
            {"name": "tls", "mountPath": "/etc/airgap/tls", "readOnly": True},
        ],
        "readinessProbe": _probe("/health", d.port, 10, 3, scheme="HTTPS"),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NGINX_UID,
            "runAsGroup": NGINX_UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    volumes += [
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "nginx-conf", "configMap": {"name": f"{d.name}-nginx"}},
        {
            "name": "nginx-auth",
            "secret": {
                "secretName": f"{d.name}-token",
                "items": [{"key": "auth.conf", "path": "auth.conf"}],
                "defaultMode": 0o440,
            },
        },
        {
            "name": "tls",
            "secret": {
                "secretName": f"{d.name}-tls",
                "items": [
                    {"key": "tls.crt", "path": "server.crt"},
                    {"key": "tls.key", "path": "server.key"},
                ],
                "defaultMode": 0o440,
            },
        },
    ]
    spec: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": NGINX_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 60,
    }
    if d.runtime_class:
        spec["runtimeClassName"] = d.runtime_class
    if init is not None:
        spec["initContainers"] = [init]
    spec["containers"] = [vllm, nginx]
    spec["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": d.meta(d.name),
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": d.selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {"metadata": {"labels": d.meta(d.name)["labels"]}, "spec": spec},
        },
    }


def objects(d: Deployable) -> dict[str, Obj]:
    """Every object of the base, by the file it is written to (kustomization order)."""
    out: dict[str, Obj] = {
        "namespace.yaml": {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": d.meta(d.namespace, namespaced=False),
        },
        **secrets(d),
        "configmap-nginx.yaml": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": d.meta(f"{d.name}-nginx"),
            "data": {"nginx.conf": d.nginx_conf},
        },
        "deployment.yaml": deployment(d),
        "service.yaml": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": d.meta(d.name),
            "spec": {
                "type": "ClusterIP",
                "selector": d.selector,
                "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
            },
        },
        "pdb.yaml": {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": d.meta(d.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": d.selector}},
        },
        "networkpolicy.yaml": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": d.meta(d.name),
            "spec": {
                "podSelector": {"matchLabels": d.selector},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": d.port}]}],
            },
        },
    }
    if d.ingress_host:
        ingress: Obj = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": d.meta(d.name),
            "spec": {
                "tls": [{"hosts": [d.ingress_host], "secretName": f"{d.name}-tls"}],
                "rules": [
                    {
                        "host": d.ingress_host,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": d.name, "port": {"name": "https"}}
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
        }
        # ingress-nginx: talk TLS to Nginx, stream answers, wait for long generations
        ingress["metadata"]["annotations"] = {
            "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
            "nginx.ingress.kubernetes.io/proxy-buffering": "off",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "600",
            "nginx.ingress.kubernetes.io/proxy-body-size": "32m",
        }
        if d.ingress_class:
            ingress["spec"]["ingressClassName"] = d.ingress_class
        out["ingress.yaml"] = ingress
    if d.openshift:
        route: Obj = {
            "apiVersion": "route.openshift.io/v1",
            "kind": "Route",
            "metadata": d.meta(d.name),
            "spec": {
                "to": {"kind": "Service", "name": d.name, "weight": 100},
                "port": {"targetPort": "https"},
                "tls": {"termination": "passthrough", "insecureEdgeTerminationPolicy": "None"},
            },
        }
        if d.ingress_host:
            route["spec"]["host"] = d.ingress_host
        route["metadata"]["annotations"] = {"haproxy.router.openshift.io/timeout": "600s"}
        out["route.yaml"] = route
    return out


def kustomization(files: list[str]) -> Obj:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": files,
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with multi-line strings (nginx.conf, the copy script) as ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.startswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Obj) -> bytes:
    text = "# generated by airgap; do not edit (a reinstall writes it again)\n"
    body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return (text + body).encode()


def write_base(d: Deployable, directory: Path) -> dict[str, str]:
    """Write the base into ``directory`` (created 0700 if missing); Secret files 0600.

    Returns:
        The files written, by name, with their sha256 (for the receipt).
    """
    import hashlib

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    objs = objects(d)
    files = {name: dump(obj) for name, obj in objs.items()}
    files["kustomization.yaml"] = dump(kustomization(list(objs)))
    written: dict[str, str] = {}
    for name, data in files.items():
        atomic_write_bytes(directory / name, data, mode=0o600 if name in SECRET_FILES else 0o644)
        written[name] = hashlib.sha256(data).hexdigest()
    stale = {p.name for p in directory.glob("*.yaml")} - set(files)
    for name in stale:  # an Ingress or Route the previous base had and this one has not
        os.unlink(directory / name)
    atomic_write_bytes(directory / BASE_MARKER, f"{d.bundle} {d.version}\n".encode(), mode=0o644)
    return written
