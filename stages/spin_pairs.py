"""SPIN pairs (Self-Play fine-tuning): the reference answer is chosen, the model's own answer rejected.

For every task with a reference (its ``gold_answer``, e.g. a seed's human answer, or a *verified* sample:
one a checker marked ``correct``, as ``rest_em`` does), each of up to ``pairs_per_task`` of the model's
own answers to it (samples of this run, from ``self_label``) becomes a ``pairs`` record with rule
``spin``: chosen = the reference, rejected = the model's answer, ``margin`` = 1 - ROUGE-L between them
(how far the model is from the reference). DPO on these pairs is one SPIN iteration.

The release builder joins pairs to ``samples`` by id to get their texts, so a gold reference is also
written here as a ``samples`` row (``op`` ``reference``, ``producer`` = the task's producer, ``human``
for seeds, sample id ``content_id("gold", task_id)``, the id ``publish``'s ``include_gold`` uses, so a
release never holds it twice). It is good SFT data, and the sft config includes it. A model answer that
lost to the reference gets a ``spin_rejected`` reject (``keep_rejected_in_sft`` turns this off): it stays
in ``samples`` for the pair to point at, but is not published as SFT data, as ReST-EM does with wrong answers.

Rejects (record kind ``pair_candidate`` unless said): ``no_reference`` (a task with neither),
``no_model_answer`` (nothing of the model's to pair with), ``identical_to_reference`` (ignoring spacing) /
``near_identical_to_reference`` (ROUGE-L >= ``max_rouge``, unless a checker graded the answer wrong: no
signal), ``duplicate_pair`` (an earlier stage already made this chosen/rejected pair).
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import Field

from factory.context import StageContext
from factory.records import content_id, derived_seed, frame, lineage, reject, task_prompt
from factory.similarity import rouge_l
from factory.stage import StageConfig, StageOutput, register

RULE = "spin"


class SpinPairsConfig(StageConfig):
    kind: Literal["spin_pairs"] = "spin_pairs"
    sources: list[str] | None = Field(None, description="only tasks of these sources (default: all)")
    references: list[Literal["gold", "verified"]] = Field(
        default_factory=lambda: ["gold", "verified"],
        description="what counts as a reference, in order of preference: the task's gold_answer, or a "
                    "sample a checker marked correct")
    pairs_per_task: int = Field(1, ge=1, le=64, description="model answers paired with each reference")
    max_rouge: float = Field(0.9, gt=0, le=1, description="a model answer this close to the reference "
                             "(ROUGE-L) carries no signal")
    also_rejected_for: list[str] = Field(
        default_factory=lambda: ["wrong_answer"],
        description="model answers an earlier stage rejected only for these reasons may still be the "
                    "rejected side (a checker's wrong answers are exactly what SPIN pushes away from)")
    keep_rejected_in_sft: bool = Field(False, description="leave the losing model answers in the sft data")

    consumes = ("tasks", "samples")
    produces = ("pairs", "samples")


def is_reference_sample(sample: dict[str, Any]) -> bool:
    """Samples that are not the model's own answers: references, passages, human-written."""
    producer = sample.get("producer") or ""
    return sample.get("op") == "reference" or producer == "human" or producer.startswith("passage:")


def reference_sample(ctx: StageContext, task: dict[str, Any]) -> dict[str, Any]:
    """The gold answer as a ``samples`` row, so the release can join a pair's chosen text."""
    return {"sample_id": content_id("gold", task["task_id"]), "task_id": task["task_id"], "sample_index": 0,
            "instruction": task["instruction"], "input": task["input"], "category": task["category"],
            "output": task["gold_answer"].strip(), "finish_reason": "stop", "prompt_tokens": 0,
            "completion_tokens": 0, "op": "reference",
            **lineage(ctx, producer=task.get("producer") or "human", parent_ids=[task["task_id"]])}


def signal(reference: str, answer: str, max_rouge: float, graded: bool = False) -> tuple[float, tuple[str, str] | None]:
    """(ROUGE-L, None) when the pair teaches something, else (ROUGE-L, (reason, detail)).

    Identity ignores spacing but not case. An answer a checker graded wrong differs from the reference in
    a way that matters however close the texts are ("RAIN" vs "rain" under an all-capitals rule), so only
    ungraded answers are held to ``max_rouge``.
    """
    if " ".join(reference.split()) == " ".join(answer.split()):
        return 1.0, ("identical_to_reference", "the model's answer is the reference (ignoring spacing)")
    score = rouge_l(reference, answer)
    if score >= max_rouge and not graded:
        return score, ("near_identical_to_reference", f"ROUGE-L {score:.3f} to the reference >= {max_rouge}")
    return score, None


@register(SpinPairsConfig)
def run(ctx: StageContext, cfg: SpinPairsConfig) -> StageOutput:
    tasks_df = ctx.inputs("tasks")
    if cfg.sources is not None:
        tasks_df = tasks_df.filter(pl.col("source").is_in(cfg.sources))
    tasks = sorted(tasks_df.unique("task_id", keep="first").to_dicts(), key=lambda t: t["task_id"])
    samples = ctx.warehouse.kept("samples", run_id=ctx.run_id, stages=ctx.earlier_stages,
                                 ignore_reasons=cfg.also_rejected_for)
    kept_ids = set(ctx.inputs("samples")["sample_id"].to_list())
    by_task: dict[str, list[dict[str, Any]]] = {}
    for s in samples.to_dicts():
        by_task.setdefault(s["task_id"], []).append(s)
    earlier = ctx.inputs("pairs")
    existing = set(zip(earlier["chosen_id"].to_list(), earlier["rejected_id"].to_list(), strict=True)) \
        if not earlier.is_empty() else set()

    pairs: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    counts = {"gold": 0, "verified": 0}
    for task in tasks:
        tid = task["task_id"]
        mine = by_task.get(tid, [])
        chosen, how = None, None
        for kind in cfg.references:
            if kind == "gold" and (task.get("gold_answer") or "").strip():
                chosen, how = reference_sample(ctx, task), "gold"
                break
            if kind == "verified":
                verified = sorted((s for s in mine if s.get("correct") is True and s["sample_id"] in kept_ids),
                                  key=lambda s: s["sample_id"])
                if verified:
                    chosen, how = verified[0], "verified"
                    break
        if chosen is None:
            rejects.append(reject(ctx, record_kind="pair_candidate", reason="no_reference", related_id=tid,
                                  raw=task_prompt(task), detail=f"task {tid} has no {' or '.join(cfg.references)} "
                                  "reference answer"))
            continue
        answers = [s for s in mine if not is_reference_sample(s) and s.get("correct") is not True
                   and s["sample_id"] != chosen["sample_id"]]
        answers.sort(key=lambda s: derived_seed(ctx.seed, "spin", s["sample_id"]))
        if not answers:
            rejects.append(reject(ctx, record_kind="pair_candidate", reason="no_model_answer", related_id=tid,
                                  raw=chosen["output"], detail=f"task {tid}: no answer of the model's own to pair "
                                  f"with its {how} reference (put self_label before spin_pairs)"))
            continue
        made = 0
        for answer in answers[:cfg.pairs_per_task]:
            pid = content_id("pair", tid, chosen["sample_id"], answer["sample_id"], RULE)
            score, no_signal = signal(chosen["output"], answer["output"], cfg.max_rouge,
                                      graded=answer.get("correct") is False)
            if no_signal is None and (chosen["sample_id"], answer["sample_id"]) in existing:
                no_signal = ("duplicate_pair", "an earlier stage already made this chosen/rejected pair")
            if no_signal is not None:
                rejects.append(reject(ctx, record_kind="pair_candidate", record_id=pid, reason=no_signal[0],
                                      raw=answer["output"], related_id=answer["sample_id"], similarity=round(score, 4),
                                      detail=f"task {tid}: {no_signal[1]}"))
                continue
            made += 1
            pairs.append({"pair_id": pid, "task_id": tid, "chosen_id": chosen["sample_id"],
                          "rejected_id": answer["sample_id"], "margin": round(1 - score, 4), "rule": RULE,
                          "reference": how,
                          **lineage(ctx, producer=answer.get("producer") or "", template_id=None,
                                    parent_ids=[chosen["sample_id"], answer["sample_id"]])})
            if not cfg.keep_rejected_in_sft and answer["sample_id"] in kept_ids:
                rejects.append(reject(ctx, record_kind="sample", record_id=answer["sample_id"], reason="spin_rejected",
                                      raw=answer["output"], related_id=pid,
                                      detail=f"task {tid}: lost to the {how} reference in SPIN pair {pid}"))
        if made:
            counts[how] += 1
            if how == "gold":
                references.append(chosen)
    ctx.log(f"{len(pairs)} SPIN pairs for {sum(counts.values())} of {len(tasks)} tasks "
            f"({counts['gold']} gold, {counts['verified']} verified references)")
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return StageOutput(tables={"pairs": frame("pair", pairs), "samples": frame("sample", references)},
                       rejects=rejects, records_in=len(tasks),
                       metrics={"pairs": len(pairs), "tasks_paired": sum(counts.values()),
                                "gold_references": counts["gold"], "verified_references": counts["verified"],
                                "reject_reasons": reasons})
