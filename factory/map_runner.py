"""The runner's part for map stages: cut shards, skip the finished ones, run the rest on the pipeline's
executor, register each as it comes back, and commit the stage once every shard is registered."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from factory.context import StageContext, console
from factory.executors import load_executor
from factory.executors.base import ExecutorConfig
from factory.executors.local import LocalExecutorConfig
from factory.map_stage import (
    PRELUDE_KEY,
    MapJob,
    ShardResult,
    make_context,
    plan_shards,
    registered_maps,
    write_shard,
)
from factory.shards import commit_sharded_stage, forget_stale, input_files, pending, register_shard
from factory.warehouse import StageStats, now

_USAGE = ("calls", "cached_calls", "prompt_tokens", "completion_tokens")


def is_map_stage(stage_cfg: Any) -> bool:
    """Whether the runner cuts this stage into batches (a map stage, in a configuration that allows it)."""
    entry = registered_maps().get(stage_cfg.kind)
    return entry is not None and entry.fn.applies(stage_cfg)


def run_map_stage(ctx: StageContext, stage_cfg: Any, backend_config: Any,
                  executor_config: ExecutorConfig | None = None) -> dict[str, Any]:
    """Run one map stage of ``ctx``'s run to completion; returns the runner's per-stage summary."""
    executor_config = executor_config or LocalExecutorConfig()
    wh, run_id, name = ctx.warehouse, ctx.run_id, ctx.stage_name
    started, began = now(), time.perf_counter()
    sources = input_files(wh, run_id, ctx.earlier_stages)
    job = MapJob(root=str(wh.root), run_id=run_id, stage_name=name, position=ctx.position, round=ctx.round,
                 seed=ctx.seed, earlier_stages=list(ctx.earlier_stages), stage_config=stage_cfg,
                 backend_config=backend_config if stage_cfg.uses_backend else None,
                 sources={t: [p for p, _ in files] for t, files in sources.items()}, cwd=os.getcwd(),
                 max_error_fraction=ctx.max_error_fraction)
    stage = registered_maps()[stage_cfg.kind].fn()
    driver_ctx = make_context(job, ctx.backend_loader, ctx.cache)
    job.shared = stage.plan(driver_ctx, stage_cfg)
    stage.shared = job.shared  # for summarize, on this instance
    specs = plan_shards(sources.get(stage.input_table, []), executor_config.batch_rows)
    keys = [s.key for s in specs]
    finished = {k: v for k, v in pending(wh, run_id, name).items()  # a shard whose file went missing is redone
                if all((wh.root / f["path"]).is_file() for f in v["files"])}
    if PRELUDE_KEY in finished:
        keys.append(PRELUDE_KEY)
    else:
        began_prelude, before = time.perf_counter(), asdict(driver_ctx.usage)
        prelude = stage.prelude(driver_ctx, stage_cfg)
        if prelude is not None:
            res = write_shard(job, driver_ctx, PRELUDE_KEY, prelude, began_prelude, before, 0)
            register_shard(wh, run_id, name, res.key, res.files, res.stats)
            finished[PRELUDE_KEY] = {"files": res.files, "stats": res.stats}
            keys.append(PRELUDE_KEY)
    forget_stale(wh, run_id, name, keys)
    todo = [s for s in specs if s.key not in finished]
    if ctx.show_progress:
        console.print(f"[dim]{name}: {len(specs)} shard(s) of ≤{executor_config.batch_rows} rows, "
                      f"{len(specs) - len(todo)} already done, on executor {executor_config.kind!r}[/]")

    # one bar over the shards; with a single shard, the stage's own bars (answers…) show instead (rich allows one)
    per_shard_bars = ctx.show_progress and len(todo) == 1
    with ctx.progress("shards", total=len(todo) if not per_shard_bars else 0) as advance:
        def on_result(res: ShardResult) -> None:
            register_shard(wh, run_id, name, res.key, res.files, res.stats)
            advance(1)

        executor = ctx.executor if ctx.executor is not None else load_executor(executor_config)
        executor.run_shards(job, todo, on_result, local_backend=ctx.backend_loader,
                            cache=ctx.cache, show_progress=per_shard_bars)

    finished = pending(wh, run_id, name)
    missing = [k for k in keys if k not in finished]
    if missing:
        raise RuntimeError(f"stage {name}: {len(missing)} shard(s) never came back from the executor "
                           f"(first: {missing[0]}); run again to resume")
    shard_stats = [finished[k]["stats"] for k in keys]
    outputs: dict[str, list[Path]] = {}
    for k in keys:
        for f in finished[k]["files"]:
            outputs.setdefault(f["table"], []).append(wh.root / f["path"])
    total = {field: sum(int(s.get(field, 0)) for s in shard_stats)
             for field in ("records_in", "records_out", "records_rejected", *_USAGE)}
    generate_seconds = sum(float(s.get("generate_seconds", 0.0)) for s in shard_stats)
    metrics = stage.summarize(outputs, [s.get("metrics", {}) for s in shard_stats], stage_cfg)
    metrics["shards"] = len(keys)
    metrics["worker_seconds"] = round(sum(float(s.get("seconds", 0.0)) for s in shard_stats), 3)  # summed shards
    errors = sum(int(s.get("model_errors", 0)) for s in shard_stats)
    if errors:  # what `factory run --retry-errors` looks for
        metrics["model_errors"] = errors
    if generate_seconds > 0:
        metrics["tokens_per_second"] = round(total["completion_tokens"] / generate_seconds, 2)
    stats = StageStats(kind=stage_cfg.kind, position=ctx.position, records_in=total["records_in"],
                       records_out=total["records_out"], records_rejected=total["records_rejected"],
                       calls=total["calls"], cached_calls=total["cached_calls"],
                       prompt_tokens=total["prompt_tokens"], completion_tokens=total["completion_tokens"],
                       seconds=round(time.perf_counter() - began, 3), metrics=json.dumps(metrics, default=str),
                       started_at=started)
    commit_sharded_stage(wh, run_id, name, stats)
    return {"stage": name, **stats.__dict__, "metrics": metrics}
