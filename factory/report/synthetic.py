"""A demo-shaped run of any size, written straight through the warehouse API without a model.

The report's tests and its benchmark need runs with every section filled (rejects at each stage, judge
calibration, dedup clusters, scores kept and dropped) at sizes a real model cannot make here in
minutes: 100,000 samples. Counts in the ``stages`` rows match the records written, as the runner's do.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl

from factory.warehouse import StageStats, Warehouse

CATEGORIES = ["brainstorming", "classification", "closed_qa", "extraction", "open_qa", "rewriting",
              "summarization", "arithmetic", "coding"]
TOPICS = ["a library", "a bakery", "a river", "the moon", "a train", "a garden", "a museum", "a storm", "a school",
          "a market", "a bridge", "a forest"]
VERBS = ["Describe", "List three facts about", "Write a haiku about", "Summarize the history of", "Explain",
         "Give two uses of"]


def _ids(prefix: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}:{i}".encode()).hexdigest()[:16] for i in range(n)]


def _lineage(run_id: str, stage: str, n: int, producer: str, template: str | None) -> dict[str, list]:
    return {"run_id": [run_id] * n, "stage": [stage] * n, "round": [0] * n, "producer": [producer] * n,
            "template_id": [template] * n, "gen_params": ['{"max_tokens":160,"temperature":0.7}'] * n}


def _rejects(run_id: str, stage: str, kind: str, ids: list[str], reasons: list[str], raw: list[str],
             related: list[str | None] | None = None, similarity: list[float | None] | None = None) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame({
        "reject_id": _ids(f"reject:{stage}:{kind}", n) if n else [], "run_id": [run_id] * n, "stage": [stage] * n,
        "round": [0] * n, "record_kind": [kind] * n, "record_id": ids, "reason": reasons,
        "detail": [f"{r} (synthetic)" for r in reasons], "raw": raw, "related_id": related or [None] * n,
        "similarity": similarity or [None] * n}, schema_overrides={"related_id": pl.String, "similarity": pl.Float64})


def make_run(wh: Warehouse, samples: int, run_id: str | None = None, seed: int = 0) -> str:
    """Write a finished demo-shaped run with ``samples`` answers; returns its run id."""
    rng = np.random.default_rng(seed)
    run_id = run_id or f"synthetic-{samples}"
    model = "synthetic-model"
    wh.begin_run(run_id, "synthetic", json.dumps({"samples": samples}), hashlib.sha256(run_id.encode()).hexdigest(), 0)

    # seeds: a few human tasks
    n_seeds = 45
    seed_ids = _ids(f"{run_id}:seed", n_seeds)
    seeds = pl.DataFrame({
        "task_id": seed_ids, "instruction": [f"{VERBS[i % 6]} {TOPICS[i % 12]} (seed {i})." for i in range(n_seeds)],
        "input": [""] * n_seeds, "gold_answer": [f"A careful human answer number {i}." for i in range(n_seeds)],
        "category": [CATEGORIES[i % 9] for i in range(n_seeds)], "source": ["seed"] * n_seeds, "op": ["seed"] * n_seeds,
        "parent_ids": [[] for _ in range(n_seeds)], **_lineage(run_id, "seeds", n_seeds, "human", None)})
    _commit(wh, run_id, "seeds", 0, {"tasks": seeds, "rejects": _rejects(run_id, "seeds", "task", [], [], [])},
            n_seeds, n_seeds)

    # self_instruct: one task per two samples, and rejected candidates
    n_tasks = max(1, samples // 2)
    task_ids = _ids(f"{run_id}:task", n_tasks)
    cat = rng.integers(0, 9, n_tasks)
    parents = rng.integers(0, n_seeds, (n_tasks, 2))
    tasks = pl.DataFrame({
        "task_id": task_ids,
        "instruction": [f"{VERBS[(i * 7) % 6]} {TOPICS[(i * 5) % 12]}, variant {i}." for i in range(n_tasks)],
        "input": [""] * n_tasks, "gold_answer": [None] * n_tasks, "category": [CATEGORIES[c] for c in cat],
        "source": ["self_instruct"] * n_tasks, "op": ["self_instruct"] * n_tasks,
        "novelty_score": rng.uniform(0.1, 0.7, n_tasks).round(4),
        "parent_ids": [[seed_ids[a], seed_ids[b]] for a, b in parents],
        **_lineage(run_id, "self_instruct", n_tasks, model, "self_instruct/propose@1")})
    n_cand = max(1, n_tasks // 8)
    cand_reasons = [["too_similar", "non_ascii_start", "too_short", "dangling_reference"][i % 4] for i in range(n_cand)]
    cand = _rejects(run_id, "self_instruct", "task_candidate", _ids(f"{run_id}:cand", n_cand), cand_reasons,
                    [f"Candidate task {i} that was not good enough." for i in range(n_cand)])
    _commit(wh, run_id, "self_instruct", 1, {"tasks": tasks, "rejects": cand}, n_seeds, n_tasks, calls=n_tasks // 4 + 1,
            tokens=(n_tasks * 60, n_tasks * 40))

    # self_label: two answers per task; some answers rejected before they became samples
    sample_ids = _ids(f"{run_id}:sample", samples)
    of_task = np.arange(samples) // 2 % n_tasks
    words = rng.integers(3, 180, samples)
    sample_rows = pl.DataFrame({
        "sample_id": sample_ids, "task_id": [task_ids[t] for t in of_task], "sample_index": (np.arange(samples) % 2),
        "instruction": tasks["instruction"].gather(of_task), "input": [""] * samples,
        "category": tasks["category"].gather(of_task),
        "output": [f"Answer {i}: " + " ".join(["word"] * int(w)) + "." for i, w in enumerate(words)],
        "finish_reason": ["stop"] * samples, "prompt_tokens": [40] * samples, "completion_tokens": words.tolist(),
        "parent_ids": [[task_ids[t]] for t in of_task],
        **_lineage(run_id, "self_label", samples, model, "self_label/answer@1")})
    n_trunc = max(1, samples // 20)
    trunc = _rejects(run_id, "self_label", "sample", _ids(f"{run_id}:trunc", n_trunc), ["truncated"] * n_trunc,
                     [f"An answer cut at max_tokens {i}" for i in range(n_trunc)],
                     related=[task_ids[i % n_tasks] for i in range(n_trunc)])
    _commit(wh, run_id, "self_label", 2, {"samples": sample_rows, "rejects": trunc}, n_tasks, samples,
            calls=samples + n_trunc, tokens=(samples * 40, int(words.sum())))

    # judge: a calibration set and one additive judgment per sample
    pairs = 6
    calib_targets = [f"calibration:{p:016x}:{side}:{['truncated', 'shuffled', 'off_topic'][p % 3]}"
                     for p in range(pairs) for side in ("good", "bad")]
    calib_scores = [float(4 - (p % 2)) if t.split(":")[2] == "good" else float(1 + (p % 3))
                    for p, t in zip([p for p in range(pairs) for _ in range(2)], calib_targets, strict=True)]
    judge_scores = rng.integers(0, 6, samples).astype(float)
    judge_scores[rng.random(samples) < 0.02] = np.nan  # parse failures
    n_j = pairs * 2 + samples
    judgments = pl.DataFrame({
        "judgment_id": _ids(f"{run_id}:judgment", n_j),
        "kind": ["calibration"] * (pairs * 2) + ["additive-5"] * samples,
        "target_ids": [[t] for t in calib_targets] + [[s] for s in sample_ids],
        "task_id": [None] * (pairs * 2) + sample_rows["task_id"].to_list(), "judge_model": [model] * n_j,
        "judge_template_id": ["judge/additive5-json@1"] * n_j, "repeat_index": [0] * n_j,
        "raw_text": ['{"score": 3}'] * n_j, "score": calib_scores + judge_scores.tolist(),
        "parsed_ok": [True] * (pairs * 2) + (~np.isnan(judge_scores)).tolist(),
        "parent_ids": [[t] for t in calib_targets] + [[s] for s in sample_ids],
        **_lineage(run_id, "judge", n_j, model, "judge/additive5-json@1")},
        schema_overrides={"task_id": pl.String}).with_columns(pl.col("score").fill_nan(None))
    failures = int(np.isnan(judge_scores).sum())
    metrics = {"calibration_accuracy": 0.8333, "calibration_pairs": pairs, "calibration_parse_failure_rate": 0.0,
               "calibration_passed": True, "trusted": True, "judged_samples": samples, "judgments": samples,
               "parse_failures": failures, "parse_failure_rate": round(failures / samples, 4),
               "judge_mean": round(float(np.nanmean(judge_scores)) / 5, 4)}
    no_rejects = _rejects(run_id, "judge", "sample", [], [], [])
    _commit(wh, run_id, "judge", 3, {"judgments": judgments, "rejects": no_rejects}, samples, n_j, calls=n_j,
            tokens=(n_j * 300, n_j * 20), metrics=metrics)

    # dedup: every 12th sample duplicates the one before it
    dup_idx = np.arange(1, samples, 12)
    keeper_idx = dup_idx - 1
    kinds = ["near" if i % 2 else "semantic" for i in range(len(dup_idx))]
    sims = rng.uniform(0.82, 0.99, len(dup_idx)).round(4)
    clusters = pl.DataFrame({
        "cluster_id": [c for k in keeper_idx for c in (sample_ids[k], sample_ids[k])],
        "record_id": [r for k, d in zip(keeper_idx, dup_idx, strict=True) for r in (sample_ids[k], sample_ids[d])],
        "kept": [b for _ in dup_idx for b in (True, False)], "kind": [k for k in kinds for _ in range(2)],
        "similarity": [s for sim in sims for s in (1.0, float(sim))], "run_id": [run_id] * (2 * len(dup_idx)),
        "stage": ["dedup"] * (2 * len(dup_idx)), "record_kind": ["sample"] * (2 * len(dup_idx))})
    dups = _rejects(run_id, "dedup", "sample", [sample_ids[d] for d in dup_idx], [f"{k}_duplicate" for k in kinds],
                    [None] * len(dup_idx), related=[sample_ids[k] for k in keeper_idx], similarity=sims.tolist())
    _commit(wh, run_id, "dedup", 4, {"rejects": dups, "dedup_clusters": clusters}, samples, samples - len(dup_idx))

    # score: features, a composite, keep/drop
    left = np.setdiff1d(np.arange(samples), dup_idx)
    m = len(left)
    composite = rng.beta(5, 2, m).round(4)
    refusal = rng.random(m) < 0.03
    keep = (composite >= 0.5) & ~refusal
    reasons = [(["refusal"] if r else []) + (["low_composite"] if c < 0.5 else []) for r, c in zip(refusal, composite,
                                                                                                   strict=True)]
    w = words[left]
    scores = pl.DataFrame({
        "sample_id": [sample_ids[i] for i in left], "answer_chars": (w * 5 + 12).tolist(), "answer_words": w.tolist(),
        "instruction_words": rng.integers(4, 14, m).tolist(), "word_repetition": rng.uniform(0, 0.9, m).round(4),
        "ngram_repetition": rng.uniform(0, 0.4, m).round(4), "non_alpha_ratio": rng.uniform(0, 0.3, m).round(4),
        "symbol_ratio": rng.uniform(0, 0.1, m).round(4), "refusal": refusal, "echo": rng.random(m) < 0.02,
        "unfinished": rng.random(m) < 0.05, "ends_cleanly": rng.random(m) < 0.9,
        "judge_mean": (judge_scores[left] / 5).round(4), "heuristic": composite, "composite": composite,
        "keep": keep, "drop_reasons": reasons, "task_id": [sample_rows["task_id"][int(i)] for i in left],
        "run_id": [run_id] * m, "stage": ["score"] * m, "round": [0] * m,
    }).with_columns(pl.col("judge_mean").fill_nan(None))
    dropped = np.flatnonzero(~keep)
    score_rejects = _rejects(run_id, "score", "sample", [sample_ids[left[i]] for i in dropped],
                             ["low_quality"] * len(dropped), [None] * len(dropped))
    _commit(wh, run_id, "score", 5, {"scores": scores, "rejects": score_rejects}, m, int(keep.sum()))
    wh.finish_run(run_id, "done")
    return run_id


def _commit(wh: Warehouse, run_id: str, stage: str, position: int, tables: dict[str, pl.DataFrame], n_in: int,
            n_out: int, calls: int = 0, tokens: tuple[int, int] = (0, 0), metrics: dict | None = None) -> None:
    rejected = tables["rejects"].height
    wh.commit_stage(run_id, stage, tables, StageStats(
        kind=stage, position=position, records_in=n_in, records_out=n_out, records_rejected=rejected, calls=calls,
        cached_calls=calls // 10, prompt_tokens=tokens[0], completion_tokens=tokens[1], seconds=1.0 + position,
        metrics=json.dumps(metrics or {})))
