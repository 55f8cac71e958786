"""Reference answers as samples: every task with a ``gold_answer`` (human seeds…) becomes a ``samples``
row, so later stages (score, dedup, publish) treat written answers like model answers.

A map stage with no model: each task maps to at most one sample whose id is ``content_id("gold",
task_id)``, the id spin_pairs and publish's ``include_gold`` give the same reference.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl

from factory.context import StageContext
from factory.map_stage import MapContext, MapStage, register_map
from factory.records import frame
from factory.stage import StageConfig, StageOutput, register
from stages.spin_pairs import reference_sample


class GoldSamplesConfig(StageConfig):
    kind: Literal["gold_samples"] = "gold_samples"
    sources: list[str] | None = None  # only tasks of these sources (default: all)

    consumes = ("tasks",)
    produces = ("samples",)


def to_samples(ctx: StageContext, cfg: GoldSamplesConfig, tasks: pl.DataFrame) -> StageOutput:
    if cfg.sources is not None:
        tasks = tasks.filter(pl.col("source").is_in(cfg.sources))
    # a task without a gold answer is not wrong, only not a sample: it stays a kept task (no reject)
    samples: list[dict[str, Any]] = [reference_sample(ctx, task) for task in tasks.iter_rows(named=True)
                                     if (task.get("gold_answer") or "").strip()]
    return StageOutput(tables={"samples": frame("sample", samples)}, records_in=tasks.height)


@register(GoldSamplesConfig)
def run(ctx: StageContext, cfg: GoldSamplesConfig) -> StageOutput:
    return to_samples(ctx, cfg, ctx.inputs("tasks"))


@register_map(GoldSamplesConfig)
class GoldSamplesMap(MapStage):
    input_table = "tasks"

    def process(self, batch: pl.DataFrame, ctx: MapContext, cfg: GoldSamplesConfig) -> StageOutput:
        return to_samples(ctx, cfg, batch)
