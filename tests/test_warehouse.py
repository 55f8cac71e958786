"""The warehouse's promises: atomic files, all-or-nothing stage commits, views across runs, dead runs noticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from factory.records import frame
from factory.warehouse import StageStats, Warehouse, atomic_write_parquet


def stats(position: int = 0) -> StageStats:
    return StageStats(kind="seeds", position=position, records_in=1, records_out=1, records_rejected=0)


def task(i: int, run_id: str) -> dict:
    return {"task_id": f"{i:016x}", "instruction": f"Task {i}", "input": "", "category": "c", "source": "seed",
            "run_id": run_id, "stage": "seeds", "round": 0, "producer": "human", "parent_ids": []}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch):
    path = tmp_path / "t.parquet"
    atomic_write_parquet(pl.DataFrame({"a": [1]}), path)

    def half_then_boom(self, target, **__):  # the disk fills up halfway through the temporary file
        Path(target).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_then_boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_parquet(pl.DataFrame({"a": [2]}), path)
    assert pl.read_parquet(path)["a"].to_list() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # the half-written .t.parquet.tmp-PID is gone


def test_commit_registers_files_views_span_runs_and_kept_views_drop_rejects(warehouse: Warehouse):
    for run in ("r1", "r2"):
        warehouse.begin_run(run, "p", "{}", "h", 0)
        warehouse.commit_stage(run, "seeds", {"tasks": frame("task", [task(1, run), task(2, run)])}, stats())
    rejects = frame("reject", [{"reject_id": "0" * 16, "run_id": "r2", "stage": "dedup", "round": 0,
                                "record_kind": "task", "record_id": f"{1:016x}", "reason": "dup", "detail": "x"}])
    warehouse.commit_stage("r2", "dedup", {"rejects": rejects}, stats(1))
    assert warehouse.query("SELECT count(*) FROM tasks").item() == 4
    assert warehouse.query("SELECT run_id, count(*) n FROM tasks_kept GROUP BY 1 ORDER BY 1").rows() == [
        ("r1", 2), ("r2", 1)]
    assert warehouse.done_stages("r2") == {"seeds", "dedup"}
    # the Python form of the kept views agrees with them, and can disregard some reject reasons
    assert sorted(warehouse.kept("tasks").select("run_id", "task_id").rows()) == sorted(
        warehouse.query("SELECT run_id, task_id FROM tasks_kept").rows())
    assert warehouse.kept("tasks", run_id="r2").height == 1
    assert warehouse.kept("tasks", run_id="r2", ignore_reasons=["dup"]).height == 2
    assert warehouse.kept("tasks", run_id="r2", stages=["seeds"]).height == 2  # the dedup stage not counted
    files = warehouse.query("SELECT * FROM files ORDER BY run_id, stage")
    assert files.height == 3 and all(len(d) == 64 for d in files["sha256"])
    # the persisted views work for people who open catalog.duckdb with plain duckdb
    with warehouse.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM tasks_kept").fetchone()[0] == 3


def test_a_run_with_another_config_under_the_same_id_is_refused(warehouse: Warehouse):
    warehouse.begin_run("r", "p", "{}", "hash-a", 0)
    with pytest.raises(ValueError, match="different configuration"):
        warehouse.begin_run("r", "p", "{}", "hash-b", 0)


def test_runs_whose_process_died_show_as_interrupted(warehouse: Warehouse):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    warehouse.begin_run("r", "p", "{}", "h", 0)
    with warehouse.connect() as con:
        con.execute("UPDATE runs SET pid = ?", [dead.pid])
    warehouse.mark_dead_runs()
    status, error = warehouse.query("SELECT status, error FROM runs").row(0)
    assert status == "interrupted" and "run it again to resume" in error
    warehouse.begin_run("r", "p", "{}", "h", 0)  # our own live process: left alone
    warehouse.mark_dead_runs()
    assert warehouse.query("SELECT status FROM runs").item() == "running"
