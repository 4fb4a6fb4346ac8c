"""The fit table for common GPUs: "what hardware does this bundle need?", answered on the
connected side from the signed facts alone (``airgap inspect``).

Memory is what ``nvidia-smi`` reports as ``memory.total`` on each card, less the ~0.5 %
the driver reserves (on the H200 of ``tests/fixtures/nvidia-smi``: 143771 MiB total, 616
MiB reserved): CUDA, and so vLLM, counts the rest. Real cards vary by a few hundred MiB.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bundler.facts import ModelFacts
from bundler.fmt import human
from bundler.gpu.fit import Fit, ServeShape, estimate, parallel_problem

MIB = 1024 * 1024
GIB = 1024 * MIB
RESERVED = 0.0043  # the share the driver keeps (616 / 143771 on the H200 fixture)

# name -> memory.total in MiB as nvidia-smi reports it
COMMON_GPUS: tuple[tuple[str, int], ...] = (
    ("A100 40GB", 40960),
    ("A100 80GB", 81920),
    ("H100 80GB", 81559),
    ("H200 141GB", 143771),
    ("L40S 48GB", 46068),
    ("L4 24GB", 23034),
)
TP_SIZES = (1, 2, 4, 8)


def usable(total_mib: int) -> int:
    return int(total_mib * (1 - RESERVED)) * MIB


@dataclass(frozen=True)
class Cell:
    gpu: str
    tp: int
    fit: Fit | None  # None: this TP is not possible for the model, or nothing to estimate
    why: str = ""  # when fit is None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"gpu": self.gpu, "tensor_parallel_size": self.tp}
        if self.fit is None:
            return {**out, "fits": None, "why": self.why}
        f = self.fit
        return {
            **out,
            "fits": f.fits,
            "budget_bytes": f.budget,
            "weights_bytes": f.weights,
            "overhead_bytes": f.overhead,
            "kv_bytes": f.kv_needed,
            "max_context": f.max_context,
            "concurrency": round(f.concurrency, 2) if f.concurrency is not None else None,
            "why": f.why_not or None,
        }


def fit_table(facts: ModelFacts, shape: ServeShape) -> list[Cell]:
    """Each common GPU at TP 1, 2, 4 and 8 (pipeline parallel as the manifest sets it)."""
    cells = []
    for name, total in COMMON_GPUS:
        for tp in TP_SIZES:
            s = replace(shape, tp=tp)
            problem = parallel_problem(facts, s)
            if problem:
                cells.append(Cell(name, tp, None, problem))
                continue
            result = estimate(facts, s, usable(total))
            if isinstance(result, str):
                cells.append(Cell(name, tp, None, result))
            else:
                cells.append(Cell(name, tp, result))
    return cells


def smallest_fit(cells: list[Cell], gpu: str) -> Cell | None:
    """The lowest TP at which the model fits on ``gpu`` (None: not even at 8)."""
    return next((c for c in cells if c.gpu == gpu and c.fit is not None and c.fit.fits), None)


def cell_text(c: Cell) -> str:
    """A short cell for a table: "yes: 6.3 seqs", "no: 82.8 > 71.7 GiB", "n/a"."""
    if c.fit is None:
        return "n/a (heads)" if "divide" in c.why else "?"
    f = c.fit
    if f.fits is False:
        return f"no: {f.need / GIB:.1f} > {f.budget / GIB:.1f} GiB"
    if f.fits is None:
        return f"? weights fit ({(f.weights + f.overhead) / GIB:.1f} GiB), KV unknown"
    return f"yes: {_times(f.concurrency or 0)} seqs, ctx {_tokens(f.max_context or 0)}"


def _tokens(n: int) -> str:
    return f"{n}" if n < 1000 else f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def _times(x: float) -> str:
    return f"{x:.1f}x" if x < 1000 else "1000+x"


def facts_line(facts: ModelFacts) -> str:
    """The model's signed facts in one line."""
    parts = [facts.architecture or facts.model_type or "model"]
    for label, value in (
        ("layers", facts.layers),
        ("heads", facts.attention_heads),
        ("KV heads", facts.kv_heads),
        ("head_dim", facts.effective_head_dim),
        ("hidden", facts.hidden_size),
    ):
        if value is not None:
            parts.append(f"{value} {label}")
    if facts.dtype:
        parts.append(facts.dtype)
    if facts.quantization:
        parts.append(f"quantized: {facts.quantization}")
    if facts.sliding_window:
        parts.append(f"sliding window {facts.sliding_window}")
    if facts.kv_lora_rank:
        parts.append(f"MLA (kv_lora_rank {facts.kv_lora_rank})")
    if facts.hybrid:
        parts.append(f"hybrid ({facts.hybrid})")
    w = facts.weights
    if w is not None:
        by = ", ".join(f"{d} {human(n)}" for d, n in sorted(w.dtypes.items()))
        files = f"{len(w.files)} file{'s' if len(w.files) != 1 else ''}"
        parts.append(f"weights {human(w.bytes)} in {files} ({by})")
    return ", ".join(parts)
