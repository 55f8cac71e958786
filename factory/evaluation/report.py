"""How an eval is shown: rich tables for the terminal and one JSON document for ``--json``."""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from factory.evaluation.run import EvalResult


def _pct(x: float | None) -> str:
    return "" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _value(metric: str, x: float | None, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return ""
    if metric == "accuracy":
        return f"{100 * x:+.1f} pp" if signed else _pct(x)
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _ci(metric: str, lo: float | None, hi: float | None, signed: bool = False) -> str:
    if lo is None or hi is None or math.isnan(lo):
        return ""
    if metric == "accuracy":
        fmt = "{:+.1f}" if signed else "{:.1f}"
        return f"[{fmt.format(100 * lo)}, {fmt.format(100 * hi)}]"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def summary_table(result: EvalResult) -> Table:
    table = Table(title=f"{result.model} ({result.model_id}) — run {result.run_id}", header_style="bold")
    for col in ("suite", "n", "metric", "value", "95% CI", "detail", "seconds"):
        table.add_column(col, justify="right" if col in ("n", "value", "seconds") else "left")
    for r in result.summaries.iter_rows(named=True):
        detail = ""
        if r["metric"] == "accuracy":
            detail = f"{r['correct']}/{r['n']} correct" + (f", {r['truncated']} cut at max_tokens"
                                                        if r["truncated"] else "")
        else:
            detail = f"{r['tokens']} answer tokens (lower is better)"
        table.add_row(r["suite"], str(r["n"]), r["metric"], _value(r["metric"], r["value"]),
                      _ci(r["metric"], r["ci_low"], r["ci_high"]), detail, f"{r['seconds']:.1f}")
    for suite, why in result.unsupported.items():
        table.add_row(suite, "", "", "", "", f"[yellow]{why}[/]", "")
    before = [s for s in result.summaries["suite"].to_list() if s not in result.ran]
    if result.ran:
        table.caption = f"model loaded in {result.load_seconds:.1f}s" + (
            f"; already in the warehouse: {', '.join(before)}" if before else "")
    elif not result.summaries.is_empty():
        table.caption = "every suite was already in the warehouse (rerun with other --n/--seed for new items)"
    return table


def comparison_table(comparison: pl.DataFrame) -> Table:
    first = comparison.row(0, named=True)
    table = Table(title=f"paired: B = {first['model_b']} vs A = {first['model_a']}", header_style="bold")
    for col in ("suite", "n", "A", "B", "B − A", "95% CI (paired bootstrap)", "McNemar p", "A only / B only"):
        table.add_column(col, justify="left" if col == "suite" else "right")
    for r in comparison.iter_rows(named=True):
        m = r["metric"]
        mark = " *" if r["significant"] else ""
        table.add_row(r["suite"] + (" (NLL/token)" if m != "accuracy" else ""), str(r["n"]), _value(m, r["a"]),
                      _value(m, r["b"]), _value(m, r["diff"], signed=True) + mark,
                      _ci(m, r["ci_low"], r["ci_high"], signed=True),
                      "" if r["p_mcnemar"] is None else f"{r['p_mcnemar']:.3g}",
                      "" if r["a_only"] is None else f"{r['a_only']} / {r['b_only']}")
    table.caption = "* the 95% CI excludes 0. NLL: negative = B finds the held-out answers more likely."
    return table


def _jsonable(df: pl.DataFrame) -> list[dict[str, Any]]:
    rows = df.to_dicts()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and math.isnan(v):
                row[k] = None
        if isinstance(row.get("by_kind"), str):
            row["by_kind"] = json.loads(row["by_kind"])
    return rows


def as_json(result: EvalResult, against: EvalResult | None = None, comparison: pl.DataFrame | None = None) -> str:
    doc: dict[str, Any] = {"model": result.model, "model_id": result.model_id, "run_id": result.run_id,
                           "summaries": _jsonable(result.summaries), "unsupported": result.unsupported,
                           "answered_now": result.ran, "load_seconds": result.load_seconds}
    if against is not None and comparison is not None:
        doc["against"] = {"model": against.model, "model_id": against.model_id, "run_id": against.run_id,
                          "summaries": _jsonable(against.summaries)}
        doc["comparison"] = _jsonable(comparison)
    return json.dumps(doc, indent=1, default=str)


def show(console: Console, result: EvalResult, against: EvalResult | None = None,
         comparison: pl.DataFrame | None = None) -> None:
    if against is not None:
        console.print(summary_table(against))
    console.print(summary_table(result))
    if comparison is not None:
        console.print(comparison_table(comparison))
