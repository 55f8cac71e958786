"""Map stages batch by batch: the same records as the whole-table path, resume at the shard, old catalogs.

The fake backend only drives control flow here; the real model runs in tests/test_ray_executor.py.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from factory.config import parse_pipeline
from factory.context import StageContext
from factory.map_stage import Piece, plan_shards
from factory.runner import run_pipeline
from factory.stage import registered
from factory.warehouse import Warehouse
from tests.conftest import write_jsonl

REPLY = "Here is a careful answer: first do this, then do that, and check the result."


def pipeline(wh: Path, seeds: Path, batch_rows: int, **executor) -> dict:
    return {
        "name": "maps", "warehouse": str(wh),
        "backend": {"kind": "fake", "replies": [REPLY, "ok"]},
        "executor": {"kind": "local", "batch_rows": batch_rows, **executor},
        "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                   {"kind": "self_label", "n": 2, "max_tasks": 30},
                   {"kind": "gold_samples"},
                   {"kind": "score"}]}


@pytest.fixture
def seeds(tmp_path: Path, seed_rows: list[dict]) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:40])


def records(wh: Warehouse) -> dict[str, list]:
    samples = wh.read("samples")
    scores = wh.read("scores")
    rejects = wh.read("rejects")
    return {"samples": sorted(samples["sample_id"].to_list()),
            "scores": sorted(zip(scores["sample_id"].to_list(), scores["composite"].round(9).to_list(),
                                 scores["keep"].to_list(), strict=True)),
            "rejects": sorted(rejects["reject_id"].to_list())}


def test_plan_shards_cuts_across_files():
    specs = plan_shards([("a", 5), ("b", 0), ("c", 4)], 4)
    assert [s.key for s in specs] == ["000000000000-000000000004", "000000000004-000000000008",
                                      "000000000008-000000000009"]
    assert specs[1].pieces == (Piece("a", 4, 1), Piece("c", 0, 3))
    assert sum(p.rows for s in specs for p in s.pieces) == 9
    assert plan_shards([], 4) == []


def test_map_stages_make_the_records_of_the_whole_table_path(tmp_path: Path, seeds: Path):
    """Shards of 7 rows give the ids, scores and rejects that the stages' whole-table ``run`` gives."""
    cfg = parse_pipeline(pipeline(tmp_path / "wh", seeds, batch_rows=7))
    result = run_pipeline(cfg, show_progress=False)
    wh = result.warehouse
    got = records(wh)
    assert len(got["samples"]) == 30 * 2 + 40  # labelled answers + gold references
    assert len(got["samples"]) == len(set(got["samples"]))
    shards = wh.query("SELECT stage, count(DISTINCT shard) n FROM files WHERE shard <> '' GROUP BY ALL")
    assert dict(shards.iter_rows()) == {"self_label": 6, "gold_samples": 6, "score": 15}

    # the same stages through today's whole-table path, in a second run of the same warehouse
    whole = Warehouse(tmp_path / "whole")
    from factory.backends import load_backend
    from factory.cache import CallCache

    backend = load_backend(cfg.backend)
    names = [s.stage_name for s in cfg.stages]
    for position, stage in enumerate(cfg.stages):
        ctx = StageContext(run_id=result.run_id, stage_name=stage.stage_name, position=position, round=0, seed=0,
                           warehouse=whole, earlier_stages=names[:position], backend_loader=lambda: backend,
                           cache=CallCache(tmp_path / "whole-cache.sqlite"), show_progress=False)
        out = registered()[stage.kind].fn(ctx, stage)
        from factory.records import frame
        from factory.warehouse import StageStats

        rejects = out.rejects if isinstance(out.rejects, pl.DataFrame) else frame("reject", out.rejects)
        whole.commit_stage(result.run_id, stage.stage_name, {**out.tables, "rejects": rejects},
                           StageStats(kind=stage.kind, position=position, records_in=out.records_in,
                                      records_out=out.records_out, records_rejected=rejects.height))
    assert records(whole) == got
    funnel = wh.query("SELECT stage, records_in, records_out, records_rejected FROM stages ORDER BY position")
    assert funnel.row(1) == ("self_label", 30, 60, 0) and funnel.row(3)[1] == 100


def test_a_killed_map_stage_resumes_at_the_shard(tmp_path: Path, seeds: Path, monkeypatch):
    """A stage that dies after 3 shards keeps them registered; the next run does only the rest."""
    import factory.executors.local as local

    real = local.run_shard
    calls: list[str] = []

    def dies_after_three(stage, job, ctx, spec):
        if job.stage_name == "self_label" and len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(spec.key)
        return real(stage, job, ctx, spec)

    monkeypatch.setattr(local, "run_shard", dies_after_three)
    cfg = parse_pipeline(pipeline(tmp_path / "wh", seeds, batch_rows=7))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, show_progress=False)
    wh = Warehouse(tmp_path / "wh")
    with wh.connect() as con:
        assert con.execute("SELECT count(*) FROM pending_shards WHERE stage='self_label'").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM files WHERE stage='self_label'").fetchone()[0] == 0
    assert wh.read("samples").is_empty()  # nothing of an unfinished stage is visible

    calls.clear()
    monkeypatch.setattr(local, "run_shard", lambda *a: calls.append(a[3].key) or real(*a))
    run_pipeline(cfg, show_progress=False)
    assert len(calls) == 3 + 6 + 15  # self_label's 3 remaining shards, then all of gold_samples and score
    other = parse_pipeline(pipeline(tmp_path / "straight", seeds, batch_rows=7))
    run_pipeline(other, show_progress=False)
    assert records(wh) == records(Warehouse(tmp_path / "straight"))
    with wh.connect() as con:
        assert con.execute("SELECT count(*) FROM pending_shards").fetchone()[0] == 0


def test_a_catalog_from_before_shards_gains_the_shard_key(tmp_path: Path):
    root = tmp_path / "old"
    root.mkdir()
    con = duckdb.connect(str(root / "catalog.duckdb"))
    con.execute("CREATE TABLE files (run_id VARCHAR, stage VARCHAR, table_name VARCHAR, path VARCHAR, rows BIGINT, "
                "bytes BIGINT, sha256 VARCHAR, created_at TIMESTAMP, PRIMARY KEY (run_id, stage, table_name))")
    con.execute("INSERT INTO files VALUES ('r', 's', 'tasks', 'runs/r/s/tasks.parquet', 3, 10, 'x', now())")
    con.close()
    wh = Warehouse(root)
    with wh.connect() as con:
        cols = [r[0] for r in con.execute("DESCRIBE files").fetchall()]
        assert cols[-1] == "shard"
        assert con.execute("SELECT run_id, shard FROM files").fetchall() == [("r", "")]
        con.execute("INSERT INTO files (run_id, stage, table_name, path, shard) VALUES ('r', 's', 'tasks', 'p', 'k')")


def test_the_executor_is_not_part_of_the_run(tmp_path: Path, seeds: Path):
    local = parse_pipeline(pipeline(tmp_path / "wh", seeds, batch_rows=7))
    ray = parse_pipeline({**pipeline(tmp_path / "wh", seeds, batch_rows=7),
                          "executor": {"kind": "ray", "address": "auto", "concurrency": 3, "num_gpus": 0}})
    assert ray.executor.kind == "ray" and ray.executor.concurrency == 3
    assert local.config_hash == ray.config_hash  # a run may resume on another executor
    from factory.config import ConfigError

    with pytest.raises(ConfigError, match="executor"):
        parse_pipeline({**pipeline(tmp_path / "wh", seeds, batch_rows=7), "executor": {"kind": "spark"}})


VERDICT = '{"justification": "clear and correct", "score": 4}'


def judged(root: Path, seeds: Path, **judge) -> dict:
    return {"name": "judged", "warehouse": str(root), "backend": {"kind": "fake", "replies": [VERDICT]},
            "executor": {"kind": "local", "batch_rows": 7},
            "stages": [{"kind": "seeds", "paths": [str(seeds)]}, {"kind": "gold_samples"},
                       {"kind": "judge", "k": 2, "calibration_size": 3, **judge}]}


#: metrics that count shards or time, not what was judged
RUN_METRICS = ("shards", "worker_seconds", "tokens_per_second")


def judge_outcome(wh: Warehouse) -> dict:
    scores = wh.read("judge_scores").sort("sample_id")
    metrics = wh.query("SELECT metrics FROM stages WHERE stage = 'judge'")["metrics"][0]
    import json

    return {"judgments": sorted(wh.read("judgments")["judgment_id"].to_list()),
            "scores": scores.select("sample_id", "judge_mean", "judge_n", "trusted", "calibration_accuracy").rows(),
            "metrics": {k: v for k, v in json.loads(metrics).items() if k not in RUN_METRICS}}


def test_judge_batch_by_batch_equals_the_whole_table_judge_and_resumes(tmp_path: Path, seeds: Path, monkeypatch):
    """Calibration once on the driver (the prelude shard), the samples in shards: the judgments, scores and
    metrics of the global path (which ``max_samples`` selects); a kill mid-stage keeps the prelude."""
    import factory.executors.local as local

    whole = run_pipeline(parse_pipeline(judged(tmp_path / "whole", seeds, max_samples=1_000)), show_progress=False)
    want = judge_outcome(whole.warehouse)
    assert len(want["judgments"]) == 3 * 2 + 40 * 2 and want["metrics"]["calibration_pairs"] == 3

    real = local.run_shard
    done: list[str] = []

    def dies_on_the_third(stage, job, ctx, spec):
        if job.stage_name == "judge":
            if len(done) == 2:
                raise KeyboardInterrupt("killed")
            done.append(spec.key)
        return real(stage, job, ctx, spec)

    monkeypatch.setattr(local, "run_shard", dies_on_the_third)
    cfg = parse_pipeline(judged(tmp_path / "mapped", seeds))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, show_progress=False)
    wh = Warehouse(tmp_path / "mapped")
    with wh.connect() as con:
        shards = sorted(r[0] for r in con.execute("SELECT shard FROM pending_shards WHERE stage = 'judge'").fetchall())
    assert shards == ["000000000000-000000000007", "000000000007-000000000014", "prelude"]
    monkeypatch.setattr(local, "run_shard", real)
    run_pipeline(cfg, show_progress=False)
    assert judge_outcome(wh) == want
    files = wh.query("SELECT shard FROM files WHERE stage = 'judge' AND table_name = 'judgments' ORDER BY shard")
    assert files["shard"].to_list()[-1] == "prelude" and files.height == 40 // 7 + 1 + 1
    calls = wh.query("SELECT shard, count(*) n FROM calls WHERE stage = 'judge' GROUP BY ALL ORDER BY shard")
    assert dict(calls.rows())["prelude"] == 6  # the 3 calibration pairs' two answers, asked once
