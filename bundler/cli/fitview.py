"""``airgap inspect``'s model facts and fit table (rendered with rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from bundler.describe import BundleInfo


def render_fit(console: Console, info: BundleInfo) -> None:
    """The signed model facts, then each common GPU at TP 1/2/4/8."""
    from rich.table import Table

    from bundler.gpu.catalog import TP_SIZES, cell_text, facts_line
    from bundler.gpu.fit import OVERHEAD_NOTE

    facts = info.model_facts
    if facts is None:
        if info.format == "airgap-bundle/1":
            console.print("model facts: none (airgap-bundle/1 does not carry them)")
        return
    console.print(f"model facts (signed): {facts_line(facts)}")
    for note in facts.notes:
        console.print(f"  note: {note}")
    if not info.fit:
        return
    t = Table("GPU", *(f"TP {tp}" for tp in TP_SIZES), title="fits? (as vLLM budgets memory)")
    for gpu in dict.fromkeys(c.gpu for c in info.fit):
        cells = {c.tp: cell_text(c) for c in info.fit if c.gpu == gpu}
        t.add_row(gpu, *(cells.get(tp, "") for tp in TP_SIZES))
    console.print(t)
    first = next((c.fit for c in info.fit if c.fit is not None), None)
    if first is not None and first.why_not:
        console.print(f"KV cache: cannot estimate ({first.why_not})")
    console.print(OVERHEAD_NOTE)
