"""Safe SQL: hostile statements are refused with one clear line; ordinary queries over every table work.

The warehouse comes from a real tiny pipeline run (seeds → self_label → judge → score through the real
runner, with a scripted backend), so the views point at real Parquet files and the sandbox is checked
against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from factory.config import parse_pipeline
from factory.runner import run_pipeline
from factory.sql import QueryError, query
from factory.warehouse import Warehouse
from tests.conftest import DEMO_SEEDS, write_jsonl


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Warehouse, str, Path]:
    tmp = tmp_path_factory.mktemp("sqlsafety")
    rows = [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines() if line.strip()][:3]
    seeds = write_jsonl(tmp / "seeds.jsonl", rows)
    outside = tmp / "outside"
    outside.mkdir()
    pl.DataFrame({"secret": ["do not read me"]}).write_parquet(outside / "secret.parquet")
    (outside / "secret.csv").write_text("secret\nhunter2\n")
    # the real runner and stages write real Parquet files and catalog rows; the model's words do not
    # matter here, so a scripted backend keeps this fast (the real model is exercised in test_judge.py)
    cfg = {"name": "sqlsafety", "warehouse": str(tmp / "wh"),
           "backend": {"kind": "fake", "replies": ["Mars is the fourth planet from the Sun.", "Relevant. Score: 4",
                                                   "Winner: A", "the the the the the the"]},
           "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                      {"kind": "self_label", "n": 2, "params": {"max_tokens": 32}},
                      {"kind": "judge", "k": 2, "pairwise": True},
                      {"kind": "score"}]}
    result = run_pipeline(parse_pipeline(cfg), show_progress=False)
    return result.warehouse, result.run_id, outside


def hostile(wh: Path, outside: Path) -> list[str]:
    return [
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{outside}/secret.csv')",
        f"SELECT * FROM read_parquet('{outside}/secret.parquet')",
        f"SELECT * FROM '{outside}/secret.parquet'",
        f"SELECT * FROM read_csv('{wh}/../outside/secret.csv')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_json_auto('/etc/passwd')",
        f"COPY (SELECT 1) TO '{outside}/leak.csv'",
        f"COPY (SELECT * FROM samples) TO '{wh}/leak.csv'",
        f"EXPORT DATABASE '{outside}/export'",
        "CREATE TABLE t AS SELECT 1",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE MACRO m() AS 1",
        "INSERT INTO runs VALUES ('x')",
        "UPDATE runs SET status = 'hacked'",
        "DELETE FROM runs",
        "DROP VIEW samples",
        f"ATTACH '{outside}/other.duckdb' AS other",
        f"ATTACH '{wh}/catalog.duckdb' AS cat",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "SET memory_limit = '100GB'",
        "SET lock_configuration = false",
        "RESET memory_limit",
        "PRAGMA threads = 64",
        "SELECT getenv('HOME')",
        f"SELECT 1; COPY (SELECT 1) TO '{outside}/leak2.csv'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{wh}/leak3.csv'",   # EXPLAIN ANALYZE would run the COPY
        "EXPLAIN /* hidden */ ANALYZE CREATE TABLE t AS SELECT 1",
    ]


def test_hostile_statements_are_refused(built):
    wh, _, outside = built
    statements = hostile(wh.root, outside)
    plain = duckdb.connect()  # no sandbox: each statement is valid SQL, refused for what it does (not a typo)
    for sql in statements:
        assert plain.extract_statements(sql), sql
    assert plain.sql(f"SELECT * FROM read_csv('{outside}/secret.csv')").fetchall() == [("hunter2",)]
    allowed = []
    for sql in statements:
        try:
            wh.query(sql)
            allowed.append(sql)
        except QueryError as exc:
            assert "\n" not in str(exc) and str(exc), sql
    assert allowed == []
    assert not list(outside.glob("leak*")) and not list(wh.root.glob("leak*"))
    assert not (outside / "export").exists()
    # the settings really are locked down for the next query too
    assert wh.query("SELECT current_setting('enable_external_access') AS v")["v"][0] is False


def test_ordinary_queries_over_every_table(built):
    wh, run_id, _ = built
    registered = dict(wh.query("SELECT table_name, sum(rows)::BIGINT FROM files GROUP BY ALL").iter_rows())
    with wh.connect(read_only=True) as cat:
        in_catalog = {t: cat.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "stages", "files")}
    for table in ["runs", "stages", "files", "tasks", "samples", "rejects", "judgments", "judge_scores",
                  "scores", "pairs", "tasks_kept", "samples_kept"]:
        df = wh.query(f"SELECT * FROM {table}")
        if table in in_catalog:  # the views show every catalog row…
            assert df.height == in_catalog[table] > 0, table
        elif table.endswith("_kept"):  # …the kept views a subset of their table…
            assert df.height <= wh.query(f"SELECT count(*) FROM {table[:-5]}").item(), table
        else:  # …and each record table every row its registered files hold
            assert df.height == registered.get(table, 0), table
        if table not in ("pairs", "rejects", "samples_kept"):
            assert df.height > 0, table
    for sql in ["DESCRIBE samples", "SUMMARIZE scores", "EXPLAIN SELECT * FROM samples", "FROM tasks LIMIT 1",
                "EXPLAIN ANALYZE SELECT count(*) FROM judgments",
                "WITH s AS (SELECT * FROM scores) SELECT count(*) AS n FROM s", "SHOW TABLES"]:
        assert wh.query(sql).height > 0, sql
    # why was this dropped? one join answers it for any record
    why = wh.query("""SELECT s.sample_id, r.stage, r.reason, r.detail, sc.drop_reasons, sc.composite
                      FROM samples s LEFT JOIN rejects r ON r.record_id = s.sample_id AND r.run_id = s.run_id
                      LEFT JOIN scores sc ON sc.sample_id = s.sample_id AND sc.run_id = s.run_id
                      WHERE s.run_id = ?""", [run_id])
    assert why.height == wh.query("SELECT count(*) AS n FROM samples")["n"][0]
    dropped = why.filter(pl.col("stage") == "score")
    assert all(len(r) > 0 for r in dropped["drop_reasons"].to_list())


def test_time_and_memory_limits(built):
    wh, _, _ = built
    with pytest.raises(QueryError, match="time limit"):
        query(wh, "SELECT count(*) FROM range(10000000) a, range(10000) b", timeout_s=0.5)
    with pytest.raises(QueryError, match="(?i)memory|out of"):
        query(wh, "SELECT list(range) AS l FROM range(100000000)", memory_limit="64MB")
    assert query(wh, "SELECT 1 AS one", timeout_s=5, memory_limit="64MB")["one"][0] == 1


def test_cli_refuses_with_one_line(built):
    from factory.cli import app

    wh, _, outside = built
    res = CliRunner().invoke(app, ["sql", f"COPY (SELECT 1) TO '{outside}/cli.csv'", "-w", str(wh.root)])
    assert res.exit_code == 1
    assert "error:" in res.output and "Traceback" not in res.output
    ok = CliRunner().invoke(app, ["sql", "SELECT count(*) AS n FROM judgments", "-w", str(wh.root),
                                  "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.output)[0]["n"] > 0
