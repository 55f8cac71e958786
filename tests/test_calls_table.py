"""Every model call is a row of the ``calls`` table: per stage and shard, cache hits marked, errors kept.

The fake backend drives the row bookkeeping (map and global stages, reruns, failures); the slow test runs
the real embedded model and checks the table against the stages' own token counts, through `factory sql`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from factory.backends.base import ChatRequest, Completion, GenParams
from factory.backends.fake import FakeBackend
from factory.config import parse_pipeline
from factory.runner import run_pipeline
from factory.warehouse import Warehouse
from tests.conftest import ROOT, write_jsonl

QUESTIONS = ["Name a planet.", "Name a colour.", "Name a fruit."]
FAILING = "Name a river."


def pipeline(wh: Path, seeds: Path, backend: dict | None = None) -> dict:
    return {"name": "calls", "warehouse": str(wh),
            "backend": backend or {"kind": "fake", "replies": ["Mars is a planet.", "Blue is a colour."]},
            "executor": {"kind": "local", "batch_rows": 2},  # 3 tasks: two shards of self_label
            "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                       {"kind": "self_label", "n": 2, "params": {"max_tokens": 32}},  # a map stage
                       # max_samples needs the whole table (the first N samples): the judge's global path
                       {"kind": "judge", "k": 1, "calibrate": False, "structured": False, "max_samples": 50}]}


def calls(wh: Warehouse, run_id: str) -> pl.DataFrame:
    return wh.query("SELECT * FROM calls WHERE run_id = ? ORDER BY stage, shard, call_index", [run_id])


def stage_usage(wh: Warehouse, run_id: str) -> dict[str, tuple[int, int, int]]:
    rows = wh.query("SELECT stage, calls, cached_calls, completion_tokens FROM stages WHERE run_id = ?", [run_id])
    return {r["stage"]: (r["calls"], r["cached_calls"], r["completion_tokens"]) for r in rows.to_dicts()}


def test_each_call_is_a_row_and_a_rerun_marks_cache_hits(tmp_path: Path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": q} for q in QUESTIONS])
    cfg = parse_pipeline(pipeline(tmp_path / "wh", seeds))
    first = run_pipeline(cfg, run_id="first", show_progress=False)
    wh = first.warehouse
    got = calls(wh, "first")
    by_stage = dict(wh.query("SELECT stage, count(*) FROM calls WHERE run_id = 'first' GROUP BY ALL").iter_rows())
    assert by_stage == {"self_label": 6, "judge": 6}  # 3 tasks × n=2 answers, then one judgment per answer
    usage = stage_usage(wh, "first")
    assert {s: (u[0], u[2]) for s, u in usage.items() if s in by_stage} == {
        s: (df.height, df["completion_tokens"].sum()) for (s,), df in got.group_by("stage")}
    assert not got["cache_hit"].any() and got["latency_s"].min() >= 0 and got["error"].is_null().all()
    # the map stage's rows sit in its shards (written with each shard's files); the global stage has none
    assert sorted(set(got.filter(pl.col("stage") == "self_label")["shard"])) == [
        "000000000000-000000000002", "000000000002-000000000003"]
    assert set(got.filter(pl.col("stage") == "judge")["shard"]) == {""}
    tables = wh.query("SELECT stage, shard FROM files WHERE table_name = 'calls' ORDER BY stage, shard").rows()
    assert tables == [("judge", ""), ("self_label", "000000000000-000000000002"),
                      ("self_label", "000000000002-000000000003")]  # seeds made no call: no file
    for row in got.to_dicts():  # the request hash is the call cache's key of exactly these messages and params
        request = ChatRequest.of(json.loads(row["messages"]), GenParams(**json.loads(row["params"])))
        assert request.cache_key(row["model"]) == row["request_hash"] and row["seed"] == request.params.seed
    labels = got.filter(pl.col("stage") == "self_label")
    assert set(wh.read("samples", run_id="first")["output"]) <= set(labels["response"])  # each answer was a call
    assert set(labels["finish_reason"]) == {"stop"} and labels["prompt_tokens"].min() > 0

    again = run_pipeline(cfg, run_id="second", show_progress=False)  # a new run asking the same questions
    rerun = calls(again.warehouse, "second")
    assert rerun.height == got.height and rerun["cache_hit"].all() and rerun["latency_s"].is_null().all()
    assert sorted(zip(rerun["request_hash"], rerun["response"], strict=True)) == sorted(
        zip(got["request_hash"], got["response"], strict=True))
    assert all(u[:2] == (0, by_stage[s]) for s, u in stage_usage(wh, "second").items() if s in by_stage)
    # the first run's rows are untouched, and the records of both runs are the same
    assert calls(wh, "first").equals(got)
    assert sorted(wh.read("samples", run_id="second")["sample_id"]) == sorted(
        wh.read("samples", run_id="first")["sample_id"])


def test_failed_calls_are_rows_with_their_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = FakeBackend.generate

    def some_fail(self, requests):
        outs = real(self, requests)
        return [Completion("", "error", 0, 0, error="HTTP 500: upstream crashed") if FAILING in r.messages[-1][1]
                else o for r, o in zip(requests, outs, strict=True)]

    monkeypatch.setattr(FakeBackend, "generate", some_fail)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": q} for q in [*QUESTIONS, FAILING]])
    wh = run_pipeline(parse_pipeline(pipeline(tmp_path / "wh", seeds)), run_id="r", show_progress=False).warehouse
    label = calls(wh, "r").filter(pl.col("stage") == "self_label")
    failed = label.filter(pl.col("error").is_not_null())
    assert label.height == 8 and failed.height == 2  # the river's two answers
    assert set(failed["finish_reason"]) == {"error"} and set(failed["error"]) == {"HTTP 500: upstream crashed"}
    assert all(FAILING in m for m in failed["messages"]) and not failed["cache_hit"].any()
    rejects = wh.query("SELECT count(*) n FROM rejects WHERE run_id = 'r' AND reason = 'model_error'")["n"][0]
    assert rejects == failed.height

    # the calls table is also a cache (the one Ray workers use with cache: warehouse): it answers every request
    # that succeeded, with its response, and none that failed; it stores nothing itself
    from factory.cache import WarehouseCalls

    store = WarehouseCalls(wh.files("calls"))
    requests = [ChatRequest.of(json.loads(r["messages"]), GenParams(**json.loads(r["params"])))
                for r in label.iter_rows(named=True)]
    found = store.get_many(label["model"][0], requests)
    ok = label.filter(pl.col("error").is_null())
    assert found.keys() == set(ok["request_hash"]) and all(c.cached for c in found.values())
    assert {k: c.text for k, c in found.items()} == dict(zip(ok["request_hash"], ok["response"], strict=True))
    assert WarehouseCalls([]).get_many(label["model"][0], requests) == {}


@pytest.mark.slow
def test_calls_of_a_real_run_add_up_in_sql(tmp_path: Path, seed_rows: list[dict]):
    """The embedded model on 2 seeds: `factory sql` over ``calls`` agrees with the stages table."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:2])
    cfg = {"name": "calls-real", "warehouse": str(tmp_path / "wh"), "backend": {"kind": "transformers"},
           "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                      {"kind": "self_label", "n": 1, "params": {"max_tokens": 8}}]}
    wh = run_pipeline(parse_pipeline(cfg), run_id="real", show_progress=False).warehouse
    proc = subprocess.run([sys.executable, "-m", "factory.cli", "sql", "-w", str(wh.root), "-f", "json", "-o",
                           str(tmp_path / "out.json"),
                           "SELECT stage, count(*), sum(completion_tokens) FROM calls GROUP BY ALL"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "out.json").read_text())
    stages = wh.query("SELECT stage, calls, completion_tokens FROM stages WHERE calls > 0").to_dicts()
    assert len(rows) == len(stages) == 1
    (row,), (stage,) = rows, stages
    assert row["stage"] == "self_label" and row["count_star()"] == stage["calls"] == 2
    assert int(row["sum(completion_tokens)"]) == stage["completion_tokens"] > 0  # a HUGEINT: JSON text
    got = calls(wh, "real")
    assert got["completion_tokens"].max() <= 8 and got["latency_s"].min() > 0
    assert set(got["finish_reason"]) <= {"stop", "length"} and got["response"].str.len_chars().min() > 0
