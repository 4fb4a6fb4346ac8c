"""The GPU preflight through the real CLI: a fake ``nvidia-smi`` on PATH prints edited copies of
the real H200 capture, the bundle's signed facts come from a real build, the engine is the
test dockerd. A refusal happens before any payload byte is read and leaves nothing behind.

The bundle: the demo's inert images, the vLLM one with NVIDIA's ``NVIDIA_REQUIRE_CUDA``
in its config, and a ``config.json`` of a 70B-class model without GQA (80 layers, 64 KV
heads, bf16) served with TP 2 and a 32,768-token context: 40 GiB of KV cache per GPU,
which fits on 2 x A100 80 GB and not on 2 x A100 40 GB.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from smi_fixtures import FakeGpu, FakeHost

from devkit import services
from devkit.demo_data import Image, make_demo_sources

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration

REQUIRE = "cuda>=12.8 brand=tesla,driver>=535,driver<536 brand=nvidia,driver>=570,driver<571"
MHA_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
A100_80 = FakeHost((FakeGpu(0), FakeGpu(1)), driver="580.159.04", cuda="13.0")
A100_40 = FakeHost(
    tuple(FakeGpu(i, "NVIDIA A100-SXM4-40GB", 40960, 524) for i in range(2)), "580.159.04", "13.0"
)


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    from conftest import make_key

    root = tmp_path_factory.mktemp("gpu")
    manifest = make_demo_sources(root / "src")
    src = manifest.parent
    (src / "weights" / "config.json").write_text(json.dumps(MHA_70B))
    env = ["PATH=/usr/bin", "CUDA_VERSION=12.8.1", f"NVIDIA_REQUIRE_CUDA={REQUIRE}"]
    Image([{"app/server.py": b"print('hi')\n"}], compress=True, env=env).oci_archive(
        src / "vllm.tar", "example.org/vllm:test"
    )
    doc = yaml.safe_load(manifest.read_text())
    doc["serve"] = {"max_model_len": 32768, "tensor_parallel_size": 2}
    manifest.write_text(yaml.safe_dump(doc))
    key = make_key(root / "keys")
    out = root / "gpu.tar"
    build_bundle(manifest, out, key)
    return out, key


def docker_state(engine: services.Service) -> tuple[list[str], list[str]]:
    def lines(*args: str) -> list[str]:
        out = subprocess.run(
            ["docker", "-H", engine.url, *args], capture_output=True, text=True, check=True
        ).stdout
        return sorted(out.split())

    return lines("image", "ls", "-q", "--no-trunc"), lines("ps", "-a", "--format", "{{.Names}}")


def run(
    bundle: Path,
    key: Keys,
    prefix: Path,
    engine: services.Service,
    host: FakeHost | None,
    bin_dir: Path,
    *extra: str,
    hook: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``airgap install`` with GPUs (no --no-gpu), ``host``'s nvidia-smi first on PATH."""
    if host is not None:
        host.install(bin_dir)
    else:
        (bin_dir / "nvidia-smi").unlink(missing_ok=True)
    hook_path = bin_dir / "nvidia-container-runtime-hook"
    if hook:  # what Docker's --gpus runs: its presence is how the check knows the toolkit
        hook_path.write_text("#!/bin/sh\nexit 0\n")
        hook_path.chmod(0o755)
    else:
        hook_path.unlink(missing_ok=True)
    path = f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"
    return airgap(
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--runtime-url",
        engine.url,
        "--port",
        str(services.free_port()),
        "--internal-port",
        str(services.free_port()),
        "--artifacts-port",
        str(services.free_port()),
        *extra,
        env={"PATH": path, **(env or {})},
    )


def rows(r: subprocess.CompletedProcess[bytes]) -> dict[str, dict[str, object]]:
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["status"] == "dry-run"
    return {c["name"]: c for c in doc["checks"]}


def test_gpu_preflight_refuses_before_the_payload_and_leaves_nothing(
    tmp_path: Path, gpu_bundle: tuple[Path, Keys], docker_engine: services.Service
) -> None:
    bundle, key = gpu_bundle
    prefix = tmp_path / "opt"
    bin_dir = tmp_path / "bin"
    before = docker_state(docker_engine)

    def refused(
        host: FakeHost | None, *extra: str, hook: bool = True, env: dict[str, str] | None = None
    ) -> tuple[str, str]:
        r = run(bundle, key, prefix, docker_engine, host, bin_dir, *extra, hook=hook, env=env)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        # nothing behind: no release, no staging dir, no receipt, no image, no container
        left = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*"))
        assert left == [".airgap.lock"], left
        assert docker_state(docker_engine) == before
        error = next(line for line in err.splitlines() if line.startswith("error: "))
        hint = next((line for line in err.splitlines() if line.startswith("hint: ")), "")
        return error.removeprefix("error: "), hint.removeprefix("hint: ")

    # 2 x A100 40 GB: the KV cache for one 32k sequence alone is 40 GiB per GPU
    error, hint = refused(A100_40)
    assert error == (
        "demo v1 on 2 x NVIDIA A100-SXM4-40GB: does not fit: per GPU: weights 0.0 GiB + "
        "overhead ~7.1 GiB (estimate) + KV 40.0 GiB for 32,768 tokens = 47.1 GiB of 35.5 GiB "
        "(39.5 GiB x 0.9)"
    )
    # (35.5 GiB - 7.1 GiB) / 1.25 MiB of KV per token
    assert "a lower max_model_len (<= 23,281 would fit)" in hint and "--skip-fit-check" in hint

    # a busy GPU: vLLM would refuse to start on it
    busy = dataclasses.replace(A100_80, gpus=(FakeGpu(0), FakeGpu(1, used=60_000)))
    error, _ = refused(busy)
    assert error == (
        "not enough free GPU memory: GPU 1 (NVIDIA A100-SXM4-80GB): 20.9 GiB free of 79.4 GiB, "
        "vLLM asks 71.5 GiB (total x 0.9)"
    )

    # an old driver for the image's CUDA 12.8 (a 570 driver would do through its compat clause)
    old = dataclasses.replace(A100_80, driver="550.54.15", cuda="12.4")
    error, hint = refused(old)
    assert error.startswith("driver 550.54.15 (CUDA 12.4) is too old for image vllm")
    assert error.endswith("CUDA 12.8 needs driver >= 570.26")
    assert hint.startswith("Install NVIDIA driver >= 570.26")

    # --gpus and CUDA_VISIBLE_DEVICES choose one GPU: TP 2 needs two
    error, _ = refused(A100_80, "--gpus", "1")
    assert error == "tensor_parallel_size 2 x pipeline_parallel_size 1 needs 2 GPUs; 1 chosen"
    error, _ = refused(A100_80, env={"CUDA_VISIBLE_DEVICES": A100_80.gpus[0].uuid})
    assert error.endswith("needs 2 GPUs; 1 chosen")

    # no nvidia-smi at all, and an engine that cannot give GPUs
    error, hint = refused(None)
    assert error == "nvidia-smi is not on PATH: cannot see this host's GPUs"
    assert "--no-gpu" in hint
    error, hint = refused(A100_80, hook=False)
    assert error.startswith("docker cannot give containers GPUs")
    assert "nvidia-ctk" in hint

    # the same bundle fits 2 x A100 80 GB: a dry run shows every GPU row passing
    ok = rows(run(bundle, key, prefix, docker_engine, A100_80, bin_dir, "--dry-run", "--json"))
    assert [
        ok[n]["ok"]
        for n in ("gpu runtime", "gpus", "driver", "tensor parallel", "gpu memory", "fit")
    ] == [True] * 6
    assert ok["fit"]["detail"] == (
        "per GPU: weights 0.0 GiB + overhead ~7.1 GiB (estimate) + KV 40.0 GiB for 32,768 tokens "
        "= 47.1 GiB of 71.5 GiB (79.4 GiB x 0.9); max context ~32,768 tokens (KV room for "
        "52,742), 1.6 full-length sequences at once"
    )
    # --skip-fit-check turns the refusal into a warning; MIG is a warning
    warned = rows(
        run(
            bundle,
            key,
            prefix,
            docker_engine,
            A100_40,
            bin_dir,
            "--dry-run",
            "--json",
            "--skip-fit-check",
        )
    )
    assert warned["fit"]["ok"] is None and str(warned["fit"]["detail"]).endswith(
        "(--skip-fit-check)"
    )
    mig = dataclasses.replace(A100_80, gpus=(FakeGpu(0, mig=True), FakeGpu(1)))
    assert (
        rows(run(bundle, key, prefix, docker_engine, mig, bin_dir, "--dry-run", "--json"))["mig"][
            "ok"
        ]
        is None
    )
    # --no-gpu skips all of it (the demo and the serving tests run that way)
    r = run(
        bundle,
        key,
        prefix,
        docker_engine,
        None,
        bin_dir,
        "--dry-run",
        "--json",
        "--no-gpu",
        hook=False,
    )
    assert rows(r)["gpu"] == {"name": "gpu", "ok": None, "detail": "skipped (--no-gpu)"}
    assert docker_state(docker_engine) == before
    assert os.listdir(prefix) == [".airgap.lock"]


def test_device_gpu_check_script_reads_the_real_capture(tmp_path: Path) -> None:
    """scripts/device-gpu-check.sh, which the lead runs on a real H200 host, here against a
    fake nvidia-smi that prints the real capture from that host."""
    from smi_fixtures import H200_UUID, real_query, real_xml

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "q.txt").write_text(real_query())
    (bin_dir / "x.xml").write_text(real_xml())
    fake = bin_dir / "nvidia-smi"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = -q ]; then cat {bin_dir}/x.xml; '
        f'elif [ "$1" = -L ]; then echo "GPU 0: NVIDIA H200 (UUID: {H200_UUID})"; '
        f"else cat {bin_dir}/q.txt; fi\n"
    )
    fake.chmod(0o755)
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        ["bash", str(repo / "scripts/device-gpu-check.sh")],
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "OUT": str(tmp_path / "out"),
            "PYTHON": sys.executable,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert f"| 0 | NVIDIA H200 | {H200_UUID} | 143771 | 616 | 0 | 143156 | 139.80 | 9.0 |" in md
    assert "driver 580.159.04, CUDA 13.0, problems: none" in md
    assert "- CUDA 12.8: ok: driver 580.159.04 (CUDA 13.0) meets" in md
    assert "- CUDA 13.1: REFUSED: " in md and "needs driver >= 590.44.01" in md
    # Llama 3.3 70B wants 4 GPUs (its manifest's TP), and one H200 cannot hold it at TP 1
    llama = md.split("### llama-3.3-70b-instruct.yaml")[1].split("###")[0]
    assert (
        "| tensor parallel | False | tensor_parallel_size 4 x pipeline_parallel_size 1 needs 4 GPUs; 1 chosen |"
        in llama
    )
    assert "At TP 1 on GPU 0: fits: False; per GPU: weights 131.4 GiB" in llama


def test_inspect_shows_the_signed_facts_and_the_fit_table(gpu_bundle: tuple[Path, Keys]) -> None:
    """On the connected side, from the index alone: what hardware the bundle needs."""
    bundle, _ = gpu_bundle
    r = airgap("inspect", str(bundle), "--json")
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["format"] == "airgap-bundle/2"
    facts = doc["model_facts"]
    assert (facts["layers"], facts["kv_heads"], facts["dtype"]) == (80, 64, "bfloat16")
    assert facts["weights"]["files"] == ["model.safetensors"]
    cells = {(c["gpu"], c["tensor_parallel_size"]): c for c in doc["fit"]}
    assert len(cells) == 6 * 4
    assert cells[("A100 40GB", 2)]["fits"] is False
    assert cells[("A100 80GB", 2)]["fits"] is True
    assert cells[("A100 80GB", 2)]["kv_bytes"] == 40 * 2**30  # 2 x 80 x 32 x 128 x 2 x 32768
    r = airgap("inspect", str(bundle))
    out = r.stdout.decode()
    assert r.returncode == 0 and "model facts (signed): LlamaForCausalLM, 80 layers" in out
    assert "fits? (as vLLM budgets memory)" in out and "H200 141GB" in out
    # a format-1 bundle (the golden one) carries no facts, and says so
    golden = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "bundle.tar"
    r = airgap("inspect", str(golden))
    assert r.returncode == 0 and "model facts: none (airgap-bundle/1 does not carry them)" in (
        r.stdout.decode()
    )
