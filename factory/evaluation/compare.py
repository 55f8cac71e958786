"""Paired comparison of two evals on the same items: B − A with a paired-bootstrap CI and McNemar's p.

Pairing matters: both models answer the *same* items, so the item-to-item noise cancels and a
difference far smaller than either model's own CI can still be significant. Accuracy differences get
a paired bootstrap interval and McNemar's exact test on the discordant items; the NLL suite gets the
paired bootstrap interval of the difference in NLL per token (negative = B finds the references more
likely, i.e. better).
"""

from __future__ import annotations

import polars as pl

from factory.evaluation import stats
from factory.evaluation.run import EVAL_VERSION, SUITES, EvalError
from factory.records import canonical_json, content_id
from factory.warehouse import StageStats, Warehouse

COMPARISON_SCHEMA: dict[str, pl.DataType] = {
    "run_a": pl.String(), "run_b": pl.String(), "model_a": pl.String(), "model_b": pl.String(),
    "model_id_a": pl.String(), "model_id_b": pl.String(), "suite": pl.String(), "metric": pl.String(),
    "n": pl.Int64(), "a": pl.Float64(), "b": pl.Float64(), "diff": pl.Float64(), "ci_low": pl.Float64(),
    "ci_high": pl.Float64(), "a_only": pl.Int64(), "b_only": pl.Int64(), "p_mcnemar": pl.Float64(),
    "significant": pl.Boolean(), "eval_version": pl.String(),
}


def compare_runs(wh: Warehouse, run_a: str, run_b: str, n_boot: int = 10_000, seed: int = 0) -> pl.DataFrame:
    """One row per suite both runs have: A's and B's score, B − A, its 95% CI and (accuracy) McNemar's p."""
    evals = wh.read("evals")
    if evals.is_empty():
        raise EvalError(f"no evals in {wh.root}")
    a_rows, b_rows = evals.filter(pl.col("run_id") == run_a), evals.filter(pl.col("run_id") == run_b)
    for run, rows in ((run_a, a_rows), (run_b, b_rows)):
        if rows.is_empty():
            raise EvalError(f"no eval rows for run {run!r} in {wh.root}")
    versions = {run: sorted(set(rows["eval_version"].to_list())) for run, rows in ((run_a, a_rows), (run_b, b_rows))}
    if versions[run_a] != versions[run_b]:
        raise EvalError(f"runs {run_a} and {run_b} were graded by different eval versions ({versions[run_a]} vs "
                        f"{versions[run_b]}): evaluate both with this version")
    out = []
    for suite in SUITES:
        a = a_rows.filter(pl.col("suite") == suite)
        b = b_rows.filter(pl.col("suite") == suite)
        if a.is_empty() or b.is_empty():
            continue
        joined = a.join(b, on="item_id", suffix="_b").sort("item_id")
        if joined.is_empty():
            raise EvalError(f"{suite}: runs {run_a} and {run_b} share no items (different seeds or versions?)")
        row = {"run_a": run_a, "run_b": run_b, "model_a": a["model"][0], "model_b": b["model"][0],
               "model_id_a": a["model_id"][0], "model_id_b": b["model_id"][0], "suite": suite, "n": joined.height,
               "eval_version": EVAL_VERSION}
        if suite == "nll":
            diff, lo, hi = stats.paired_nll_diff(joined["nll"].to_list(), joined["tokens"].to_list(),
                                                 joined["nll_b"].to_list(), joined["tokens_b"].to_list(), n_boot, seed)
            row.update(metric="nll_per_token", a=float(joined["nll"].sum() / joined["tokens"].sum()),
                       b=float(joined["nll_b"].sum() / joined["tokens_b"].sum()), diff=diff, ci_low=lo, ci_high=hi)
        else:
            ca = joined["correct"].cast(pl.Int64).to_list()
            cb = joined["correct_b"].cast(pl.Int64).to_list()
            diff, lo, hi = stats.paired_bootstrap_diff(ca, cb, n_boot, seed)
            a_only = sum(1 for x, y in zip(ca, cb, strict=True) if x and not y)
            b_only = sum(1 for x, y in zip(ca, cb, strict=True) if y and not x)
            row.update(metric="accuracy", a=sum(ca) / len(ca), b=sum(cb) / len(cb), diff=diff, ci_low=lo,
                       ci_high=hi, a_only=a_only, b_only=b_only, p_mcnemar=stats.mcnemar_exact(a_only, b_only))
        row["significant"] = bool(row["ci_low"] > 0 or row["ci_high"] < 0)
        out.append(row)
    if not out:
        raise EvalError(f"runs {run_a} and {run_b} have no suite in common")
    return pl.DataFrame(out, schema=COMPARISON_SCHEMA)


def record_comparison(wh: Warehouse, comparison: pl.DataFrame) -> str:
    """Store a comparison in the ``eval_comparisons`` table (run ``evalcmp-…``), replacing the last one of
    the same two runs (a run that gained a suite since then gives a longer comparison)."""
    run_a, run_b = comparison["run_a"][0], comparison["run_b"][0]
    run_id = f"evalcmp-{content_id(run_a, run_b)[:12]}"
    config = canonical_json({"run_a": run_a, "run_b": run_b, "eval_version": EVAL_VERSION})
    wh.begin_run(run_id, "eval-compare", config, content_id("evalcmp", config), 0)
    wh.commit_stage(run_id, "compare", {"eval_comparisons": comparison},
                    StageStats("eval:compare", 0, comparison.height, comparison.height, 0))
    wh.finish_run(run_id, "done")
    return run_id
