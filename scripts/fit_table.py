"""The GPU fit table of the shipped manifests, as Markdown (for the README).

    python scripts/fit_table.py            # prints the tables

The model facts come from ``manifests/model-facts.json`` (computed from each model's
published config: the weights are its tensor shapes x 2 bytes, not measured; a built
bundle's index carries the measured facts and ``airgap inspect`` prints its own table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's bundler

from bundler.facts import ModelFacts  # noqa: E402
from bundler.gpu import catalog, fit  # noqa: E402
from bundler.manifest import Manifest, load_manifest  # noqa: E402

FACTS = REPO / "manifests" / "model-facts.json"


def shipped() -> list[tuple[Path, Manifest, ModelFacts | None]]:
    """Every shipped manifest with its model's facts (None when the file has none)."""
    facts = {k: ModelFacts.model_validate(v) for k, v in json.loads(FACTS.read_text()).items()}
    out = []
    for path in sorted((REPO / "manifests").glob("*.yaml")):
        m = load_manifest(path)
        out.append((path, m, facts.get(m.model.repo or "")))
    return out


def matrix(cells: list[catalog.Cell]) -> list[str]:
    """A Markdown table: common GPUs x TP 1/2/4/8."""
    lines = [
        "| GPU | " + " | ".join(f"TP {tp}" for tp in catalog.TP_SIZES) + " |",
        "|---|" + "---|" * len(catalog.TP_SIZES),
    ]
    for gpu in dict.fromkeys(c.gpu for c in cells):
        row = {c.tp: catalog.cell_text(c) for c in cells if c.gpu == gpu}
        lines.append(f"| {gpu} | " + " | ".join(row.get(tp, "") for tp in catalog.TP_SIZES) + " |")
    return lines


def markdown() -> str:
    out: list[str] = []
    for path, m, facts in shipped():
        if facts is None:
            continue
        shape = fit.shape_of(m.serve)
        out.append(
            f"**{path.name}** ({m.images.vllm if isinstance(m.images.vllm, str) else 'archive'}; "
            f"max_model_len {shape.max_model_len:,}, manifest TP {shape.tp}): "
            f"{catalog.facts_line(facts)}"
        )
        out.append("")
        out += matrix(catalog.fit_table(facts, shape))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
