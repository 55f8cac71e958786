"""Run a pipeline on a cron schedule: run, publish and (optionally) push at every tick.

Three rules make it safe to leave running, or to start twice by mistake:

- **one tick at a time**: a tick holds a non-blocking file lock in the warehouse
  (``locks/schedule-<pipeline>.lock``); a second scheduler, or a tick that would overlap a slow
  one, finds it held, logs ``locked`` and waits for the next tick instead of running alongside;
- **restart-safe**: a tick's run id is ``<pipeline>-<YYYYmmddTHHMM>`` of its *scheduled* time, so running
  the same tick again (after a crash, or ``--once-at`` by hand) resumes that run: finished stages are
  skipped, the release is unchanged (same content, same version) and the push skips an existing tag;
- **a failure stays in its tick**: the error is logged (stderr and ``logs/schedule.jsonl``) and the
  next tick runs as usual.

``run_tick`` and ``serve`` take the time and the sleep function as arguments, so tests drive them
without waiting for real time.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from croniter import croniter
from filelock import FileLock, Timeout

from factory.config import PipelineBase, load_pipeline
from factory.warehouse import Warehouse

log = logging.getLogger("factory.schedule")


@dataclass
class TickResult:
    scheduled_at: str
    run_id: str
    status: str  # done | failed | locked
    release: str | None = None
    pushed: str | None = None
    error: str | None = None
    seconds: float = 0.0


def utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def tick_run_id(pipeline: str, at: datetime) -> str:
    """The run id of the tick scheduled at ``at``: the same tick always maps to the same run."""
    return f"{pipeline}-{utc(at):%Y%m%dT%H%M}"


def check_cron(expr: str) -> str:
    if not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r} (five fields, e.g. \"0 3 * * *\" for 03:00 daily)")
    return expr


def next_tick(expr: str, after: datetime) -> datetime:
    return croniter(check_cron(expr), utc(after)).get_next(datetime)


def latest_tick(expr: str, at: datetime) -> datetime:
    """The most recent scheduled time at or before ``at`` (what a cron job started late should run)."""
    return croniter(check_cron(expr), utc(at) + timedelta(seconds=1)).get_prev(datetime)


def lock_path(wh: Warehouse, pipeline: str) -> Path:
    return wh.root / "locks" / f"schedule-{pipeline}.lock"


@contextmanager
def tick_lock(path: Path) -> Iterator[bool]:
    """Yield True holding the lock, or False at once when another scheduler holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _record(wh: Warehouse, result: TickResult) -> None:
    logs = wh.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "schedule.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(result)) + "\n")


def _release_of(wh: Warehouse, cfg: PipelineBase, run_id: str) -> str:
    """The release the run's publish stage made; publish one now when the pipeline has no such stage."""
    with wh.connect(read_only=True) as con:
        rows = con.execute("SELECT metrics FROM stages WHERE run_id = ? AND kind = 'publish' AND status = 'done' "
                           "ORDER BY position DESC", [run_id]).fetchall()
    if rows:
        return json.loads(rows[0][0])["release"]
    from factory.releases import publish

    return publish(wh, cfg.name, [run_id]).ref


def run_tick(pipeline: str | Path | PipelineBase, at: datetime, *, warehouse: str | Path | None = None,
             push_repo: str | None = None, endpoint: str | None = None, private: bool = False) -> TickResult:
    """Run the tick scheduled at ``at``: pipeline, release, optional push; never raises for a failed run."""
    began = time.perf_counter()
    name = pipeline.name if isinstance(pipeline, PipelineBase) else Path(pipeline).stem
    try:
        cfg = pipeline if isinstance(pipeline, PipelineBase) else load_pipeline(pipeline)
        if warehouse is not None:
            cfg = cfg.model_copy(update={"warehouse": Path(warehouse)})
        name = cfg.name
    except Exception as exc:  # a broken pipeline file is this tick's failure, not the scheduler's end
        wh = Warehouse(warehouse or "warehouse")
        result = TickResult(utc(at).isoformat(), tick_run_id(name, at), "failed", error=_describe(exc))
        log.error("tick %s failed: %s", result.run_id, result.error)
        _record(wh, result)
        return result
    wh = Warehouse(cfg.warehouse)
    result = TickResult(utc(at).isoformat(), tick_run_id(cfg.name, at), "failed")
    with tick_lock(lock_path(wh, cfg.name)) as held:
        if not held:
            result.status = "locked"
            log.warning("tick %s skipped: another scheduler holds %s", result.run_id, lock_path(wh, cfg.name))
            _record(wh, result)
            return result
        try:
            from factory.runner import run_pipeline

            run_pipeline(cfg, run_id=result.run_id, show_progress=False)
            result.release = _release_of(wh, cfg, result.run_id)
            if push_repo:
                from factory.hub import describe, push

                pushed = push(result.release, push_repo, warehouse=wh.root, endpoint=endpoint, private=private)
                result.pushed = describe(pushed)
            result.status = "done"
            log.info("tick %s done: %s%s", result.run_id, result.release,
                     f"; {result.pushed}" if result.pushed else "")
        except Exception as exc:
            result.error = _describe(exc)
            log.error("tick %s failed: %s\n%s", result.run_id, result.error, traceback.format_exc(limit=5))
        result.seconds = round(time.perf_counter() - began, 3)
        _record(wh, result)
    return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def serve(pipeline: str | Path, cron: str, *, warehouse: str | Path | None = None, push_repo: str | None = None,
          endpoint: str | None = None, private: bool = False,
          now: Callable[[], datetime] = lambda: datetime.now(UTC), sleep: Callable[[float], None] = time.sleep,
          max_ticks: int | None = None) -> list[TickResult]:
    """Run ticks forever (or ``max_ticks`` of them); ticks missed while one was running are skipped."""
    check_cron(cron)
    results: list[TickResult] = []
    due = next_tick(cron, now())
    log.info("scheduler for %s on %r: next tick at %s", pipeline, cron, due.isoformat())
    while max_ticks is None or len(results) < max_ticks:
        while (wait := (due - utc(now())).total_seconds()) > 0:
            sleep(min(wait, 60.0))
        results.append(run_tick(pipeline, due, warehouse=warehouse, push_repo=push_repo, endpoint=endpoint,
                                private=private))
        following = next_tick(cron, due)
        current = utc(now())
        if following <= current:
            skipped = 0
            while following <= current:
                following, skipped = next_tick(cron, following), skipped + 1
            log.warning("skipped %d tick(s) missed while the last one ran", skipped)
        due = following
    return results
