"""Self-improvement on verifiable problems: ReST-EM / STaR with answer checkers, and best-vs-worst pairs.

The model answers ``k`` samples per problem at temperature; a program grades each answer (arithmetic:
the number; instruction following: the constraint's checker), and only correct answers become
training samples (ReST-EM's E-step, at most ``keep_per_problem`` of them, as the paper caps). With
``rationalize`` (STaR), a problem the model failed every time is asked once more with the answer as a
hint; a correct answer then trains under the *original* prompt, so the hint never reaches training.
Where a problem got both a correct and a wrong answer, a ``pairs`` record (rule ``verifier-best-vs-worst``)
gives DPO a chosen / rejected pair.

Problems come from :mod:`factory.evaluation.problems` on the **train** stream, which by construction
never produces an eval item; the stage also runs the decontamination check against the eval suites and
stops loudly on any overlap. Wrong answers stay in ``samples`` (the pairs point at them) with a
``wrong_answer`` reject, so they are visible in SQL but never published as SFT data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from factory.backends.base import ChatRequest, Completion, GenParams
from factory.context import StageContext
from factory.evaluation import problems
from factory.evaluation.decontam import assert_decontaminated
from factory.records import canonical_json, content_id, derived_seed, frame, lineage, reject, task_id
from factory.stage import StageConfig, StageOutput, register

TEMPLATE_ID = "rest_em/answer@1"
HINT_TEMPLATE_ID = "rest_em/rationalize@1"
HINT = "\n\n(Hint: the correct answer is {reference}. Answer the question as asked; do not mention the hint.)"


class RestEMConfig(StageConfig):
    kind: Literal["rest_em"] = "rest_em"
    family: Literal["arithmetic", "ifeval"] = "arithmetic"
    problems: int = Field(64, ge=1, le=1000, description="problems drawn from the family's train stream")
    k: int = Field(4, ge=1, le=64, description="samples per problem")
    keep_per_problem: int = Field(1, ge=1, description="correct answers kept per problem (ReST-EM caps it)")
    rationalize: bool = Field(False, description="STaR: retry failed problems once with the answer as a hint")
    pairs: bool = Field(True, description="correct vs wrong answers of one problem as preference pairs")
    problem_seed: int | None = Field(None, description="which train problems (default: the pipeline seed + round, "
                                     "so every round sees new problems)")
    params: GenParams = GenParams(max_tokens=96, temperature=0.8, top_p=0.95)

    produces = ("tasks", "samples", "pairs")
    uses_backend = True


def draw_problems(ctx: StageContext, cfg: RestEMConfig) -> list[problems.Problem]:
    seed = cfg.problem_seed if cfg.problem_seed is not None else ctx.seed * 1000 + ctx.round
    drawn = problems.generate(cfg.family, cfg.problems, stream="train", seed=seed)
    assert_decontaminated([{"instruction": p.prompt, "output": p.reference} for p in drawn],
                          f"{ctx.stage_name} ({cfg.family} train problems)")
    return drawn


def grade(problem: problems.Problem, out: Completion) -> tuple[bool, str | None]:
    """(correct, what was read): an answer cut at max_tokens is not final, so it is never correct."""
    correct, extracted = problem.grade(out.text)
    return correct and out.finish_reason == "stop", extracted


@register(RestEMConfig)
def run(ctx: StageContext, cfg: RestEMConfig) -> StageOutput:
    drawn = draw_problems(ctx, cfg)
    model_id = ctx.backend.model_id
    tasks = [{"task_id": task_id(p.prompt), "instruction": p.prompt, "input": "", "category": p.family,
              "gold_answer": p.reference if p.checker == "number" else None, "source": "problem", "op": p.kind,
              "problem_key": p.key, "checker": p.checker, "checker_params": canonical_json(p.params),
              **lineage(ctx, producer="problems:train")} for p in drawn]
    jobs = []
    for p, t in zip(drawn, tasks, strict=True):
        for i in range(cfg.k):
            params = cfg.params.model_copy(update={"seed": derived_seed(ctx.seed, t["task_id"], i)})
            jobs.append((p, t, i, ChatRequest.of([{"role": "user", "content": p.prompt}], params), TEMPLATE_ID))
    outs = ctx.generate([j[3] for j in jobs], description=f"{cfg.family} answers")
    graded = [(*job, out, *grade(job[0], out)) for job, out in zip(jobs, outs, strict=True)]
    if cfg.rationalize:
        failed = {t["task_id"] for _, t, *_ in jobs} - {g[1]["task_id"] for g in graded if g[6]}
        retry = []
        for p, t in zip(drawn, tasks, strict=True):
            if t["task_id"] in failed:
                params = cfg.params.model_copy(update={"seed": derived_seed(ctx.seed, t["task_id"], "hint")})
                hint = p.prompt + HINT.format(reference=p.reference)
                retry.append((p, t, cfg.k, ChatRequest.of([{"role": "user", "content": hint}], params),
                              HINT_TEMPLATE_ID))
        outs = ctx.generate([j[3] for j in retry], description="rationalizations") if retry else []
        graded += [(*job, out, *grade(job[0], out)) for job, out in zip(retry, outs, strict=True)]

    samples: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    kept_per_task: dict[str, int] = {}
    by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p, t, i, req, template, out, correct, extracted in graded:
        params = req.params.model_dump()
        sid = content_id("sample", t["task_id"], model_id, params, template, i, out.text)
        sample = {"sample_id": sid, "task_id": t["task_id"], "sample_index": i, "instruction": t["instruction"],
                  "input": "", "category": t["category"], "output": out.text, "finish_reason": out.finish_reason,
                  "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                  "correct": bool(correct), "extracted": extracted,
                  **lineage(ctx, producer=model_id, parent_ids=[t["task_id"]], template_id=template,
                            gen_params=params)}
        samples.append(sample)
        why = None
        if out.finish_reason == "error":
            why = ("model_error", out.error or "the backend gave no answer")
        elif out.finish_reason == "length":
            why = ("truncated", f"cut at max_tokens={req.params.max_tokens}; an unfinished answer is not graded")
        elif not correct:
            got = f"; read {extracted!r}" if extracted is not None else ""
            why = ("wrong_answer", f"expected {p.reference}{got}")
        elif kept_per_task.get(t["task_id"], 0) >= cfg.keep_per_problem:
            why = ("enough_correct", f"already {cfg.keep_per_problem} correct answer(s) kept for this problem")
        if why is not None:
            rejects.append(reject(ctx, record_kind="sample", record_id=sid, reason=why[0], raw=out.text,
                                  related_id=t["task_id"], detail=f"task {t['task_id']} ({p.key}): {why[1]}"))
        else:
            kept_per_task[t["task_id"]] = kept_per_task.get(t["task_id"], 0) + 1
        if out.finish_reason != "error" and template == TEMPLATE_ID:  # hinted answers are not rankable samples
            by_task.setdefault(t["task_id"], {"right": [], "wrong": []})["right" if correct else "wrong"].append(sample)
    if cfg.pairs:
        for tid, found in by_task.items():
            if found["right"] and found["wrong"]:
                chosen, rejected = found["right"][0], found["wrong"][0]
                pairs.append({"pair_id": content_id("pair", tid, chosen["sample_id"], rejected["sample_id"]),
                              "task_id": tid, "chosen_id": chosen["sample_id"], "rejected_id": rejected["sample_id"],
                              "margin": 1.0, "rule": "verifier-best-vs-worst",
                              **lineage(ctx, producer=model_id, parent_ids=[chosen["sample_id"],
                                                                            rejected["sample_id"]])})
    first = [g for g in graded if g[4] == TEMPLATE_ID]
    metrics = {"problems": len(drawn), "answers": len(first),
               "answer_accuracy": round(sum(1 for g in first if g[6]) / max(len(first), 1), 4),
               "problems_solved": len(kept_per_task),
               "rationalized": sum(1 for g in graded if g[4] == HINT_TEMPLATE_ID and g[6]),
               "pairs": len(pairs)}
    ctx.log(f"{cfg.family}: {metrics['problems_solved']}/{len(drawn)} problems solved, answer accuracy "
            f"{metrics['answer_accuracy']:.1%}, {len(pairs)} pairs")
    tables = {"tasks": frame("task", tasks), "samples": frame("sample", samples)}
    if pairs:
        tables["pairs"] = frame("pair", pairs)
    return StageOutput(tables=tables, rejects=rejects, records_in=len(drawn), metrics=metrics)
