"""Seed ingestion: every bad row lands in rejects with file, line and reason; unreadable files stop."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import polars as pl
import pytest

import schemas
from factory.config import parse_pipeline
from factory.runner import run_pipeline
from stages.seeds import SeedError

GOOD = {"instruction": "Name three primary colours.", "input": "", "output": "Red, blue, yellow.",
        "category": "open_qa"}


def run_seeds(tmp_path: Path, *paths: Path):
    cfg = parse_pipeline({"name": "seedtest", "warehouse": str(tmp_path / "wh"),
                          "stages": [{"kind": "seeds", "paths": [str(p) for p in paths]}]})
    result = run_pipeline(cfg, show_progress=False)
    wh = result.warehouse
    return wh.read("tasks", run_id=result.run_id), wh.read("rejects", run_id=result.run_id)


def test_malformed_jsonl_rows_become_rejects_and_the_run_goes_on(tmp_path: Path):
    path = tmp_path / "seeds.jsonl"
    lines = [
        json.dumps(GOOD).encode(),                                              # 1 ok
        b"",                                                                    # 2 empty line
        json.dumps({"input": "no instruction here"}).encode(),                  # 3 missing instruction
        json.dumps({"instruction": 42, "category": "math"}).encode(),           # 4 wrong type
        b'{"instruction": "Caf\xe9 latte recipe please"}',                      # 5 latin-1 byte: not UTF-8
        b'{"instruction": "unterminated',                                       # 6 bad JSON
        json.dumps({**GOOD, "instruction": "  name THREE primary   colours. "}).encode(),  # 7 duplicate of 1
        json.dumps({"instruction": "Sum 2 and 3.", "output": 5}).encode(),      # 8 wrong type in output
        b"[1, 2]",                                                              # 9 not an object
        json.dumps({"instruction": "Translate 'chat' to English.", "category": "rewriting"}).encode(),  # 10 ok
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    tasks, rejects = run_seeds(tmp_path, path)
    assert sorted(tasks["instruction"]) == ["Name three primary colours.", "Translate 'chat' to English."]
    by_line = {r["source_line"]: r for r in rejects.to_dicts()}
    assert {line: by_line[line]["reason"] for line in by_line} == {
        2: "empty_line", 3: "missing_field", 4: "wrong_type", 5: "bad_encoding", 6: "bad_json", 7: "duplicate",
        8: "wrong_type", 9: "bad_json"}
    assert all(r["source_file"] == str(path) for r in by_line.values())
    assert "'instruction'" in by_line[4]["detail"] and "int" in by_line[4]["detail"]
    assert "'output'" in by_line[8]["detail"]
    assert "Caf" in by_line[5]["raw"]  # the raw text is kept (bad byte replaced) so nothing is lost
    assert by_line[7]["related_id"] == tasks.filter(pl.col("instruction") == GOOD["instruction"])["task_id"][0]


def test_csv_parquet_and_folders(tmp_path: Path):
    folder = tmp_path / "seeds"
    folder.mkdir()
    (folder / "a.csv").write_bytes(
        b"instruction,input,output,category\n"
        b"List two prime numbers.,,2 and 3,math\n"
        b"\"Rewrite politely, please.\",\"Give me that, now\",Could you pass that?,rewriting\n"
        b"Bad \xff byte row,,x,math\n"
        b",,,\n")
    pl.DataFrame([{"instruction": "Explain what a noun is.", "input": None, "output": "A naming word.",
                   "category": "open_qa"}]).write_parquet(folder / "b.parquet")
    tasks, rejects = run_seeds(tmp_path, folder)
    assert set(tasks["instruction"]) == {"List two prime numbers.", "Rewrite politely, please.",
                                         "Explain what a noun is."}
    assert tasks.filter(pl.col("instruction") == "Rewrite politely, please.")["input"][0] == "Give me that, now"
    assert sorted(zip(rejects["source_line"], rejects["reason"], strict=True)) == [
        (4, "bad_encoding"), (5, "empty_line")]


def test_seed_tasks_match_the_task_schema_and_carry_lineage(tmp_path: Path, seed_rows):
    from tests.conftest import DEMO_SEEDS

    tasks, rejects = run_seeds(tmp_path, DEMO_SEEDS)
    assert tasks.height == len(seed_rows) and rejects.is_empty()
    validator = jsonschema.Draft202012Validator(schemas.load("task"))
    for row in tasks.to_dicts():
        validator.validate({k: v for k, v in row.items() if v is not None or k in ("gold_answer",)})
        assert row["source"] == "seed" and row["producer"] == "human" and row["run_id"].startswith("seedtest-")
    assert tasks["category"].n_unique() >= 8


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", None, "no such file or folder"),
    ("seeds.txt", b"hello", "unknown format"),
    ("broken.parquet", b"PAR1 definitely not parquet", "cannot read Parquet"),
    ("empty_dir", "dir", "holds no .jsonl"),
])
def test_unreadable_seed_files_stop_the_run_with_a_clear_message(tmp_path: Path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SeedError, match=message) as info:
        run_seeds(tmp_path, path)
    assert str(path) in str(info.value)
