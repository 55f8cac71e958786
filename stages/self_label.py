"""Self-labelling: the model answers every task (n samples each), and unusable answers are rejects.

Each sample records its tokens, finish reason and text. Empty answers, answers cut off at
``max_tokens`` and answers that merely echo the instruction are dropped with their raw text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from factory.backends.base import ChatRequest, GenParams
from factory.context import StageContext
from factory.records import content_id, derived_seed, frame, lineage, reject, task_prompt
from factory.similarity import rouge_l
from factory.stage import StageConfig, StageOutput, register

TEMPLATE_ID = "self_label/answer@1"


class SelfLabelConfig(StageConfig):
    kind: Literal["self_label"] = "self_label"
    n: int = Field(1, ge=1, le=64, description="samples per task")
    sources: list[str] | None = Field(None, description="only label tasks of these sources (default: all)")
    #: left out of dumps when None, so config hashes (and run ids) of pipelines without it are unchanged
    max_tasks: int | None = Field(None, ge=1, description="label at most this many tasks (a seeded choice)",
                                  exclude_if=lambda v: v is None)
    system_prompt: str | None = None
    params: GenParams = GenParams(max_tokens=192, temperature=0.7, top_p=0.95)
    echo_threshold: float = Field(0.9, gt=0, le=1, description="ROUGE-L to the instruction that counts as echo")
    keep_truncated: bool = False

    consumes = ("tasks",)
    produces = ("samples",)
    uses_backend = True


def problem(text: str, finish_reason: str, task: dict[str, Any], cfg: SelfLabelConfig) -> tuple[str, str] | None:
    """(reason, detail) when an answer is unusable, else None."""
    if finish_reason == "error":
        return "model_error", "the backend gave no answer"
    if not text.strip():
        return "empty", "empty answer"
    if finish_reason == "length" and not cfg.keep_truncated:
        return "truncated", f"answer hit max_tokens={cfg.params.max_tokens}"
    prompt = task_prompt(task)
    if text.strip().lower() == prompt.strip().lower():
        return "echo", "answer repeats the prompt"
    score = rouge_l(prompt, text)
    if score >= cfg.echo_threshold:
        return "echo", f"ROUGE-L {score:.3f} to the prompt >= {cfg.echo_threshold}"
    return None


@register(SelfLabelConfig)
def run(ctx: StageContext, cfg: SelfLabelConfig) -> StageOutput:
    tasks_df = ctx.inputs("tasks")
    if cfg.sources is not None:
        tasks_df = tasks_df.filter(tasks_df["source"].is_in(cfg.sources))
    tasks = tasks_df.to_dicts()
    if cfg.max_tasks is not None and len(tasks) > cfg.max_tasks:
        tasks = sorted(tasks, key=lambda t: derived_seed(ctx.seed, "label-pick", t["task_id"]))[:cfg.max_tasks]
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    jobs: list[tuple[dict[str, Any], int, ChatRequest]] = []
    for task in tasks:
        for k in range(cfg.n):
            seed = derived_seed(ctx.seed, task["task_id"], k)
            params = cfg.params.model_copy(update={"seed": seed})
            jobs.append((task, k, ChatRequest.of([*system, {"role": "user", "content": task_prompt(task)}],
                                                 params)))
    outs = ctx.generate([j[2] for j in jobs], description="answers")
    model_id = ctx.backend.model_id if jobs else ""
    samples, rejects = [], []
    for (task, k, req), out in zip(jobs, outs, strict=True):
        params = req.params.model_dump()
        sid = content_id("sample", task["task_id"], model_id, params, k, out.text)
        bad = problem(out.text, out.finish_reason, task, cfg)
        if bad:
            rejects.append(reject(ctx, record_kind="sample", record_id=sid, reason=bad[0], raw=out.text,
                                  related_id=task["task_id"], detail=f"task {task['task_id']}: {bad[1]}"))
            continue
        samples.append({"sample_id": sid, "task_id": task["task_id"], "sample_index": k,
                        "instruction": task["instruction"], "input": task["input"], "category": task["category"],
                        "output": out.text, "finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
                        "completion_tokens": out.completion_tokens,
                        **lineage(ctx, producer=model_id, parent_ids=[task["task_id"]], template_id=TEMPLATE_ID,
                                  gen_params=params)})
    ctx.log(f"{len(samples)} answers kept of {len(jobs)} for {len(tasks)} tasks")
    return StageOutput(tables={"samples": frame("sample", samples)}, rejects=rejects, records_in=len(tasks))
