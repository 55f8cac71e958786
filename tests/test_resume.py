"""A run killed with SIGKILL mid-stage resumes with the same command: nothing lost, nothing duplicated,
and model calls finished before the kill are not paid for again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from factory.warehouse import Warehouse
from tests.conftest import DEMO_SEEDS, ROOT, write_jsonl

TASKS = 16
BATCH = 2


def cached_calls(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(cache, timeout=5) as con:
            return con.execute("SELECT count(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def start(pipeline: Path, log: Path) -> subprocess.Popen:
    """The real CLI in a child process; its output goes to a file (a full pipe would stall it)."""
    with open(log, "a") as fh:
        return subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(pipeline), "--quiet"], cwd=ROOT,
                                stdout=fh, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_kill_9_mid_stage_then_resume(tmp_path: Path):
    rows = [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines()][:TASKS]
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "killme", "warehouse": str(tmp_path / "wh"),
        "backend": {"kind": "transformers", "batch_size": BATCH},
        "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                   {"kind": "self_label", "params": {"max_tokens": 24}}]}))
    cache = tmp_path / "wh" / "cache" / "calls.sqlite"

    log = tmp_path / "run.log"
    proc = start(pipeline, log)
    deadline = time.monotonic() + 400
    while cached_calls(cache) < 2 * BATCH:  # wait until two batches are checkpointed, then kill mid-stage
        assert proc.poll() is None, f"run ended before it could be killed:\n{log.read_text()}"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no batch finished in time:\n{log.read_text()}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = cached_calls(cache)
    assert 2 * BATCH <= done_before_kill < TASKS, "the kill must land mid-stage"

    wh = Warehouse(tmp_path / "wh")
    assert wh.done_stages(wh.query("SELECT run_id FROM runs").item()) == {"seeds"}
    assert wh.query("SELECT status FROM runs").item() == "running"  # killed: no chance to say otherwise
    status = subprocess.run([sys.executable, "-m", "factory.cli", "status", "-w", str(wh.root)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert "interrupted" in status.stdout  # status notices the process is gone
    assert wh.read("samples").is_empty()  # nothing half-written was registered
    with sqlite3.connect(cache) as con:
        before = dict(con.execute("SELECT key, text FROM calls").fetchall())

    again = start(pipeline, log)
    assert again.wait(timeout=600) == 0, log.read_text()

    run_id = wh.query("SELECT run_id FROM runs").item()
    assert wh.query("SELECT status FROM runs").item() == "done"
    stage = wh.query("SELECT * FROM stages WHERE stage = 'self_label'").row(0, named=True)
    assert stage["cached_calls"] >= done_before_kill  # finished calls were not paid for twice
    assert stage["calls"] + stage["cached_calls"] == TASKS
    assert stage["calls"] == TASKS - stage["cached_calls"]

    samples = wh.read("samples", run_id=run_id)
    rejects = wh.read("rejects", run_id=run_id).filter(pl.col("stage") == "self_label")
    # every task answered exactly once: kept or rejected, never lost, never twice
    answered = pl.concat([samples["task_id"], rejects["related_id"]])
    assert answered.n_unique() == TASKS and answered.len() == TASKS
    assert samples["sample_id"].n_unique() == samples.height
    with sqlite3.connect(cache) as con:
        after = dict(con.execute("SELECT key, text FROM calls").fetchall())
    assert len(after) == TASKS and all(after[k] == v for k, v in before.items())
    kept_texts = set(samples["output"]) | set(rejects["raw"].drop_nulls())
    assert {t.strip() for t in before.values()} <= kept_texts  # results from before the kill were used as is
