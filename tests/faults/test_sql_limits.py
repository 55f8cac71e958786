"""Issue 11, item 7: `factory sql`'s limits hold for the result too, through the real CLI on a real warehouse.

The time limit covers fetching and writing (not only DuckDB's execution), the memory limit covers what
Python holds (results stream in Arrow batches), tables are capped with a note, CSV flattens nested columns
as JSON, and ``-w`` never creates a warehouse.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory import sql, sql_output
from factory.sql import QueryError
from factory.warehouse import Warehouse
from tests.faults.cli import GOOD_ROWS, error_line, factory, seeds_pipeline, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sqllimits")
    res = factory("run", seeds_pipeline(tmp, write_jsonl(tmp / "seeds.jsonl", GOOD_ROWS)), "-q")
    assert res.exit_code == 0, res.output
    return tmp / "wh"


def table_rows(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if re.match(r"^│ *\d+ *│$", ln)]


def test_table_output_is_capped_with_a_note(wh: Path):
    res = factory("sql", "SELECT * FROM range(3000000)", "-w", wh)
    assert res.exit_code == 0
    shown = table_rows(res.stdout)
    assert len(shown) == 1000 and shown[-1].strip("│ ") == "999"
    assert res.stderr.strip() == ("showing the first 1,000 of 3,000,000 rows (--limit N shows more; -f csv -o FILE "
                                  "writes them all)")
    res = factory("sql", "SELECT * FROM range(12)", "--limit", "5", "-w", wh)
    assert len(table_rows(res.stdout)) == 5 and "of 12 rows" in res.stderr
    res = factory("sql", "SELECT * FROM range(12)", "-w", wh)
    assert len(table_rows(res.stdout)) == 12 and res.stderr == ""


def test_a_table_whose_count_outlasts_the_time_limit_still_shows_its_rows(wh: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sql, "DEFAULT_TIMEOUT_S", 1.0)
    res = factory("sql", "SELECT * FROM range(20000000000)", "-w", wh)  # counting 2e10 rows takes minutes
    assert res.exit_code == 0, res.output
    assert len(table_rows(res.stdout)) == 1000
    assert re.fullmatch(r"showing the first 1,000 of more than [0-9,]+ rows \(--limit N shows more; -f csv -o FILE "
                        r"writes them all\)", res.stderr.strip())


def test_the_time_limit_covers_writing_the_result(wh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sql, "DEFAULT_TIMEOUT_S", 1.0)
    out = tmp_path / "all.json"
    # DuckDB makes these rows in a fraction of a second; formatting 3M JSON objects takes several (before,
    # formatting ran after the timer had stopped, and this exited 0 long past the limit)
    res = factory("sql", "SELECT range AS i FROM range(3000000)", "-f", "json", "-o", out, "-w", wh)
    assert res.exit_code == 1
    assert error_line(res) == "error: query stopped after the 1s time limit (set FACTORY_SQL_TIMEOUT_S to allow more)"
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_the_memory_limit_covers_fetching(wh: Path):
    with pytest.raises(QueryError, match=r"^the result is larger than the 256MB memory limit: add a LIMIT"):
        sql.query(Warehouse(wh), "SELECT * FROM range(100000000)", memory_limit="256MB")
    assert sql.query(Warehouse(wh), "SELECT count(*) AS n FROM range(100000000)", memory_limit="256MB").item() == 10**8


def peak_rss_mb(*args: str) -> int:
    """Peak RSS of ``factory ARGS…`` in its own process (measured by a parent that runs only it)."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "factory.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return int(done.stdout)


@pytest.mark.slow  # two processes export 25M rows: seconds idle, a minute on a busy machine
def test_a_parquet_export_streams_instead_of_holding_the_result(wh: Path, tmp_path: Path):
    small = peak_rss_mb("sql", "SELECT 1 AS one", "-f", "parquet", "-o", str(tmp_path / "one.parquet"), "-w", str(wh))
    big = peak_rss_mb("sql", "SELECT * FROM range(25000000)", "-f", "parquet", "-o", str(tmp_path / "big.parquet"),
                      "-w", str(wh))
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_rows == 25_000_000
    # the result is 200 MB of int64; holding it (as the export did before) would add at least that
    assert big - small < 150, (small, big)


def test_an_export_past_the_output_cap_leaves_no_file(wh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sql_output, "DEFAULT_MAX_OUTPUT", "1MB")
    out = tmp_path / "big.parquet"
    res = factory("sql", "SELECT range, md5(range::VARCHAR) AS h FROM range(2000000)", "-f", "parquet", "-o", out,
                  "-w", wh)
    assert res.exit_code == 1
    assert re.fullmatch(r"error: the output passed the 1MB cap \([0-9.]+ MB written\): add a LIMIT, or set "
                        r"FACTORY_SQL_MAX_OUTPUT \(e\.g\. 50GB\) to allow more", error_line(res))
    assert list(tmp_path.iterdir()) == []
    res = factory("sql", "SELECT range, md5(range::VARCHAR) AS h FROM range(2000000)", "-f", "csv", "-w", wh)
    assert res.exit_code == 1 and "passed the 1MB cap" in error_line(res)


def test_csv_writes_nested_columns_as_json_text(wh: Path):
    res = factory("sql", "SELECT task_id, parent_ids, instruction FROM tasks ORDER BY instruction", "-f", "csv",
                  "-w", wh)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["instruction"] for r in rows] == sorted(r["instruction"] for r in GOOD_ROWS)
    assert [json.loads(r["parent_ids"]) for r in rows] == [[], []]
    res = factory("sql", "SELECT [1, 2] AS l, {'a': 1, 'b': 'x, \"y\"'} AS s, NULL::INT[] AS n, 'plain' AS t",
                  "-f", "csv", "-w", wh)
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    assert row == {"l": "[1, 2]", "s": '{"a": 1, "b": "x, \\"y\\""}', "n": "", "t": "plain"}
    assert json.loads(row["s"]) == {"a": 1, "b": 'x, "y"'}


def test_json_output_is_valid_and_complete(wh: Path):
    res = factory("sql", "SELECT range AS i, [range] AS l FROM range(25000)", "-f", "json", "-w", wh)
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert len(data) == 25000 and data[-1] == {"i": 24999, "l": [24999]}


def test_w_on_a_path_that_is_not_a_warehouse_is_an_error(tmp_path: Path):
    missing = tmp_path / "wrehouse"
    res = factory("sql", "SELECT 1", "-w", missing)
    assert res.exit_code == 1
    assert error_line(res) == (f"error: no warehouse at {missing} (no catalog.duckdb there; check --warehouse / "
                               "FACTORY_WAREHOUSE)")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert factory("sql", "SELECT 1", "-w", empty).exit_code == 1
    assert list(empty.iterdir()) == []
