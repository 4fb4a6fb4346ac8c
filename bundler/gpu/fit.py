"""Does the model fit, as vLLM budgets GPU memory? Pure arithmetic on signed facts.

vLLM takes ``total x gpu_memory_utilization`` of each GPU (and refuses to start when a
GPU has less free than that); in it go this rank's share of the weights, the non-KV
overhead, and the KV cache, which must hold at least one ``max_model_len`` sequence:

    weights / (TP x PP)  +  overhead  +  kv_per_token x max_model_len  <=  total x util
    kv_per_token = 2 x layers/PP x max(1, kv_heads / TP) x head_dim x bytes(kv dtype)

KV heads are replicated when TP exceeds them; head_dim falls back to hidden / heads.

**The overhead is an estimate**, not a measurement. vLLM measures it at start-up by
profiling one forward pass; the constants below come from vLLM's own profiling log
(vllm-project/vllm#10511, Llama-3-8B on an 80 GB H100: ``non_torch_memory`` 1.79 GiB
at TP 1 and 3.58 GiB at TP 2 — CUDA context, cuBLAS workspaces, NCCL and custom
all-reduce buffers — and ``PyTorch activation peak memory`` 1.26 GiB at hidden size
4096, scaled here with the hidden size) plus 1 GiB for CUDA graphs (0 with
``--enforce-eager``). Real figures vary with ``max_num_batched_tokens``, the attention
backend and the vLLM version by a GiB or two: near the limit, trust vLLM's own log.

Sliding-window (when the window is shorter than ``max_model_len``), MLA and hybrid
(Mamba / linear attention) models keep a different KV cache: for them the KV figure is
"cannot estimate", and only weights + overhead are checked.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any

from bundler.facts import ModelFacts
from bundler.manifest import Serve

GiB = 1 << 30
NON_TORCH_SINGLE = int(1.8 * GiB)
NON_TORCH_PARALLEL = int(3.6 * GiB)
ACTIVATION_PER_4096_HIDDEN = int(1.26 * GiB)
CUDA_GRAPHS = 1 * GiB
OVERHEAD_NOTE = (
    "overhead per GPU is an estimate (CUDA context, NCCL, activations, CUDA graphs; from "
    "vLLM's own profiling log): near the limit, vLLM's start-up log decides"
)
DEFAULT_UTIL = 0.9  # vLLM's default --gpu-memory-utilization
FP8 = frozenset({"fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"})
_DTYPE_BYTES = {"half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}
_FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclass(frozen=True)
class ServeShape:
    """The vLLM flags that decide memory, as vLLM will read its command line."""

    max_model_len: int | None = None
    tp: int = 1
    pp: int = 1
    util: float = DEFAULT_UTIL
    kv_cache_dtype: str = "auto"
    dtype: str = "auto"
    enforce_eager: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


_FLAGS = {
    "--max-model-len": "max_model_len",
    "--tensor-parallel-size": "tp",
    "-tp": "tp",
    "--pipeline-parallel-size": "pp",
    "-pp": "pp",
    "--gpu-memory-utilization": "util",
    "--kv-cache-dtype": "kv_cache_dtype",
    "--dtype": "dtype",
}


def _value(name: str, text: str) -> int | float | str:
    if name == "util":
        return float(text)
    if name in ("max_model_len", "tp", "pp"):
        t = text.lower().replace("_", "")
        mult = {"k": 1000, "m": 1_000_000}.get(t[-1:], 1)  # vLLM accepts 64k, 1m
        return int(float(t[:-1]) * mult) if mult > 1 else int(t)
    return text


def serve_shape(argv: list[str]) -> ServeShape:
    """Read the memory flags of a vLLM command line (the last one of a flag wins, as in
    argparse; ``--flag=value`` and ``--flag value`` alike). Unreadable values are left
    to vLLM's own parser, which refuses them at start."""
    shape = ServeShape()
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag == "--enforce-eager":
            shape = replace(shape, enforce_eager=True)
        elif flag in _FLAGS:
            text = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if eq else 1
            with contextlib.suppress(ValueError, IndexError):
                change: dict[str, Any] = {_FLAGS[flag]: _value(_FLAGS[flag], text)}
                shape = replace(shape, **change)
        i += 1
    return shape


def shape_of(serve: Serve, extra: tuple[str, ...] = ()) -> ServeShape:
    """The shape of a manifest's ``serve`` section plus install-time ``--vllm-arg`` flags."""
    argv: list[str] = []
    if serve.max_model_len is not None:
        argv += ["--max-model-len", str(serve.max_model_len)]
    argv += ["--tensor-parallel-size", str(serve.tensor_parallel_size)]
    argv += ["--pipeline-parallel-size", str(serve.pipeline_parallel_size)]
    if serve.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
    if serve.dtype:
        argv += ["--dtype", serve.dtype]
    return serve_shape([*argv, *serve.extra_args, *extra])


def kv_bytes_per_element(facts: ModelFacts, shape: ServeShape) -> tuple[int, str]:
    """Bytes of one KV element and why: the KV dtype, else the model's dtype."""
    if shape.kv_cache_dtype in FP8:
        return 1, f"--kv-cache-dtype {shape.kv_cache_dtype}"
    if shape.kv_cache_dtype in _DTYPE_BYTES:
        return _DTYPE_BYTES[shape.kv_cache_dtype], f"--kv-cache-dtype {shape.kv_cache_dtype}"
    if shape.dtype in _DTYPE_BYTES:
        return _DTYPE_BYTES[shape.dtype], f"--dtype {shape.dtype}"
    dtype = facts.dtype
    if dtype is None and facts.weights and facts.weights.dtypes:
        floats = {d: n for d, n in facts.weights.dtypes.items() if d in _FLOAT_DTYPES}
        dtype = _FLOAT_DTYPES[max(floats, key=floats.__getitem__)] if floats else None
    # vLLM's "auto" runs float32 checkpoints in 16 bits on GPUs.
    return 2, f"model dtype {dtype or 'unknown: assumed 16-bit'}"


@dataclass(frozen=True)
class Fit:
    """One configuration's budget per GPU, in bytes. ``kv_per_token`` None: not estimable."""

    gpu_total: int
    shape: ServeShape
    max_model_len: int
    weights: int  # per GPU
    overhead: int  # per GPU, estimated
    kv_per_token: int | None  # per GPU
    why_not: str = ""  # why the KV cache cannot be estimated
    model_limit: int | None = None  # the longest context the model takes (max_position_embeddings)
    caveat: str = ""  # what the estimate leaves out for this model

    @property
    def budget(self) -> int:
        return int(self.gpu_total * self.shape.util)

    @property
    def kv_needed(self) -> int | None:
        return None if self.kv_per_token is None else self.kv_per_token * self.max_model_len

    @property
    def need(self) -> int:
        return self.weights + self.overhead + (self.kv_needed or 0)

    @property
    def fits(self) -> bool | None:
        """True / False; None when the KV cache cannot be estimated and the rest fits."""
        if self.need > self.budget:
            return False
        return None if self.kv_per_token is None else True

    @property
    def kv_space(self) -> int:
        return max(0, self.budget - self.weights - self.overhead)

    @property
    def kv_room(self) -> int | None:
        """Tokens of KV cache that fit in what is left (all sequences together)."""
        return None if not self.kv_per_token else self.kv_space // self.kv_per_token

    @property
    def max_context(self) -> int | None:
        """The longest single context: the KV room, capped by what the model takes."""
        room = self.kv_room
        limit = max(self.model_limit or 0, self.max_model_len)
        return None if room is None else min(room, limit) if self.model_limit else room

    @property
    def concurrency(self) -> float | None:
        kv = self.kv_needed
        return None if not kv else self.kv_space / kv


def overhead(facts: ModelFacts, shape: ServeShape) -> int:
    """The estimated non-KV memory per GPU beyond the weights (see the module docstring)."""
    non_torch = NON_TORCH_PARALLEL if shape.gpus > 1 else NON_TORCH_SINGLE
    hidden = facts.hidden_size or 4096
    activations = ACTIVATION_PER_4096_HIDDEN * hidden // 4096
    return non_torch + activations + (0 if shape.enforce_eager else CUDA_GRAPHS)


def kv_unknown(facts: ModelFacts, max_model_len: int) -> str:
    """Why this model's KV cache cannot be estimated by the formula ("" when it can)."""
    if facts.kv_lora_rank:
        return f"MLA attention (kv_lora_rank {facts.kv_lora_rank}) caches a latent, not heads"
    if facts.hybrid:
        return f"hybrid model ({facts.hybrid}): not every layer keeps a KV cache"
    if facts.sliding_window and facts.sliding_window < max_model_len:
        return f"sliding window of {facts.sliding_window} tokens (< max_model_len)"
    missing = [
        name
        for name, value in (
            ("layers", facts.layers),
            ("kv heads", facts.kv_heads),
            ("head_dim", facts.effective_head_dim),
        )
        if value is None
    ]
    return f"the config does not give {', '.join(missing)}" if missing else ""


def estimate(facts: ModelFacts, shape: ServeShape, gpu_total: int) -> Fit | str:
    """The budget of one GPU of ``gpu_total`` bytes; a string says why there is none."""
    if facts.weights is None:
        why = next((n for n in facts.notes if "weights" in n or "safetensors" in n), "")
        return f"weights not measured at build{': ' + why if why else ''}"
    max_len = shape.max_model_len or facts.max_position_embeddings
    if not max_len:
        return "no max_model_len, and the config gives no max_position_embeddings"
    why_not = kv_unknown(facts, max_len)
    kv_token = None
    if not why_not:
        assert facts.layers and facts.kv_heads and facts.effective_head_dim
        per_elem, _ = kv_bytes_per_element(facts, shape)
        heads = max(1, facts.kv_heads // shape.tp)
        layers = math.ceil(facts.layers / shape.pp)
        kv_token = 2 * layers * heads * facts.effective_head_dim * per_elem
    return Fit(
        gpu_total=gpu_total,
        shape=shape,
        max_model_len=max_len,
        weights=math.ceil(facts.weights.bytes / shape.gpus),
        overhead=overhead(facts, shape),
        kv_per_token=kv_token,
        why_not=why_not,
        model_limit=facts.max_position_embeddings,
        caveat=(
            "multimodal: the vision encoder's activations are not in the overhead estimate"
            if facts.text_config
            else ""
        ),
    )


def parallel_problem(facts: ModelFacts, shape: ServeShape) -> str:
    """vLLM's own refusals of a tensor-parallel size for this model ("" when none)."""
    tp, heads, kv = shape.tp, facts.attention_heads, facts.kv_heads
    if heads and heads % tp:
        return f"tensor_parallel_size {tp} does not divide the {heads} attention heads"
    if kv and (tp % kv if tp >= kv else kv % tp):
        return f"tensor_parallel_size {tp} and the {kv} KV heads do not divide one another"
    return ""


def gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"


def describe(fit: Fit) -> str:
    """One line with the numbers: the budget, what goes in, and what is left."""
    s = fit.shape
    parts = [
        f"per GPU: weights {gib(fit.weights)} + overhead ~{gib(fit.overhead)} (estimate)",
    ]
    if fit.kv_needed is not None:
        parts.append(f"+ KV {gib(fit.kv_needed)} for {fit.max_model_len:,} tokens")
    line = " ".join(parts) + (
        f" = {gib(fit.need)} of {gib(fit.budget)} ({gib(fit.gpu_total)} x {s.util:g})"
    )
    if fit.why_not:
        return line + f"; KV cache: cannot estimate ({fit.why_not})"
    if fit.fits:
        ctx, room, conc = fit.max_context or 0, fit.kv_room or 0, fit.concurrency or 0.0
        line += f"; max context ~{ctx:,} tokens"
        line += f" (KV room for {room:,})" if room > ctx else ""
        line += f", {conc:.1f} full-length sequences at once"
    return line + (f"; {fit.caveat}" if fit.caveat else "")


def ways_out(fit: Fit, gpus_here: int | None = None) -> str:
    """What would make a refused configuration fit."""
    s = fit.shape
    out = []
    if gpus_here is None or gpus_here > s.gpus:
        out.append(f"more GPUs with a higher tensor_parallel_size (now {s.tp})")
    else:
        out.append(f"GPUs with more memory, or more of them (tensor_parallel_size {s.tp} now)")
    if fit.kv_per_token and fit.max_model_len:
        fits_len = max(0, fit.kv_space // fit.kv_per_token)
        if fits_len:
            out.append(f"a lower max_model_len (<= {fits_len:,} would fit)")
    if s.kv_cache_dtype == "auto":
        out.append("--kv-cache-dtype fp8")
    out.append("an FP8 or AWQ variant of the model")
    if s.util < 0.95:
        out.append(f"a higher --gpu-memory-utilization (now {s.util:g})")
    return "; ".join(out)
