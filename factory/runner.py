"""The pipeline runner: ordering, resume, caching, counts and lineage, so stages need none of it.

A run's id defaults to the pipeline name plus a hash of its configuration, so starting the same
command again resumes the same run: finished stages are skipped (their files are registered), and the
stage that was interrupted starts over with every model call it had finished served from the cache.
Its records get content-derived ids, so nothing is lost or duplicated. A stage whose model calls failed
(all of them, or more than ``backend.max_error_fraction``) stops the run (factory/call_errors.py);
``retry_errors`` re-runs finished stages that kept failed calls as rejects, and every stage after them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from factory.backends import load_backend
from factory.cache import CallCache
from factory.call_errors import DEFAULT_MAX_ERROR_FRACTION, stages_with_model_errors
from factory.call_log import CALLS_TABLE
from factory.config import PipelineBase
from factory.context import StageContext, console
from factory.executors import load_executor
from factory.heal import heal_on_start
from factory.integrity import redo_damaged_stages
from factory.map_runner import is_map_stage, run_map_stage
from factory.models import registered_in
from factory.records import frame
from factory.run_lock import run_lock
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
    def __init__(self, config: PipelineBase, run_id: str | None = None, show_progress: bool = True,
                 retry_errors: bool = False, wait: bool = False):
        self.config = config
        self.run_id = run_id or default_run_id(config)
        self.warehouse = Warehouse(config.warehouse)
        self.show_progress = show_progress
        self.retry_errors = retry_errors
        self.wait = wait  # another process running this run id: wait for it (else RunBusy)
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
        """Run under the run's lock (factory/run_lock.py), after tidying what a killed attempt left."""
        with run_lock(self.warehouse, self.run_id, self.wait, _say):
            heal_on_start(self.warehouse, self.run_id)
            return self._run_locked()

    def _run_locked(self) -> RunResult:
        cfg = self.config
        wh = self.warehouse
        specs = registered()
        wh.begin_run(self.run_id, cfg.name, json.dumps(cfg.model_dump(mode="json")), cfg.config_hash, cfg.round)
        done = wh.done_stages(self.run_id)
        done -= redo_damaged_stages(wh, self.run_id, lambda m: _say(f"warning: {m}"))
        if self.retry_errors:
            done -= self._stages_to_retry(done)
        result = RunResult(self.run_id, wh)
        max_errors = cfg.backend.max_error_fraction if cfg.backend is not None else DEFAULT_MAX_ERROR_FRACTION
        cache = CallCache(wh.root / "cache" / "calls.sqlite")
        executor = load_executor(cfg.executor)  # connects to a cluster only when first used
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
                    cache=cache, show_progress=self.show_progress, max_error_fraction=max_errors,
                    executor=executor)
                if is_map_stage(stage_cfg):  # batch by batch, one shard each, on the pipeline's executor
                    result.stages.append(run_map_stage(ctx, stage_cfg, cfg.backend, cfg.executor))
                    continue
                started, began = now(), time.perf_counter()
                out = specs[stage_cfg.kind].fn(ctx, stage_cfg)
                ctx.errors.check(final=True)  # a stage whose every call failed is not "done"
                rejects = out.rejects if isinstance(out.rejects, pl.DataFrame) else frame("reject", out.rejects)
                calls = ctx.call_log.take()  # one row per model call: the `calls` table (factory/call_log.py)
                tables = {**out.tables, "rejects": rejects, **({CALLS_TABLE: calls} if calls.height else {})}
                u = ctx.usage
                metrics = {**out.metrics}
                if u.generate_seconds > 0:
                    metrics["tokens_per_second"] = round(u.completion_tokens / u.generate_seconds, 2)
                if ctx.errors.errors:  # what `factory run --retry-errors` looks for
                    metrics["model_errors"] = ctx.errors.errors
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

    def _stages_to_retry(self, done: set[str]) -> set[str]:
        """The first finished stage with failed model calls and every stage after it (their inputs change).
        Its answers that did arrive come from the cache; only the failed calls reach the backend again."""
        names = [s.stage_name for s in self.config.stages]
        failed = {s: n for s, n in stages_with_model_errors(self.warehouse, self.run_id).items()
                  if s in done and s in names}
        if not failed:
            if self.show_progress:
                console.print("[dim]--retry-errors: no finished stage has model_error rejects[/]")
            return set()
        again = set(names[min(names.index(s) for s in failed):])
        if self.show_progress:
            console.print(f"retrying {sum(failed.values())} failed model call(s) of "
                          f"{', '.join(f'{s} ({n})' for s, n in failed.items())}; re-running "
                          f"{', '.join(n for n in names if n in again)}")
        return again


def _say(message: str) -> None:
    """One line on stderr, never wrapped (rich wraps at 80 columns when stderr is not a terminal)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run_pipeline(config: PipelineBase, run_id: str | None = None, show_progress: bool = True,
                 retry_errors: bool = False, wait: bool = False) -> RunResult:
    return Runner(config, run_id, show_progress, retry_errors, wait).run()
