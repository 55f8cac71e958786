"""The scheduler: run ids from scheduled times, one tick at a time (real file lock), failures stay in their tick."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
import yaml

from factory import releases
from factory import schedule as sched
from factory.stage import StageConfig, StageOutput, register
from factory.warehouse import Warehouse
from tests.conftest import write_jsonl
from tests.test_push import REPO, FakeHub, fake_hub  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)

GATES: dict[str, threading.Event] = {}  # opened by the test
ENTERED: dict[str, threading.Event] = {}  # set by the stage when the tick reaches it


class GateConfig(StageConfig):
    """Test-only stage that waits until the test opens its gate: a tick that is still running."""

    kind: Literal["test_gate"] = "test_gate"
    gate: str


@register(GateConfig)
def _gate(ctx, cfg: GateConfig) -> StageOutput:  # type: ignore[no-untyped-def]
    ENTERED[cfg.gate].set()
    GATES[cfg.gate].wait(timeout=30)
    return StageOutput()


def pipeline_file(tmp_path: Path, seeds: Path, extra: list[dict] | None = None, name: str = "nightly") -> Path:
    """seeds → self_label (scripted backend) → publish: enough to exercise a tick end to end, quickly."""
    spec = {"name": name, "warehouse": str(tmp_path / "wh"),
            "backend": {"kind": "fake", "replies": ["A short, useful answer."]},
            "stages": [{"kind": "seeds", "paths": [str(seeds)]}, *(extra or []),
                       {"kind": "self_label", "params": {"max_tokens": 16}},
                       {"kind": "publish", "license": "apache-2.0"}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def test_times_and_run_ids() -> None:
    assert sched.tick_run_id("nightly", T0) == "nightly-20260101T0300"
    assert sched.tick_run_id("nightly", datetime(2026, 1, 1, 3, 0)) == "nightly-20260101T0300"
    assert sched.next_tick("0 3 * * *", T0) == T0 + timedelta(days=1)
    assert sched.latest_tick("0 3 * * *", T0) == T0
    assert sched.latest_tick("0 3 * * *", T0 + timedelta(hours=5)) == T0
    with pytest.raises(ValueError, match="invalid cron expression"):
        sched.check_cron("every night")


def test_a_failed_tick_then_the_next_succeeds(tmp_path: Path, seed_rows: list[dict]) -> None:
    seeds = tmp_path / "seeds.jsonl"  # missing at the first tick: the run fails
    path = pipeline_file(tmp_path, seeds)
    clock = Clock(T0 - timedelta(minutes=1))

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > T0 and not seeds.exists():  # someone fixes the file during the day
            write_jsonl(seeds, seed_rows[:3])

    results = sched.serve(path, "0 3 * * *", now=clock, sleep=sleep, max_ticks=2)
    assert [(r.run_id, r.status) for r in results] == [("nightly-20260101T0300", "failed"),
                                                       ("nightly-20260102T0300", "done")]
    assert "SeedError" in results[0].error and str(seeds) in results[0].error
    assert results[1].release == "nightly@1.0.0"
    assert max(clock.slept) <= 60  # it wakes at least every minute
    wh = Warehouse(tmp_path / "wh")
    logged = [json.loads(line) for line in (wh.root / "logs" / "schedule.jsonl").read_text().splitlines()]
    assert [(e["run_id"], e["status"]) for e in logged] == [(r.run_id, r.status) for r in results]
    runs = wh.query("SELECT run_id, status FROM runs ORDER BY run_id")
    assert runs.rows() == [("nightly-20260101T0300", "failed"), ("nightly-20260102T0300", "done")]

    # a restart re-running the same tick redoes nothing: stages skipped, same release
    again = sched.run_tick(path, T0 + timedelta(days=1))
    assert again.status == "done" and again.release == "nightly@1.0.0"
    assert releases.versions(wh, "nightly") == ["1.0.0"]
    assert wh.query("SELECT count(*) AS n FROM stages WHERE run_id = 'nightly-20260102T0300'")["n"][0] == 3


def test_overlapping_ticks_never_run_at_once(tmp_path: Path, seed_rows: list[dict]) -> None:
    """Two schedulers (threads, real file lock): while one tick runs, the other is refused at once."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:2])
    GATES["g1"], ENTERED["g1"] = threading.Event(), threading.Event()
    path = pipeline_file(tmp_path, seeds, extra=[{"kind": "test_gate", "gate": "g1"}])
    results: list[sched.TickResult] = []
    first = threading.Thread(target=lambda: results.append(sched.run_tick(path, T0)))
    first.start()
    try:
        assert ENTERED["g1"].wait(timeout=60), "the first tick never reached its gate stage"
        second = sched.run_tick(path, T0)
        later = sched.run_tick(path, T0 + timedelta(days=1))
    finally:
        GATES["g1"].set()
        first.join(timeout=60)
    assert second.status == "locked" and later.status == "locked"
    assert results[0].status == "done" and results[0].release == "nightly@1.0.0"
    assert sched.run_tick(path, T0 + timedelta(days=1)).status == "done"  # free again


def test_a_second_scheduler_process_is_refused(tmp_path: Path, seed_rows: list[dict]) -> None:
    """A real second process (`factory schedule --once-at`) while this one holds the lock."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:2])
    path = pipeline_file(tmp_path, seeds)
    wh = Warehouse(tmp_path / "wh")
    cmd = [sys.executable, "-m", "factory.cli", "schedule", str(path), "--cron", "0 3 * * *",
           "--once-at", "2026-01-01T03:00"]
    with sched.tick_lock(sched.lock_path(wh, "nightly")) as held:
        assert held
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "nightly-20260101T0300: locked" in proc.stdout
        assert "another scheduler holds" in proc.stderr
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nightly-20260101T0300: done — nightly@1.0.0" in proc.stdout


def test_missed_ticks_are_skipped_not_replayed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = Clock(T0 - timedelta(seconds=30))
    seen: list[datetime] = []

    def slow_tick(pipeline, at, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(at)
        clock.now += timedelta(days=3, hours=1)  # this tick ran for three days
        return sched.TickResult(at.isoformat(), sched.tick_run_id("p", at), "done")

    monkeypatch.setattr(sched, "run_tick", slow_tick)
    sched.serve(tmp_path / "p.yaml", "0 3 * * *", now=clock, sleep=clock.sleep, max_ticks=2)
    assert seen == [T0, T0 + timedelta(days=4)]


def test_tick_publishes_and_pushes(tmp_path: Path, seed_rows: list[dict], fake_hub: FakeHub) -> None:  # noqa: F811
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:2])
    path = pipeline_file(tmp_path, seeds)
    first = sched.run_tick(path, T0, push_repo=REPO, endpoint=fake_hub.url)
    assert first.status == "done", first.error
    assert "tagged it 1.0.0" in first.pushed
    assert fake_hub.repos[REPO]["tags"].keys() == {"1.0.0"}
    again = sched.run_tick(path, T0, push_repo=REPO, endpoint=fake_hub.url)  # restarted tick
    assert again.status == "done" and "already exists" in again.pushed
    assert len(fake_hub.calls("POST", "/commit/")) == 1
    wh_files = [p for p in (tmp_path / "wh").rglob("*") if p.is_file()]
    assert not any(b"hf_testTOKEN" in p.read_bytes() for p in wh_files)
