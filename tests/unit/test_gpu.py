"""nvidia-smi output -> GPU facts; NVIDIA_REQUIRE_CUDA against a driver; the fit arithmetic.

The H200 capture in tests/fixtures/nvidia-smi is real; other hosts are edited copies
(``smi_fixtures``).
"""

from __future__ import annotations

import pytest
from smi_fixtures import H200_UUID, TWO_A100_80, FakeGpu, FakeHost, real_query, real_xml

from bundler.errors import InstallError
from bundler.facts import ModelFacts, WeightFacts
from bundler.gpu import catalog, cuda, fit, smi
from bundler.gpu.fit import GiB

# -- nvidia-smi -----------------------------------------------------------------------------


def test_the_real_h200_capture() -> None:
    calls: list[list[str]] = []

    def run(args: list[str]) -> str:
        calls.append(args)
        return real_xml() if args == ["-q", "-x"] else real_query()

    host = smi.read_host(run)
    assert calls == [
        [f"--query-gpu={smi.QUERY}", "--format=csv,noheader,nounits"],
        ["-q", "-x"],
    ]
    assert (host.driver, host.cuda, host.problems) == ("580.159.04", "13.0", ())
    (g,) = host.gpus
    assert (g.index, g.name, g.uuid, g.compute_cap) == (0, "NVIDIA H200", H200_UUID, "9.0")
    assert (g.total_mib, g.used_mib, g.free_mib, g.reserved_mib) == (143771, 0, 143156, 616)
    assert g.total == (143771 - 616) * 2**20  # what CUDA counts: nvidia-smi's total less reserved
    assert g.mig is False and g.brand == "NVIDIA"


def test_edited_hosts_parse_like_the_real_one() -> None:
    host = smi.read_host(TWO_A100_80.runner())
    assert [g.name for g in host.gpus] == ["NVIDIA A100-SXM4-80GB"] * 2
    assert (host.driver, host.cuda) == ("570.124.06", "12.8")
    mig = FakeHost((FakeGpu(0, mig=True), FakeGpu(1)))
    assert [g.mig for g in smi.read_host(mig.runner()).gpus] == [True, False]


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (
            '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            "<nvidia_smi_log><driver_version>&b;</driver_version></nvidia_smi_log>",
            "entities or an internal DTD",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE l SYSTEM "x.dtd" [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            "<nvidia_smi_log><driver_version>&e;</driver_version></nvidia_smi_log>",
            "entities or an internal DTD",
        ),
        (  # an internal subset without entities (attribute defaults) is refused too
            '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ATTLIST gpu id CDATA "x">]>'
            "<nvidia_smi_log><driver_version>1</driver_version></nvidia_smi_log>",
            "entities or an internal DTD",
        ),
        ("<nvidia_smi_log>" + "<a>" * 40 + "</a>" * 40 + "</nvidia_smi_log>", "too deep"),
        ("<nvidia_smi_log><gpu>", "not well-formed"),
    ],
)
def test_hostile_or_broken_xml_is_refused(xml: str, message: str) -> None:
    with pytest.raises(InstallError, match=message):
        smi.parse_xml(xml)


def test_the_real_doctype_is_accepted_without_fetching_its_dtd() -> None:
    assert real_xml().splitlines()[1].startswith("<!DOCTYPE nvidia_smi_log SYSTEM")
    assert smi.parse_xml(real_xml()).cuda == "13.0"


def test_query_rows_are_checked() -> None:
    with pytest.raises(InstallError, match="expected 8 fields"):
        smi.parse_query("0, NVIDIA H200, 143771\n")
    with pytest.raises(InstallError, match=r"memory.total is '\[N/A\]'"):
        smi.parse_query("0, X, GPU-1, [N/A], 0, 0, 580.1, 9.0\n")
    with pytest.raises(InstallError, match="lists no GPU"):
        smi.parse_query("\n")


def test_gpu_selection_by_index_and_uuid() -> None:
    gpus = smi.read_host(FakeHost(tuple(FakeGpu(i) for i in range(4))).runner()).gpus
    assert smi.select(gpus, "all") == gpus
    assert [g.index for g in smi.select(gpus, "2,0")] == [2, 0]
    assert [g.index for g in smi.select(gpus, gpus[3].uuid)] == [3]
    assert [g.index for g in smi.select(gpus, gpus[1].uuid[:12])] == [1]  # a unique prefix
    with pytest.raises(InstallError, match="'7', which is not one GPU"):
        smi.select(gpus, "0,7")
    with pytest.raises(InstallError, match="twice"):
        smi.select(gpus, "1,1")
    with pytest.raises(InstallError, match="'GPU-0000'"):  # matches all four: not one GPU
        smi.select(gpus, "GPU-0000")


def test_missing_nvidia_smi_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InstallError) as e:
        smi.read_host()
    assert "nvidia-smi is not on PATH" in e.value.message
    assert "--no-gpu" in e.value.hint


# -- the image's CUDA requirement -------------------------------------------------------------

# What NVIDIA's CUDA 12.8.1 images set (abridged to three of their alternatives).
CUDA_128 = (
    "cuda>=12.8 brand=unknown,driver>=470,driver<471 brand=tesla,driver>=535,driver<536 "
    "brand=nvidia,driver>=535,driver<536"
)


def host(driver: str, cuda_version: str | None, brand: str = "NVIDIA") -> cuda.HostProps:
    return cuda.HostProps(cuda_version, driver, "9.0", cuda.brand_name(brand))


def test_requirement_grammar() -> None:
    req = cuda.parse_requirement(CUDA_128)
    assert [[str(c) for c in term] for term in req] == [
        ["cuda>=12.8"],
        ["brand=unknown", "driver>=470", "driver<471"],
        ["brand=tesla", "driver>=535", "driver<536"],
        ["brand=nvidia", "driver>=535", "driver<536"],
    ]
    assert cuda.parse_requirement("cuda>=12.8 foo>=1,driver>=1") == (
        (cuda.Constraint("cuda", ">=", "12.8"),),
        (cuda.Constraint("driver", ">=", "1"),),  # unknown properties are skipped
    )
    with pytest.raises(cuda.RequirementError):
        cuda.parse_requirement("cuda12.8")
    with pytest.raises(cuda.RequirementError):
        cuda.parse_requirement("cuda>=twelve")


def test_driver_verdicts() -> None:
    image = cuda.ImageCuda(require=CUDA_128, version="12.8.1")
    assert cuda.judge(image, host("580.159.04", "13.0")).ok is True
    # a 535 datacenter driver: allowed through the forward-compatibility alternative
    assert cuda.judge(image, host("535.104.05", "12.2")).ok is True
    old = cuda.judge(image, host("550.54.15", "12.4"))
    assert old.ok is False and old.needed_driver == "570.26"
    assert old.detail == (
        "driver 550.54.15 (CUDA 12.4) is too old for image vllm (cuda>=12.8 …): "
        "CUDA 12.8 needs driver >= 570.26"
    )
    # a legacy image (CUDA_VERSION only) requires its major.minor
    legacy = cuda.ImageCuda(version="12.9.1")
    assert cuda.requirement_of(legacy) == "cuda>=12.9"
    assert cuda.judge(legacy, host("570.124.06", "12.8")).needed_driver == "575.51.03"
    # NVIDIA_DISABLE_REQUIRE=true turns the check off, as the toolkit does
    off = cuda.ImageCuda(require="cuda>=13.0", disable_require="true")
    assert cuda.judge(off, host("535.104.05", "12.2")).ok is None
    assert cuda.judge(None, host("535.104.05", "12.2")).ok is None
    # no CUDA version from nvidia-smi: the table tells it from the driver
    assert cuda.cuda_of_driver("550.54.15") == "12.4" and cuda.cuda_of_driver("400.1") is None


# -- fit ------------------------------------------------------------------------------------

LLAMA_70B = ModelFacts(
    architecture="LlamaForCausalLM",
    dtype="bfloat16",
    layers=80,
    attention_heads=64,
    kv_heads=8,
    hidden_size=8192,
    max_position_embeddings=131072,
    weights=WeightFacts(
        files=("model-00001-of-00030.safetensors",),
        bytes=141_107_412_992,
        params=70_553_706_496,
        dtypes={"BF16": 141_107_412_992},
    ),
)
A100_80 = (81920 - 565) * 2**20


def test_llama_70b_64k_does_not_fit_two_a100_80gb() -> None:
    shape = fit.ServeShape(max_model_len=65536, tp=2, util=0.9)
    f = fit.estimate(LLAMA_70B, shape, A100_80)
    assert isinstance(f, fit.Fit)
    assert f.weights == 70_553_706_496  # per GPU: half of the exact bytes
    assert f.kv_per_token == 2 * 80 * 4 * 128 * 2  # 4 KV heads per rank, bf16: 160 KiB
    assert f.kv_needed == 10 * GiB
    assert (
        f.overhead == fit.NON_TORCH_PARALLEL + fit.ACTIVATION_PER_4096_HIDDEN * 2 + fit.CUDA_GRAPHS
    )
    assert f.budget == int(A100_80 * 0.9)
    assert f.fits is False and f.need > f.budget
    assert fit.describe(f) == (
        "per GPU: weights 65.7 GiB + overhead ~7.1 GiB (estimate) + KV 10.0 GiB for 65,536 "
        "tokens = 82.8 GiB of 71.5 GiB (79.4 GiB x 0.9)"
    )
    ways = fit.ways_out(f, gpus_here=2)
    assert "GPUs with more memory" in ways and "--kv-cache-dtype fp8" in ways
    assert "FP8 or AWQ" in ways and "--gpu-memory-utilization" in ways


def test_llama_70b_64k_fits_four_a100_80gb_with_context_and_concurrency() -> None:
    f = fit.estimate(LLAMA_70B, fit.ServeShape(max_model_len=65536, tp=4), A100_80)
    assert isinstance(f, fit.Fit) and f.fits is True
    assert f.kv_per_token == 2 * 80 * 2 * 128 * 2
    room = (f.budget - f.weights - f.overhead) // f.kv_per_token
    assert f.kv_room == room and f.max_context == min(room, 131072)
    assert f.concurrency == pytest.approx(
        (f.budget - f.weights - f.overhead) / (f.kv_per_token * 65536)
    )
    assert 6.0 < (f.concurrency or 0) < 6.5
    # fp8 KV halves the cache; a lower context shrinks it
    f8 = fit.estimate(
        LLAMA_70B, fit.ServeShape(max_model_len=65536, tp=4, kv_cache_dtype="fp8"), A100_80
    )
    assert isinstance(f8, fit.Fit) and f8.kv_per_token == f.kv_per_token // 2


def test_kv_heads_are_replicated_past_tp() -> None:
    f = fit.estimate(LLAMA_70B, fit.ServeShape(max_model_len=1024, tp=16), A100_80)
    assert isinstance(f, fit.Fit) and f.kv_per_token == 2 * 80 * 1 * 128 * 2


def test_tensor_parallel_must_divide_the_heads() -> None:
    assert fit.parallel_problem(LLAMA_70B, fit.ServeShape(tp=3)) == (
        "tensor_parallel_size 3 does not divide the 64 attention heads"
    )
    odd = LLAMA_70B.model_copy(update={"attention_heads": 48, "kv_heads": 8})
    assert "KV heads" in fit.parallel_problem(odd, fit.ServeShape(tp=6 * 2))
    assert fit.parallel_problem(LLAMA_70B, fit.ServeShape(tp=8)) == ""


@pytest.mark.parametrize(
    ("update", "why"),
    [
        ({"sliding_window": 4096}, "sliding window of 4096 tokens"),
        ({"kv_lora_rank": 512}, "MLA attention"),
        ({"hybrid": "model_type jamba"}, "hybrid model"),
        ({"layers": None}, "does not give layers"),
    ],
)
def test_cannot_estimate_says_why(update: dict[str, object], why: str) -> None:
    facts = LLAMA_70B.model_copy(update=update)
    f = fit.estimate(facts, fit.ServeShape(max_model_len=65536, tp=4), A100_80)
    assert isinstance(f, fit.Fit) and f.kv_per_token is None and why in f.why_not
    assert f.fits is None and "cannot estimate" in fit.describe(f)
    # the weights alone are still checked
    one = fit.estimate(facts, fit.ServeShape(max_model_len=65536, tp=1), A100_80)
    assert isinstance(one, fit.Fit) and one.fits is False


def test_sliding_window_longer_than_the_context_is_plain_attention() -> None:
    facts = LLAMA_70B.model_copy(update={"sliding_window": 131072})
    f = fit.estimate(facts, fit.ServeShape(max_model_len=65536, tp=4), A100_80)
    assert isinstance(f, fit.Fit) and f.kv_per_token is not None


def test_no_measured_weights_cannot_be_estimated() -> None:
    facts = LLAMA_70B.model_copy(update={"weights": None, "notes": ("model.safetensors: bad",)})
    assert fit.estimate(facts, fit.ServeShape(max_model_len=1024), A100_80) == (
        "weights not measured at build: model.safetensors: bad"
    )


def test_serve_shape_reads_the_command_line_as_vllm_does() -> None:
    s = fit.serve_shape(
        ["--max-model-len", "32k", "--tensor-parallel-size=2", "-tp", "4", "--kv-cache-dtype",
         "fp8", "--gpu-memory-utilization=0.95", "--enforce-eager", "--dtype", "half"]
    )  # fmt: skip
    assert s == fit.ServeShape(32000, 4, 1, 0.95, "fp8", "half", True)
    assert fit.serve_shape(["--max-model-len", "lots"]).max_model_len is None  # vLLM refuses it


def test_common_gpu_table() -> None:
    cells = catalog.fit_table(LLAMA_70B, fit.ServeShape(max_model_len=65536, tp=4))
    assert {c.gpu for c in cells} == {name for name, _ in catalog.COMMON_GPUS}
    by = {(c.gpu, c.tp): c for c in cells}
    assert catalog.smallest_fit(cells, "A100 80GB") is by[("A100 80GB", 4)]
    assert catalog.smallest_fit(cells, "H200 141GB") is by[("H200 141GB", 2)]
    assert catalog.smallest_fit(cells, "A100 40GB") is by[("A100 40GB", 8)]
    assert catalog.smallest_fit(cells, "L4 24GB") is None
    assert catalog.cell_text(by[("A100 80GB", 2)]).startswith("no: 82.8 > 71.7 GiB")
    assert catalog.cell_text(by[("A100 80GB", 4)]).startswith("yes: 6.3x seqs, ctx 131k")
