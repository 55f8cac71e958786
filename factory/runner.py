"""The pipeline runner: ordering, resume, caching, counts and lineage, so stages need none of it.

A run's id defaults to the pipeline name plus a hash of its configuration, so starting the same
command again resumes the same run: finished stages are skipped (their files are registered), and the
stage that was interrupted starts over with every model call it had finished served from the cache.
Its records get content-derived ids, so nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from factory.backends import load_backend
from factory.cache import CallCache
from factory.config import PipelineBase
from factory.context import StageContext, console
from factory.models import registered_in
from factory.records import frame
from factory.stage import registered
from factory.warehouse import StageStats, Warehouse, now


@dataclass
class RunResult:
    run_id: str
    warehouse: Warehouse
    stages: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def default_run_id(config: PipelineBase) -> str:
    return f"{config.name}-{config.config_hash[:10]}"


class Runner:
    def __init__(self, config: PipelineBase, run_id: str | None = None, show_progress: bool = True):
        self.config = config
        self.run_id = run_id or default_run_id(config)
        self.warehouse = Warehouse(config.warehouse)
        self.show_progress = show_progress
        self._backend = None

    def _load_backend(self):
        if self._backend is None:
            assert self.config.backend is not None  # validated: stages that need one imply one
            began = time.perf_counter()
            with registered_in(self.warehouse.root):  # names `factory train` registered here
                self._backend = load_backend(self.config.backend)
            if self.show_progress:
                console.print(f"[dim]loaded {self.config.backend.kind} model {self._backend.model_id!r} in "
                              f"{time.perf_counter() - began:.1f}s[/]")
        return self._backend

    def run(self) -> RunResult:
        cfg = self.config
        wh = self.warehouse
        specs = registered()
        wh.begin_run(self.run_id, cfg.name, json.dumps(cfg.model_dump(mode="json")), cfg.config_hash, cfg.round)
        done = wh.done_stages(self.run_id)
        result = RunResult(self.run_id, wh)
        cache = CallCache(wh.root / "cache" / "calls.sqlite")
        try:
            for position, stage_cfg in enumerate(cfg.stages):
                name = stage_cfg.stage_name
                if name in done:
                    result.skipped.append(name)
                    continue
                ctx = StageContext(
                    run_id=self.run_id, stage_name=name, position=position, round=cfg.round,
                    seed=cfg.seed, warehouse=wh, earlier_stages=[s.stage_name for s in cfg.stages[:position]],
                    backend_loader=self._load_backend if stage_cfg.uses_backend else None,
                    cache=cache, show_progress=self.show_progress)
                started, began = now(), time.perf_counter()
                out = specs[stage_cfg.kind].fn(ctx, stage_cfg)
                rejects = out.rejects if isinstance(out.rejects, pl.DataFrame) else frame("reject", out.rejects)
                tables = {**out.tables, "rejects": rejects}
                u = ctx.usage
                metrics = {**out.metrics}
                if u.generate_seconds > 0:
                    metrics["tokens_per_second"] = round(u.completion_tokens / u.generate_seconds, 2)
                stats = StageStats(
                    kind=stage_cfg.kind, position=position, records_in=out.records_in,
                    records_out=out.records_out, records_rejected=rejects.height, calls=u.calls,
                    cached_calls=u.cached_calls, prompt_tokens=u.prompt_tokens,
                    completion_tokens=u.completion_tokens, seconds=round(time.perf_counter() - began, 3),
                    metrics=json.dumps(metrics, default=str), started_at=started)
                wh.commit_stage(self.run_id, name, tables, stats)
                result.stages.append({"stage": name, **stats.__dict__, "metrics": metrics})
        except BaseException as exc:
            wh.finish_run(self.run_id, "failed" if isinstance(exc, Exception) else "interrupted",
                          f"{type(exc).__name__}: {exc}")
            raise
        finally:
            cache.close()
        wh.finish_run(self.run_id, "done")
        return result


def run_pipeline(config: PipelineBase, run_id: str | None = None, show_progress: bool = True) -> RunResult:
    return Runner(config, run_id, show_progress).run()
