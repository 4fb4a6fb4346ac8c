"""What ``airgap install --target kubernetes`` is asked to do, and the version rules.

The model volume depends on the cluster's version: an ``image`` volume (the modelcar or
the artifact mounted read-only by the kubelet) is on by default only from Kubernetes
1.35 (the ``ImageVolume`` feature gate, beta and default-on there); on 1.33 and 1.34 it
needs the gate and a runtime that supports it, and older clusters do not know the field
at all. So the default is ``init-copy`` (an init container copies the model out of the
modelcar into an emptyDir or a PVC) unless the target version is 1.35 or later.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from bundler.errors import UsageError
from bundler.names import slug

ModelArtifact = Literal["modelcar", "oci"]
ModelVolume = Literal["image", "init-copy"]

# The newest Kubernetes minor whose schemas kubernetes-validate carries (1.37.0);
# tests/unit/test_k8s_render.py checks this against the installed package.
DEFAULT_K8S_VERSION = "1.37"
OLDEST_K8S_VERSION = (1, 27)  # the oldest minor the base is written (and validated) for
IMAGE_VOLUME_DEFAULT = (1, 35)  # ImageVolume beta, on by default
IMAGE_VOLUME_GATED = (1, 33)  # 1.33-1.34: beta behind the gate (1.31-1.32: alpha)
IMAGE_VOLUME_FIELD = (1, 31)  # the Pod API has volumes[].image
BASE_MARKER = ".airgap-base"  # a directory airgap wrote (replaced on the next install)


def parse_k8s_version(text: str) -> tuple[int, int]:
    """``1.35`` or ``v1.35.2`` -> (1, 35).

    Raises:
        UsageError: not a version, or older than :data:`OLDEST_K8S_VERSION`.
    """
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if not m:
        raise UsageError(
            f"--k8s-version {text!r}: give the cluster's version like 1.34",
            hint="`kubectl version` shows the server's version.",
        )
    v = (int(m[1]), int(m[2]))
    if v < OLDEST_K8S_VERSION:
        raise UsageError(
            f"--k8s-version {text}: older than 1.{OLDEST_K8S_VERSION[1]}, which airgap does not "
            "write manifests for",
            hint="Upgrade the cluster, or give the version it runs.",
        )
    return v


def default_model_volume(version: tuple[int, int]) -> ModelVolume:
    return "image" if version >= IMAGE_VOLUME_DEFAULT else "init-copy"


@dataclass(frozen=True)
class K8sOptions:
    """The Kubernetes half of an install (images and model go to ``--registry``)."""

    output: str  # -o DIR: the kustomize base
    k8s_version: str = DEFAULT_K8S_VERSION
    model_artifact: ModelArtifact = "modelcar"
    model_volume: ModelVolume | None = None  # None: by version
    model_pvc: str | None = None  # init-copy into this PersistentVolumeClaim, not an emptyDir
    replicas: int = 1
    namespace: str | None = None  # default airgap-<bundle>
    ingress_host: str | None = None
    ingress_class: str | None = None
    openshift: bool = False  # a Route instead of (or beside) an Ingress
    runtime_class: str | None = None  # e.g. nvidia, where the GPU operator is not the default
    public_url: str | None = None  # how Kibana/Elasticsearch reach the model (Elastic wiring)
    apply: bool = False  # run kubectl apply and rollout status

    @property
    def version(self) -> tuple[int, int]:
        return parse_k8s_version(self.k8s_version)

    @property
    def volume(self) -> ModelVolume:
        return self.model_volume or default_model_volume(self.version)

    def check(self) -> list[str]:
        """Refuse combinations that cannot work; return warnings for ones that may not.

        Raises:
            UsageError: naming the options that clash.
        """
        v, warnings = self.version, []
        if self.volume == "image" and v < IMAGE_VOLUME_FIELD:
            raise UsageError(
                f"--model-volume image: Kubernetes {self.k8s_version} has no image volumes "
                "(the field came in 1.31, default-on in 1.35)",
                hint="Use --model-volume init-copy (the default for this version).",
            )
        if self.volume == "image" and v < IMAGE_VOLUME_DEFAULT:
            gate = "beta" if v >= IMAGE_VOLUME_GATED else "alpha"
            warnings.append(
                f"image volumes on Kubernetes {self.k8s_version} are {gate} and need the "
                "ImageVolume feature gate on the API server and every kubelet, and a "
                "runtime that supports them (containerd 2.1+, CRI-O 1.31+)"
            )
        if self.model_artifact == "oci" and self.volume == "init-copy":
            raise UsageError(
                "--model-artifact oci cannot be copied by an init container: the artifact "
                "is not a runnable image",
                hint="Use --model-artifact modelcar, or --model-volume image on a cluster "
                "whose runtime mounts OCI artifacts.",
            )
        if self.model_pvc and self.volume != "init-copy":
            raise UsageError(
                "--model-pvc is where init-copy copies to: use --model-volume init-copy"
            )
        if self.public_url is not None:
            u = urlsplit(self.public_url)
            if u.scheme != "https" or not u.hostname or u.path not in ("", "/"):
                raise UsageError(
                    f"--public-url {self.public_url!r}: give https://HOST[:PORT], the "
                    "Ingress, Route or Service address Kibana and Elasticsearch call",
                    hint="The path /v1/chat/completions is added by airgap.",
                )
        if self.replicas < 1:
            raise UsageError("--replicas must be at least 1")
        return warnings

    @property
    def public_host(self) -> str | None:
        return urlsplit(self.public_url).hostname if self.public_url else None

    @property
    def public_port(self) -> int:
        return (urlsplit(self.public_url).port or 443) if self.public_url else 443


def k8s_name(text: str) -> str:
    """An RFC 1123 label (object and namespace names): ``text`` when it is one."""
    s = slug(text)
    if re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", s) and len(s) <= 50:
        return s
    base = re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:40] or "x"
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def check_output_dir(path: Path) -> None:
    """``-o DIR`` must be new, empty, or a base airgap wrote (it is replaced).

    Raises:
        UsageError: it holds other files (a GitOps checkout's own), or is not a directory.
    """
    if not path.exists():
        return
    if not path.is_dir() or path.is_symlink():
        raise UsageError(f"-o {path}: not a directory", hint="Name a directory for the base.")
    if any(path.iterdir()) and not (path / BASE_MARKER).is_file():
        raise UsageError(
            f"-o {path}: holds files airgap did not write",
            hint="Give an empty or new directory (airgap replaces only a base it wrote).",
        )


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
