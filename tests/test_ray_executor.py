"""Map stages on a real local Ray cluster with the real embedded model: the same records as in-process,
and a kill -9 of a Ray worker or of the driver mid-stage loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
import ray
import yaml

from factory.config import parse_pipeline
from factory.runner import run_pipeline
from factory.warehouse import Warehouse
from tests.conftest import ROOT, write_jsonl

pytestmark = pytest.mark.slow

TASKS = 8
BATCH_ROWS = 2  # 4 self_label shards, 8 score shards: room to kill something mid-stage


def pipeline(tmp_path: Path, name: str, seeds: Path, executor: dict) -> dict:
    return {
        "name": "rayed", "warehouse": str(tmp_path / name),
        "backend": {"kind": "transformers", "batch_size": 2, "threads": 1},  # one thread, like a Ray actor
        "executor": {**executor, "batch_rows": BATCH_ROWS},
        "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                   {"kind": "self_label", "n": 1, "keep_truncated": True,
                    "params": {"max_tokens": 12, "temperature": 0.7}},
                   {"kind": "dedup", "table": "samples", "methods": ["exact", "near"]},
                   {"kind": "score"}]}


def outcome(root: Path) -> dict:
    wh = Warehouse(root)
    samples = wh.read("samples")["sample_id"].to_list()
    scores = wh.read("scores")["sample_id"].to_list()
    funnel = wh.query("SELECT stage, records_in, records_out, records_rejected FROM stages ORDER BY position")
    return {"samples": sorted(samples), "scores": sorted(scores),
            "rejects": sorted(wh.read("rejects")["reject_id"].to_list()),
            "funnel": funnel.rows(), "duplicates": len(samples) - len(set(samples)) + len(scores) - len(set(scores))}


@pytest.fixture(scope="module")
def cluster():
    """A real two-CPU Ray cluster in this process; the subprocess driver joins it by address."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    import json

    from tests.conftest import DEMO_SEEDS

    rows = [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines() if line.strip()][:TASKS]
    return write_jsonl(tmp_path_factory.mktemp("seeds") / "seeds.jsonl", rows)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, seeds: Path) -> dict:
    tmp = tmp_path_factory.mktemp("local")
    run_pipeline(parse_pipeline(pipeline(tmp, "wh", seeds, {"kind": "local"})), show_progress=False)
    got = outcome(tmp / "wh")
    assert len(got["samples"]) >= TASKS // 2 and got["duplicates"] == 0
    return got


def test_dedup_on_ray_drops_what_the_local_path_drops(cluster: str):
    """Signatures in Ray tasks, the band-key shuffle in ``groupby.map_groups``: the same drops and clusters."""
    import numpy as np

    from factory.dedup import near_dedup
    from factory.dedup.minhash import MinHashParams
    from factory.executors.ray_executor import RayExecutor, RayExecutorConfig
    from tests.test_dedup import frame, near_corpus

    texts = near_corpus(n=2_000, edited=500)
    params = MinHashParams(threshold=0.6)
    executor = RayExecutor(RayExecutorConfig(address=cluster))

    def spread(*args, **kw):  # small chunks and several partitions, so rows of one bucket meet across blocks
        return executor.map_reduce(*args, **{**kw, "chunk_rows": 300})

    local = near_dedup(frame(texts), params, candidates="banded")
    on_ray = near_dedup(frame(texts), params, map_reduce=spread)
    assert local.drops.height >= 400
    assert local.drops.sort("id").equals(on_ray.drops.sort("id"))
    assert local.clusters.sort("record_id").equals(on_ray.clusters.sort("record_id"))
    unrelated = ["A poem about the sea.", "How do vaccines work?", "Sort a list in Python."]  # no bucket shared
    assert near_dedup(frame(unrelated), params, map_reduce=spread).drops.is_empty()
    keys = executor.map_reduce(pl.DataFrame({"k": np.arange(100) % 3}), lambda f: f, None)
    assert sorted(keys["k"].to_list()) == sorted((np.arange(100) % 3).tolist())


def shard_files(root: Path, stage: str) -> int:
    return len(list((root / "runs").glob(f"*/{stage}/*/*.parquet"))) if (root / "runs").exists() else 0


def registered_shards(root: Path, stage: str) -> int:
    """Shards of ``stage`` the driver registered so far (0 while the catalog is busy or not made yet)."""
    import duckdb

    if not (root / "catalog.duckdb").exists():
        return 0
    try:
        con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    except duckdb.Error:  # the driver holds the write lock for a moment
        return 0
    try:
        return con.execute("SELECT count(*) FROM pending_shards WHERE stage = ?", [stage]).fetchone()[0]
    except duckdb.Error:  # the table is made with the first shard
        return 0
    finally:
        con.close()


def test_ray_gives_the_records_of_the_local_executor(tmp_path: Path, cluster: str, seeds: Path, baseline: dict):
    cfg = parse_pipeline(pipeline(tmp_path, "wh", seeds, {"kind": "ray", "address": cluster, "concurrency": 2}))
    run_pipeline(cfg, show_progress=False)
    assert outcome(tmp_path / "wh") == baseline
    shards = Warehouse(tmp_path / "wh").query("SELECT count(DISTINCT shard) n FROM files WHERE stage = 'score'")
    assert shards["n"][0] == len(baseline["samples"]) // BATCH_ROWS + len(baseline["samples"]) % BATCH_ROWS

    # cache: warehouse (for clusters without a lockable shared filesystem): with the SQLite cache gone, another
    # run's workers find every answer in the calls table the first run wrote, and the backend is not called
    (tmp_path / "wh" / "cache" / "calls.sqlite").unlink()
    again = pipeline(tmp_path, "wh", seeds, {"kind": "ray", "address": cluster, "concurrency": 2, "cache": "warehouse"})
    again = {**again, "name": "rayed-again", "stages": again["stages"][:2]}
    rerun = run_pipeline(parse_pipeline(again), show_progress=False)
    calls = Warehouse(tmp_path / "wh").query("SELECT cache_hit, count(*) n FROM calls WHERE run_id = ? AND "
                                              "stage = 'self_label' GROUP BY ALL", [rerun.run_id])
    assert calls.rows() == [(True, TASKS)]


def worker_pids() -> list[int]:
    """Ray Data's actor processes (``ray::MapWorker(...)``) on this machine."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "MapWorker" in cmd and "ray::" in cmd:
            found.append(proc.info["pid"])
    return found


def test_kill_9_of_a_ray_worker_mid_stage_loses_nothing(tmp_path: Path, cluster: str, seeds: Path, baseline: dict):
    root = tmp_path / "wh"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if shard_files(root, "self_label") >= 1:  # one shard written, others in flight
                pids = worker_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cfg = parse_pipeline(pipeline(tmp_path, "wh", seeds, {"kind": "ray", "address": cluster, "concurrency": 2}))
    run_pipeline(cfg, show_progress=False)  # Ray restarts the actor and retries its shard
    thread.join(timeout=5)
    assert killed, "no Ray worker was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert outcome(root) == baseline


def test_kill_9_of_the_driver_mid_stage_resumes_with_nothing_lost(tmp_path: Path, cluster: str, seeds: Path,
                                                                   baseline: dict):
    root = tmp_path / "wh"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline(tmp_path, "wh", seeds,
                                            {"kind": "ray", "address": cluster, "concurrency": 2})))
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen:
        with open(log, "a") as fh:
            return subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(path), "--quiet"], cwd=ROOT,
                                    stdout=fh, stderr=subprocess.STDOUT, env=env)

    proc = start()
    deadline = time.monotonic() + 300
    while registered_shards(root, "self_label") < 1:  # a shard registered, others to do: kill mid-stage
        assert proc.poll() is None, f"run ended before it could be killed:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no shard in time:\n{log.read_text()}"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Warehouse(root).connect(read_only=True) as con:  # killed mid-stage, with shards to resume from
        assert not con.execute("SELECT count(*) FROM stages WHERE stage = 'self_label'").fetchone()[0]
        assert con.execute("SELECT count(*) FROM pending_shards WHERE stage = 'self_label'").fetchone()[0] >= 1

    again = start()
    assert again.wait(timeout=400) == 0, log.read_text()
    assert outcome(root) == baseline
