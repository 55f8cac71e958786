"""``factory evolve``: the self-evolution loop, round after round, until the gain stops being significant.

Round r (model_0 is the pipeline's backend model)::

    run the pipeline with model_r ─► publish release r ─► train model_{r+1} (from the base or model_r)
        ─► evaluate model_{r+1} against model_r, paired ─► a row in `rounds` (+ `round_evals`)

Every phase is idempotent, so a run killed anywhere resumes where it was: the round's pipeline run has
a fixed id (finished stages are skipped, model calls come from the cache), publishing the same records
again is a no-op, training resumes from its last checkpoint (or finds the finished model), and the
evals are warehouse runs with fixed ids. A round is recorded only when all of it is done.
"""

from __future__ import annotations

import json
import time
from typing import Any

import polars as pl

from factory.evolve_config import VERIFIABLE, EvolveConfig
from factory.records import canonical_json, content_id


class EvolveError(RuntimeError):
    """An evolve run that cannot go on as configured; the message says what to change."""


def _identity(pipeline: Any, ev: EvolveConfig) -> str:
    """What decides the rounds' data and models (not how many rounds, not when to stop)."""
    data = pipeline.model_dump(mode="json", exclude={"warehouse", "evolve", "round"})
    replay = "seed-gold" if ev.include_gold else None  # what each release holds besides the round's records
    return content_id("evolve", data, ev.train.model_dump(mode="json"), ev.eval.model_dump(mode="json"), replay)


def _round_pipeline(pipeline: Any, model: str, r: int) -> Any:
    backend = pipeline.backend.model_copy(update={"model": model})
    return pipeline.model_copy(update={"round": r, "evolve": None, "backend": backend})


def _method_mix(release: Any) -> dict[str, int]:
    """Rows per method in a release: sft rows by the source (op) of their task, preference rows by rule."""
    mix: dict[str, int] = {}
    sft = release.to_polars("sft")
    if "source" in sft.columns:
        for source, n in sft.group_by("source").len().sort("source").iter_rows():
            mix[f"sft:{source}"] = n
    if "preference" in release.configs:
        pref = release.to_polars("preference")
        rules = pref["rule"] if "rule" in pref.columns else pl.Series(["pairs"] * pref.height)
        for rule, n in rules.value_counts(sort=True).iter_rows():
            mix[f"preference:{rule}"] = n
    return mix


def _stage_totals(wh: Any, run_id: str) -> tuple[float, int]:
    with wh.connect(read_only=True) as con:
        row = con.execute("SELECT coalesce(sum(seconds), 0), coalesce(sum(prompt_tokens + completion_tokens), 0) "
                          "FROM stages WHERE run_id = ?", [run_id]).fetchone()
    return float(row[0]), int(row[1])


def evolve(pipeline: Any, rounds: int | None = None, show_progress: bool = True, log=print) -> pl.DataFrame:
    """Run (or resume) the rounds of ``pipeline``'s ``evolve:`` section; returns the ``rounds`` rows."""
    from factory import releases
    from factory.evaluation import EvalConfig, compare_runs, evaluate, record_comparison
    from factory.runner import run_pipeline
    from factory.training.config import TrainConfig
    from factory.training.trainer import train
    from factory.warehouse import StageStats, Warehouse

    ev: EvolveConfig = pipeline.evolve or EvolveConfig()
    if pipeline.backend is None or not hasattr(pipeline.backend, "model"):
        raise EvolveError("evolve needs a `backend:` that loads local weights (transformers or vllm), so that "
                          "round r can generate with the model trained in round r-1")
    if any(s.kind == "publish" for s in pipeline.stages):
        raise EvolveError("remove the publish stage: evolve publishes each round's release itself")
    total = rounds or ev.rounds
    wh = Warehouse(pipeline.warehouse)
    ident = _identity(pipeline, ev)
    evolve_id = f"evolve-{pipeline.name}-{ident[:10]}"
    release_name = ev.release or f"{pipeline.name}-evolve-{ident[:6]}"
    base = pipeline.backend.model
    wh.begin_run(evolve_id, f"evolve:{pipeline.name}", canonical_json(
        {"pipeline": pipeline.model_dump(mode="json"), "identity": ident}), ident, 0)
    eval_cfg = EvalConfig(suites=list(ev.eval.suites), n=ev.eval.n, seed=ev.eval.seed)

    def eval_backend(model: str) -> Any:
        return pipeline.backend.model_copy(update={"model": model})

    done = wh.read("rounds", run_id=evolve_id)
    rows = done.sort("round").to_dicts() if not done.is_empty() else []
    try:
        model_r, quiet_rounds = base, 0
        for row in rows:  # finished rounds: only their outcome matters
            model_r = row["model_out"]
            quiet_rounds = 0 if row["gain_significant"] else quiet_rounds + 1
        for r in range(len(rows), total):
            if quiet_rounds >= ev.patience:
                log(f"stopping: no significant gain for {quiet_rounds} round(s) (patience {ev.patience})")
                break
            began = time.perf_counter()
            log(f"round {r}: generating with {model_r}")
            round_cfg = _round_pipeline(pipeline, model_r, r)
            run_id = f"{pipeline.name}-r{r}-{round_cfg.config_hash[:10]}"
            run_pipeline(round_cfg, run_id=run_id, show_progress=show_progress)
            published = releases.publish(wh, release_name, [run_id], releases.ReleaseSpec(
                version=f"{r + 1}.0.0", tags=["self-evolution", f"round-{r}"],
                description=f"round {r} of {evolve_id}, generated by {model_r}", include_gold=ev.include_gold,
                gold_sources=["seed"]))  # the seeds' human answers, never a problem generator's bare references
            release = releases.open(published.ref, wh)
            start = base if ev.train.start_from == "base" else model_r
            name = f"{pipeline.name}-{ident[:6]}-r{r + 1}"
            log(f"round {r}: training {name} from {start} on {published.ref}")
            methods = ["sft", "dpo"] if ev.train.method == "sft+dpo" else [ev.train.method]
            trained = []
            for i, method in enumerate(methods):
                step_name = name if i == len(methods) - 1 else f"{name}-{method}"
                trained.append(train(TrainConfig(
                    **ev.train.options, release=published.ref, method=method, warehouse=wh.root, name=step_name,
                    base_model=trained[-1].entry.name if trained else start, quiet=not show_progress)))
            # transformers resolves registered names; other engines (vllm) get the folder
            model_next = trained[-1].entry.name if pipeline.backend.kind == "transformers" else str(trained[-1].path)
            log(f"round {r}: evaluating {model_next} against {model_r}")
            a = evaluate(eval_backend(model_r), eval_cfg, wh, show_progress=show_progress)
            b = evaluate(eval_backend(model_next), eval_cfg, wh, show_progress=show_progress)
            comparison = compare_runs(wh, a.run_id, b.run_id)
            record_comparison(wh, comparison)
            gain = bool(comparison.filter(pl.col("suite").is_in(VERIFIABLE) & (pl.col("ci_low") > 0)).height)
            nll_worse = bool(comparison.filter((pl.col("suite") == "nll") & (pl.col("ci_low") > 0)).height)
            gen_s, gen_tokens = _stage_totals(wh, run_id)
            eval_s, eval_tokens = _stage_totals(wh, b.run_id)
            row = {"evolve_id": evolve_id, "pipeline": pipeline.name, "round": r, "model_in": model_r,
                   "model_out": model_next, "start_model": start, "run_id": run_id, "release": published.ref,
                   "train_method": ev.train.method, "method_mix": json.dumps(_method_mix(release), sort_keys=True),
                   "sft_rows": release.manifest["configs"]["sft"]["rows"],
                   "preference_rows": release.manifest["configs"].get("preference", {}).get("rows", 0),
                   "first_loss": trained[0].training.get("first_loss"),
                   "final_loss": trained[-1].training.get("final_loss"),
                   "generate_s": round(gen_s, 1), "train_s": round(sum(t.training["wall_time_s"] for t in trained), 1),
                   "eval_s": round(eval_s, 1), "wall_s": round(time.perf_counter() - began, 1),
                   "generate_tokens": gen_tokens, "eval_tokens": eval_tokens,
                   "gain_significant": gain, "nll_significantly_worse": nll_worse}
            summaries = b.summaries.select("suite", "metric", "n", "value", "ci_low", "ci_high")
            per_suite = comparison.select(
                pl.lit(evolve_id).alias("evolve_id"), pl.lit(r).alias("round"), "suite", "metric", "n",
                pl.col("a").alias("model_in_value"), pl.col("b").alias("model_out_value"), "diff",
                pl.col("ci_low").alias("diff_ci_low"), pl.col("ci_high").alias("diff_ci_high"), "p_mcnemar",
                "significant").join(summaries.select("suite", pl.col("ci_low").alias("model_out_ci_low"),
                                                     pl.col("ci_high").alias("model_out_ci_high")), on="suite",
                                    how="left")
            wh.commit_stage(evolve_id, f"round-{r}", {"rounds": pl.DataFrame([row]), "round_evals": per_suite},
                            StageStats("evolve:round", r, 1, 1, 0, seconds=row["wall_s"],
                                       metrics=json.dumps({"gain_significant": gain})))
            rows.append(row)
            log(f"round {r}: {'significant gain' if gain else 'no significant gain'}; " + "; ".join(
                f"{s['suite']} {s['diff']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
                for s in comparison.iter_rows(named=True)))
            model_r = model_next
            quiet_rounds = 0 if gain else quiet_rounds + 1
    except BaseException as exc:
        wh.finish_run(evolve_id, "failed" if isinstance(exc, Exception) else "interrupted",
                      f"{type(exc).__name__}: {exc}")
        raise
    wh.finish_run(evolve_id, "done")
    return pl.DataFrame(rows) if rows else pl.DataFrame()
