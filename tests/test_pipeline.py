"""A demo-shaped run on the real embedded model, through the real CLI, and the warehouse it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import polars as pl
import pytest
import yaml

import schemas
from factory.warehouse import Warehouse
from tests.conftest import DEMO_SEEDS, ROOT, write_jsonl


def factory(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"factory {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


pytestmark = pytest.mark.slow  # every test here reads one demo-shaped run on the real embedded model


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Warehouse, str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("demo")
    rows = [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines()]
    per_cat: dict[str, list[dict]] = {}
    for row in rows:
        per_cat.setdefault(row["category"], []).append(row)
    seeds = write_jsonl(tmp / "seeds.jsonl", [r for cat in per_cat.values() for r in cat[:3]])
    pipeline = {
        "name": "mini", "warehouse": str(tmp / "wh"), "seed": 7,
        "backend": {"kind": "transformers", "batch_size": 8},
        "stages": [
            {"kind": "seeds", "paths": [str(seeds)]},
            {"kind": "self_instruct", "target_tasks": 3, "max_calls": 6, "prompts_per_batch": 6,
             "params": {"max_tokens": 80}},
            # keep answers cut at max_tokens: this tiny budget would otherwise reject most of them
            {"kind": "self_label", "n": 2, "sources": ["self_instruct"], "keep_truncated": True,
             "params": {"max_tokens": 40}},
        ]}
    path = tmp / "mini.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    proc = factory("run", str(path))
    wh = Warehouse(tmp / "wh")
    run_id = wh.query("SELECT run_id FROM runs").item()
    return wh, run_id, proc


def test_every_stage_is_recorded_with_counts_tokens_and_time(demo_run):
    wh, run_id, proc = demo_run
    stages = wh.query("SELECT * FROM stages WHERE run_id = ? ORDER BY position", [run_id])
    assert stages["stage"].to_list() == ["seeds", "self_instruct", "self_label"]
    assert stages["status"].to_list() == ["done"] * 3
    seeds, si, label = stages.to_dicts()
    assert seeds["records_in"] == 27 and seeds["records_out"] == 27
    assert si["calls"] >= 1 and si["completion_tokens"] > 0 and si["seconds"] > 0
    tasks = wh.read("tasks", run_id=run_id, stages=["self_instruct"])
    assert label["records_in"] == tasks.height
    assert label["calls"] == 2 * tasks.height  # n=2 answers per machine-made task
    assert label["records_out"] + label["records_rejected"] == label["calls"]
    assert wh.query("SELECT status FROM runs").item() == "done"
    assert f"run {run_id} done" in proc.stdout and "funnel" in proc.stdout


def test_records_match_their_schemas_and_carry_lineage(demo_run):
    wh, run_id, _ = demo_run
    for table, kind in [("tasks", "task"), ("samples", "sample"), ("rejects", "reject")]:
        validator = jsonschema.Draft202012Validator(schemas.load(kind))
        df = wh.read(table, run_id=run_id)
        for row in df.to_dicts():
            clean = {k: v for k, v in row.items() if v is not None or kind == "reject"}
            errors = [e.message for e in validator.iter_errors(clean)]
            assert not errors, (table, row, errors)
    samples = wh.read("samples", run_id=run_id)
    tasks = wh.read("tasks", run_id=run_id)
    assert samples.height > 0
    assert samples["task_id"].is_in(tasks["task_id"].implode()).all()
    assert samples["sample_id"].n_unique() == samples.height
    row = samples.row(0, named=True)
    assert row["producer"] == "smollm2-135m-instruct" and row["template_id"] == "self_label/answer@1"
    assert json.loads(row["gen_params"])["max_tokens"] == 40 and row["parent_ids"] == [row["task_id"]]


def test_status_cli(demo_run):
    wh, run_id, _ = demo_run
    listing = factory("status", "-w", str(wh.root)).stdout
    assert run_id in listing and "done" in listing
    detail = factory("status", run_id, "-w", str(wh.root)).stdout
    for word in ("seeds", "self_instruct", "self_label", "tokens", "seconds"):
        assert word in detail
    missing = factory("status", "nope", "-w", str(wh.root), check=False)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr


def test_sql_cli_formats_and_python_api(demo_run, tmp_path: Path):
    wh, run_id, _ = demo_run
    q = "SELECT stage, count(*) AS n FROM rejects GROUP BY stage ORDER BY stage"
    expected = wh.query(q)
    assert isinstance(expected, pl.DataFrame)
    as_json = json.loads(factory("sql", q, "-w", str(wh.root), "--format", "json").stdout)
    assert as_json == expected.to_dicts()
    as_csv = factory("sql", q, "-w", str(wh.root), "-f", "csv").stdout
    assert as_csv.splitlines()[0] == "stage,n"
    out = tmp_path / "t.parquet"
    factory("sql", "SELECT * FROM tasks", "-w", str(wh.root), "-f", "parquet", "-o", str(out))
    assert pl.read_parquet(out).height == wh.read("tasks").height
    table = factory("sql", "SELECT count(*) AS n FROM samples_kept", "-w", str(wh.root)).stdout
    assert str(wh.read("samples").height) in table
    bad = factory("sql", "SELECT nope FROM tasks", "-w", str(wh.root), check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_rerunning_a_finished_run_does_no_work(demo_run, tmp_path: Path):
    wh, run_id, _ = demo_run
    before = wh.query("SELECT count(*) FROM tasks").item(), wh.query("SELECT count(*) FROM samples").item()
    cfg = yaml.safe_load(next(wh.root.parent.glob("*.yaml")).read_text())
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = factory("run", str(path))
    assert "loaded transformers" not in proc.stderr  # every stage was done: no model load
    assert (wh.query("SELECT count(*) FROM tasks").item(), wh.query("SELECT count(*) FROM samples").item()) == before
