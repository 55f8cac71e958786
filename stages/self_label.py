"""Self-labelling: the model answers every task (n samples each), and unusable answers are rejects.

Each sample records its tokens, finish reason and text. Empty answers, answers cut off at
``max_tokens`` and answers that merely echo the instruction are dropped with their raw text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import polars as pl
from pydantic import Field

from factory.backends.base import ChatRequest, GenParams
from factory.context import StageContext
from factory.map_stage import MapContext, MapStage, register_map
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


def problem(text: str, finish_reason: str, task: dict[str, Any], cfg: SelfLabelConfig,
            error: str | None = None) -> tuple[str, str] | None:
    """(reason, detail) when an answer is unusable, else None (``error``: the failed call's error text)."""
    if finish_reason == "error":
        return "model_error", error or "the backend gave no answer"
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


def chosen_tasks(tasks: Iterable[str], cfg: SelfLabelConfig, seed: int) -> set[str] | None:
    """The seeded choice of ``max_tasks`` task ids (None: label every task)."""
    if cfg.max_tasks is None:
        return None
    ids = list(tasks)
    if len(ids) <= cfg.max_tasks:
        return None
    return set(sorted(ids, key=lambda t: derived_seed(seed, "label-pick", t))[:cfg.max_tasks])


def label(ctx: StageContext, cfg: SelfLabelConfig, tasks: list[dict[str, Any]]) -> StageOutput:
    """Answer ``tasks``; each sample's id depends only on its task, the model, params, index and text."""
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
        bad = problem(out.text, out.finish_reason, task, cfg, error=out.error)
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


@register(SelfLabelConfig)
def run(ctx: StageContext, cfg: SelfLabelConfig) -> StageOutput:
    """The whole table at once (the runner uses :class:`SelfLabelMap`, batch by batch, instead)."""
    tasks_df = ctx.inputs("tasks")
    if cfg.sources is not None:
        tasks_df = tasks_df.filter(tasks_df["source"].is_in(cfg.sources))
    tasks = tasks_df.to_dicts()
    chosen = chosen_tasks((t["task_id"] for t in tasks), cfg, ctx.seed)
    if chosen is not None:
        tasks = sorted([t for t in tasks if t["task_id"] in chosen],
                       key=lambda t: derived_seed(ctx.seed, "label-pick", t["task_id"]))
    return label(ctx, cfg, tasks)


@register_map(SelfLabelConfig)
class SelfLabelMap(MapStage):
    """Answer each batch of tasks; the seeded ``max_tasks`` choice is made once, on the driver."""

    input_table = "tasks"

    def _sources(self, lazy: pl.LazyFrame, cfg: SelfLabelConfig) -> pl.LazyFrame:
        return lazy.filter(pl.col("source").is_in(cfg.sources)) if cfg.sources is not None else lazy

    def plan(self, ctx: MapContext, cfg: SelfLabelConfig) -> dict[str, Any]:
        lazy = ctx.scan("tasks")
        if cfg.max_tasks is None or lazy is None:
            return {"chosen": None}
        ids = ctx.kept_only("tasks", self._sources(lazy, cfg).select("task_id").collect())["task_id"].to_list()
        chosen = chosen_tasks(ids, cfg, ctx.seed)
        return {"chosen": sorted(chosen) if chosen is not None else None}

    def select(self, batch: pl.DataFrame, ctx: MapContext, cfg: SelfLabelConfig) -> pl.DataFrame:
        batch = self._sources(batch.lazy(), cfg).collect()
        chosen = self.shared.get("chosen")
        return batch.filter(pl.col("task_id").is_in(chosen)) if chosen is not None else batch

    def process(self, batch: pl.DataFrame, ctx: MapContext, cfg: SelfLabelConfig) -> StageOutput:
        return label(ctx, cfg, batch.to_dicts())
