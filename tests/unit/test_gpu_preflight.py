"""The GPU rows of the install preflight: a signed index and nvidia-smi output in, rows and
the decision out (no engine; nvidia-smi's output comes from the fixtures)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from smi_fixtures import BUSY, H200, MIG, OLD_DRIVER, TWO_A100_80, FakeGpu, FakeHost
from test_preflight import facts as preflight_facts

from bundler.bundle.index import BLOB_PREFIX, Index
from bundler.errors import AirgapError, InstallError
from bundler.facts import ModelFacts, WeightFacts
from bundler.install.fit import gpu_preflight, runtime_row
from bundler.install.options import Check, InstallOptions
from bundler.install.preflight import decide, evaluate
from bundler.install.records import ServeOptions
from bundler.oci.engine import RuntimeInfo

CUDA_128 = "cuda>=12.8 brand=tesla,driver>=535,driver<536"


def _blob(seed: str, size: int = 10) -> tuple[str, dict[str, Any]]:
    sha = hashlib.sha256(seed.encode()).hexdigest()
    return "sha256:" + sha, {
        "path": BLOB_PREFIX + sha,
        "size": size,
        "sha256": sha,
        "chunks": [sha],
    }


LLAMA = ModelFacts(
    architecture="LlamaForCausalLM",
    dtype="bfloat16",
    layers=80,
    attention_heads=64,
    kv_heads=8,
    hidden_size=8192,
    max_position_embeddings=131072,
    weights=WeightFacts(
        files=("m.safetensors",), bytes=141_107_412_992, params=1, dtypes={"BF16": 141_107_412_992}
    ),
)


def index(
    facts: ModelFacts | None = LLAMA, tp: int = 2, require: str | None = CUDA_128, v1: bool = False
) -> Index:
    man, man_file = _blob("manifest")
    cfg, cfg_file = _blob("config")
    layer, layer_file = _blob("layer")
    image: dict[str, Any] = {
        "role": "vllm",
        "ref": "r.example/vllm:1",
        "platform": "linux/amd64",
        "manifest_digest": man,
        "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
        "config_digest": cfg,
        "layers": [{"digest": layer, "size": 10, "media_type": "x"}],
    }
    if require and not v1:
        image["cuda"] = {"require": require}
    doc: dict[str, Any] = {
        "format": "airgap-bundle/1" if v1 else "airgap-bundle/2",
        "tool": "airgap test",
        "name": "llama",
        "version": 1,
        "created": "2026-01-01T00:00:00Z",
        "expires": "2027-01-01T00:00:00Z",
        "chunk_size": 65536,
        "manifest": {
            "apiVersion": "airgap/v1",
            "kind": "Bundle",
            "name": "llama",
            "version": 1,
            "model": {"path": "./w", "served_name": "llama"},
            "images": {"vllm": "r.example/vllm:1", "nginx": "r.example/nginx:1"},
            "serve": {"max_model_len": 65536, "tensor_parallel_size": tp},
        },
        "lock": {},
        "files": sorted([man_file, cfg_file, layer_file], key=lambda f: f["path"]),
        "images": [image],
    }
    if not v1:
        doc["requires"] = "airgap>=0.2.0"
        if facts is not None:
            doc["model_facts"] = facts.model_dump(mode="json")
    return Index.model_validate(doc)


DOCKER = RuntimeInfo(
    "docker", "unix:///x", "27", "1.47", True, "", None, runtimes=("nvidia", "runc")
)


def opts(**kw: Any) -> InstallOptions:
    serve = ServeOptions(gpus=kw.pop("gpus", "all"), extra_vllm_args=kw.pop("extra", ()))
    return InstallOptions(bundle="b.tar", trusted={}, serve=serve, **kw)


def rows(
    host: FakeHost, idx: Index | None = None, **kw: Any
) -> tuple[dict[str, Check], dict[str, AirgapError]]:
    errors: dict[str, AirgapError] = {}
    checks = gpu_preflight(
        idx or index(), opts(**kw), DOCKER, errors, runner=host.runner(), cdi_dirs=()
    )
    return {c.name: c for c in checks}, errors


def refusal(host: FakeHost, idx: Index | None = None, **kw: Any) -> AirgapError:
    """Through the preflight table and decision, as install runs them."""
    errors: dict[str, AirgapError] = {}
    o = opts(**kw)
    gpu = tuple(gpu_preflight(idx or index(), o, DOCKER, errors, host.runner(), cdi_dirs=()))
    f = dataclasses.replace(preflight_facts(), gpus=gpu, gpu_errors=errors)
    with pytest.raises(AirgapError) as e:
        decide(f, evaluate(f, o), o)
    return e.value


FOUR_A100_80 = FakeHost(tuple(FakeGpu(i) for i in range(4)), driver="570.124.06", cuda="12.8")


def test_fits_on_four_a100_80gb() -> None:
    r, errors = rows(FOUR_A100_80, index(tp=4))
    assert errors == {}
    assert [(n, c.ok) for n, c in r.items()] == [
        ("gpu runtime", True),
        ("gpus", True),
        ("driver", True),
        ("tensor parallel", True),
        ("gpu memory", True),
        ("fit", True),
    ]
    assert (
        r["gpus"].detail == "4 x NVIDIA A100-SXM4-80GB (GPU 0,1,2,3), driver 570.124.06, CUDA 12.8"
    )
    assert "max context ~131,072 tokens" in r["fit"].detail
    assert "6.3 full-length sequences at once" in r["fit"].detail
    f = dataclasses.replace(preflight_facts(), gpus=tuple(r.values()))
    assert decide(f, evaluate(f, opts()), opts()).value == "proceed"


def test_does_not_fit_on_two_a100_80gb_with_the_numbers_and_ways_out() -> None:
    r, _ = rows(TWO_A100_80)
    assert r["fit"].ok is False
    err = refusal(TWO_A100_80)
    assert isinstance(err, InstallError)
    assert err.message == (
        "llama v1 on 2 x NVIDIA A100-SXM4-80GB: does not fit: per GPU: weights 65.7 GiB + "
        "overhead ~7.1 GiB (estimate) + KV 10.0 GiB for 65,536 tokens = 82.8 GiB of 71.5 GiB "
        "(79.4 GiB x 0.9)"
    )
    assert err.hint.startswith("Ways out: GPUs with more memory, or more of them")
    for way in ("--kv-cache-dtype fp8", "FP8 or AWQ", "--skip-fit-check"):
        assert way in err.hint
    # the weights alone leave no room: a shorter context would not help, so it is not offered
    assert "max_model_len" not in err.hint
    two_h200 = FakeHost(tuple(FakeGpu(i, "NVIDIA H200", 143771, 616, 0, "9.0") for i in range(2)))
    err = refusal(two_h200, extra=("--max-model-len", "800000"))
    assert "KV 122.1 GiB for 800,000 tokens" in err.message
    budget = int((143771 - 616) * 2**20 * 0.9)
    overhead = int(3.6 * 2**30) + int(1.26 * 2**30) * 2 + 2**30
    fits = (budget - 141_107_412_992 // 2 - overhead) // (2 * 80 * 4 * 128 * 2)
    assert fits == 347_285
    assert f"a lower max_model_len (<= {fits:,} would fit)" in err.hint


def test_skip_fit_check_makes_it_a_warning() -> None:
    r, errors = rows(TWO_A100_80, skip_fit_check=True)
    assert r["fit"].ok is None and r["fit"].detail.endswith("(--skip-fit-check)")
    assert "fit" not in errors


def test_tensor_parallel_size_must_divide_the_heads_and_fit_the_gpus() -> None:
    eight = FakeHost(tuple(FakeGpu(i) for i in range(8)))
    err = refusal(eight, index(tp=3))
    assert err.message == "tensor_parallel_size 3 does not divide the 64 attention heads"
    err = refusal(TWO_A100_80, index(tp=4))
    assert err.message == (
        "tensor_parallel_size 4 x pipeline_parallel_size 1 needs 4 GPUs; 2 chosen"
    )
    # --gpus chooses fewer than all
    err = refusal(FOUR_A100_80, index(tp=4), gpus="0,1")
    assert "needs 4 GPUs; 2 chosen" in err.message


def test_busy_gpu_is_refused() -> None:
    tiny = LLAMA.model_copy(
        update={"weights": LLAMA.weights and LLAMA.weights.model_copy(update={"bytes": 1})}
    )
    err = refusal(BUSY, index(tiny, tp=1))
    assert err.message == (
        "not enough free GPU memory: GPU 0 (NVIDIA H200): 51.9 GiB free of 139.8 GiB, "
        "vLLM asks 125.8 GiB (total x 0.9)"
    )
    assert "nvidia-smi" in err.hint and "--gpus" in err.hint


def test_old_driver_names_the_driver_needed() -> None:
    old = FakeHost(OLD_DRIVER.gpus, driver="550.54.15", cuda="12.4")
    tiny = LLAMA.model_copy(update={"layers": 2})
    err = refusal(old, index(tiny, tp=1))
    assert err.message == (
        "driver 550.54.15 (CUDA 12.4) is too old for image vllm "
        "(cuda>=12.8 brand=tesla,driver>=535,driver<536): CUDA 12.8 needs driver >= 570.26"
    )
    assert err.hint.startswith("Install NVIDIA driver >= 570.26")
    # a 535 datacenter driver on a Tesla-branded GPU meets the forward-compat alternative
    tesla = FakeHost(
        (dataclasses.replace(OLD_DRIVER.gpus[0], brand="Tesla"),), "535.104.05", "12.2"
    )
    r, _ = rows(tesla, index(tiny, tp=1))
    assert r["driver"].ok is True
    # --skip-driver-check: a warning
    r, errors = rows(old, index(tiny, tp=1), skip_driver_check=True)
    assert r["driver"].ok is None and "driver" not in errors


def test_no_gpu_runtime_is_refused_and_cdi_counts(tmp_path: Path) -> None:
    bare = RuntimeInfo("podman", "unix:///x", "5", "1.41", False, "", None, runtimes=("crun",))
    row = runtime_row(bare, cdi_dirs=(str(tmp_path),))
    assert row.ok is False and "no CDI spec for nvidia.com/gpu" in row.detail
    (tmp_path / "nvidia.yaml").write_text(
        'cdiVersion: "0.5.0"\nkind: nvidia.com/gpu\ndevices: []\n'
    )
    row = runtime_row(bare, cdi_dirs=(str(tmp_path),))
    assert row.ok is True and str(tmp_path / "nvidia.yaml") in row.detail
    # Docker without the nvidia runtime, its hook, or CDI: refused with the toolkit's commands
    docker = dataclasses.replace(DOCKER, runtimes=("runc",))
    errors: dict[str, AirgapError] = {}
    checks = gpu_preflight(index(), opts(), docker, errors, H200.runner(), cdi_dirs=())
    assert checks[0].ok is False and "nvidia-ctk" in errors["gpu runtime"].hint


def test_mig_is_a_warning() -> None:
    r, _ = rows(MIG, index(LLAMA.model_copy(update={"layers": 2}), tp=1))
    assert r["mig"].ok is None and "MIG mode is on for GPU 0" in r["mig"].detail


def test_a_format_1_bundle_is_not_fit_checked() -> None:
    r, errors = rows(H200, index(None, tp=1, v1=True))
    assert r["fit"] == Check(
        "fit", None, "not checked: airgap-bundle/1 carries no model facts (rebuild to get them)"
    )
    assert r["driver"].ok is None and errors == {}


def test_missing_nvidia_smi_is_a_preflight_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    errors: dict[str, AirgapError] = {}
    checks = gpu_preflight(index(), opts(), DOCKER, errors, runner=None, cdi_dirs=())
    assert checks[-1].name == "gpus" and checks[-1].ok is False
    assert "--no-gpu" in errors["gpus"].hint


def test_vllm_arg_overrides_count() -> None:
    """--vllm-arg comes after the manifest's flags, so vLLM (and the check) take it."""
    r, _ = rows(TWO_A100_80, extra=("--max-model-len=8192", "--kv-cache-dtype", "fp8"))
    assert "KV 0.6 GiB for 8,192 tokens" in r["fit"].detail
