"""Issue 11, items 3, 5 and 9: hostile seeds, release names and versions, and pipeline YAML, through the CLI.

Each test runs the real ``factory`` command on real files and checks the exit code, the one line printed
and what the warehouse holds afterwards (every seed row is a task or a reject: none is lost).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from factory import releases
from factory.warehouse import Warehouse
from tests.faults.cli import GOOD_ROWS, error_line, factory, labelled_warehouse, seeds_pipeline, write_jsonl

# -- item 3: seeds ------------------------------------------------------------------------------------


def run_seeds(tmp: Path, *paths: Path, **seeds) -> tuple[pl.DataFrame, pl.DataFrame, object]:
    res = factory("run", seeds_pipeline(tmp, *paths, **seeds), "-q")
    assert res.exit_code == 0, res.output
    wh = Warehouse(tmp / "wh")
    return wh.read("tasks"), wh.read("rejects"), res


def test_a_bom_on_line_one_does_not_cost_the_first_row(tmp_path: Path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in GOOD_ROWS).encode())
    tasks, rejects, _ = run_seeds(tmp_path, path)
    assert sorted(tasks["instruction"]) == sorted(r["instruction"] for r in GOOD_ROWS)
    assert rejects.is_empty()


def test_oversized_fields_and_control_characters_are_rejects_naming_file_line_and_field(tmp_path: Path):
    rows = [GOOD_ROWS[0],
            {"instruction": "Summarise: " + "word " * 12_000},                         # 2: 60,011 characters
            {"instruction": "Say hi.", "output": "hi\u0000there"},                     # 3: NUL in the answer
            {"instruction": "Colour \u001b[31mred\u001b[0m text."},                    # 4: an escape sequence
            {"instruction": "Keep\ttabs and\nnewlines.", "input": "a\tb"}]             # 5: fine
    path = write_jsonl(tmp_path / "seeds.jsonl", rows)
    tasks, rejects, _ = run_seeds(tmp_path, path)
    assert sorted(tasks["instruction"]) == sorted([GOOD_ROWS[0]["instruction"], "Keep\ttabs and\nnewlines."])
    by_line = {r["source_line"]: r for r in rejects.to_dicts()}
    assert {n: r["reason"] for n, r in by_line.items()} == {2: "too_long", 3: "control_characters",
                                                            4: "control_characters"}
    assert by_line[2]["detail"] == (f"{path}:2: field 'instruction' has 60,011 characters (max_chars is 20,000)")
    assert by_line[3]["detail"] == (f"{path}:3: field 'output' holds U+0000 at character 3 "
                                    "(of the control characters only tab, newline and CR are allowed)")
    assert "U+001B" in by_line[4]["detail"]
    assert json.loads(by_line[3]["raw"])["output"] == "hi\u0000there"  # the raw row is kept: nothing lost
    stored = Warehouse(tmp_path / "wh").query("SELECT instruction, gold_answer FROM tasks")
    assert not any("\x00" in (v or "") for col in stored.columns for v in stored[col])


def test_max_chars_is_configurable(tmp_path: Path):
    path = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": "x" * 25_000}])
    tasks, rejects, _ = run_seeds(tmp_path, path, max_chars=30_000)
    assert tasks.height == 1 and rejects.is_empty()


def test_csv_rows_with_the_wrong_number_of_fields_are_rejected_with_their_line(tmp_path: Path):
    path = tmp_path / "seeds.csv"
    path.write_text("instruction,input,output,category\n"
                    "List two prime numbers.,,2 and 3,math\n"
                    "Too few fields,here\n"
                    "Too many,,x,math,EXTRA,MORE\n"
                    '"A quoted, multi-line\ninstruction.",,ok,math\n'
                    "Name a colour.,,Red.,open_qa\n")
    tasks, rejects, _ = run_seeds(tmp_path, path)
    assert sorted(tasks["instruction"]) == ["A quoted, multi-line\ninstruction.", "List two prime numbers.",
                                            "Name a colour."]
    assert sorted(zip(rejects["source_line"], rejects["reason"], rejects["raw"], strict=True)) == [
        (3, "wrong_field_count", "Too few fields,here"),
        (4, "wrong_field_count", "Too many,,x,math,EXTRA,MORE")]
    assert rejects.filter(pl.col("source_line") == 4)["detail"][0] == (
        f"{path}:4: 6 fields where the header has 4")


def test_an_empty_seed_file_warns_and_a_run_with_no_task_says_so(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    good = write_jsonl(tmp_path / "good.jsonl", GOOD_ROWS)
    tasks, _, res = run_seeds(tmp_path, empty, good)
    assert tasks.height == 2
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("warning")] == [
        f"warning: seeds: {empty} is empty: no rows read"]

    only_empty = tmp_path / "alone"
    only_empty.mkdir()
    (only_empty / "empty.csv").write_text("")
    res = factory("run", seeds_pipeline(only_empty, only_empty / "empty.csv"), "-q")
    assert res.exit_code == 0, res.output
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("warning")] == [
        f"warning: seeds: {only_empty / 'empty.csv'} is empty: no rows read",
        "warning: seeds: 0 tasks from 0 rows in 1 file(s); later stages have nothing to work on"]
    metrics = Warehouse(only_empty / "wh").query("SELECT metrics FROM stages")["metrics"][0]
    assert len(json.loads(metrics)["warnings"]) == 2


# -- item 5: one spelling per version, names the file system can hold -------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return labelled_warehouse(tmp_path_factory.mktemp("labelled"))


@pytest.mark.parametrize("version", ["١.٠.٠", "１.０.０", "01.0.0", "1.0.0\n", "1.0", "1.0.0-rc1"])
def test_versions_are_ascii_semver_without_leading_zeros(labelled, version: str):
    wh, run_id = labelled
    res = factory("publish", run_id, "--name", "uni", "--version", version, "-w", wh)
    assert res.exit_code == 1
    assert "must be X.Y.Z with ASCII digits and no leading zeros" in error_line(res)
    assert not (wh / "releases" / "uni").exists()  # refused before any folder is made


@pytest.mark.parametrize("name", ["Uni", "uni\n", "-uni", "u" * 300, "uni/../x", "ünï"])
def test_release_names_are_checked_before_touching_the_disk(labelled, name: str):
    wh, run_id = labelled
    res = factory("publish", run_id, "--name", name, "-w", wh)
    assert res.exit_code == 1
    line = error_line(res)
    assert "must be 1-100 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit" in line
    assert len(line) < 300  # a 300-character name is shortened in the message
    made = [p.name for p in (wh / "releases").iterdir()] if (wh / "releases").exists() else []
    assert set(made) <= {"one"}  # only the release another test publishes: nothing under the refused name


def test_one_release_per_version_and_it_opens(labelled):
    wh, run_id = labelled
    ok = factory("publish", run_id, "--name", "one", "--version", "1.0.0", "-w", wh)
    assert ok.exit_code == 0, ok.output
    for spelling in ("01.0.0", "１.０.０"):
        assert factory("publish", run_id, "--name", "one", "--version", spelling, "-w", wh).exit_code == 1
    assert releases.versions(Warehouse(wh), "one") == ["1.0.0"]
    assert [p.name for p in (wh / "releases" / "one").iterdir() if not p.name.startswith(".")] == ["1.0.0"]
    assert releases.open("one@1.0.0", wh).to_polars("sft").height == 2
    with pytest.raises(releases.ReleaseError, match="NAME@VERSION"):
        releases.open("one@١.٠.٠", wh)


@pytest.mark.parametrize("name", ["Demo", "demo\n", "d" * 101])
def test_pipeline_names_follow_the_same_rule(tmp_path: Path, name: str):
    pipeline = seeds_pipeline(tmp_path, write_jsonl(tmp_path / "s.jsonl", GOOD_ROWS), name=name)
    res = factory("validate", pipeline)
    assert res.exit_code == 1
    assert "name: Value error, name" in res.stderr and "must be 1-100 characters of a-z" in res.stderr
    assert "Traceback" not in res.output


# -- item 9: pipeline YAML ----------------------------------------------------------------------------


def validate_error(path: Path) -> str:
    res = factory("validate", path)
    assert res.exit_code == 1
    return error_line(res)


def test_a_huge_pipeline_file_is_refused_before_parsing(tmp_path: Path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\nstages: [{kind: seeds, paths: [x]}]\nnotes: |\n" + "  padding line\n" * 200_000)
    assert validate_error(path) == f"error: {path}: 3.0 MB is over the 1 MB limit for a config file"


@pytest.mark.parametrize("text, line", [("[" * 200_000 + "]" * 200_000, 1),
                                        ("a:\n" + "".join("  " * i + "- x:\n" for i in range(1, 80)), 33)])
def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path: Path, text: str, line: int):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    assert validate_error(path) == f"error: {path}: nested deeper than 64 levels at line {line}"


def test_duplicate_keys_are_refused_naming_the_key_and_lines(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\nseed: 1\nstages:\n  - kind: seeds\n    paths: [x]\nseed: 2\n")
    assert validate_error(path) == (f"error: {path}: duplicate key 'seed' at line 6 (first at line 2): YAML keeps "
                                    "only the last value, so remove one")


def test_merge_keys_may_still_be_overridden(tmp_path: Path):
    seeds = write_jsonl(tmp_path / "s.jsonl", GOOD_ROWS)
    path = tmp_path / "merge.yaml"
    path.write_text(f"name: merge\nstages:\n  - &s {{kind: seeds, paths: ['{seeds}']}}\n"
                    "  - <<: *s\n    name: again\n    kind: seeds\n")
    res = factory("validate", path)
    assert res.exit_code == 0, res.output


def test_an_alias_bomb_is_refused(tmp_path: Path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\n" + "\n".join(lines) + "\n")
    assert validate_error(path) == (f"error: {path}: expands to more than 1,000,000 values through aliases "
                                    "(&anchor / *alias)")


@pytest.mark.parametrize("field, value, expected", [
    ("seed", "true", "seed: Input should be a valid integer (got True)"),
    ("round", "'2'", "round: Input should be a valid integer (got '2')"),
    ("seed", "1.5", "seed: Input should be a valid integer (got 1.5)"),
])
def test_ints_are_strict(tmp_path: Path, field: str, value: str, expected: str):
    path = tmp_path / "strict.yaml"
    path.write_text(f"name: strict\n{field}: {value}\nstages:\n  - kind: seeds\n    paths: [x]\n")
    res = factory("validate", path)
    assert res.exit_code == 1
    assert expected in res.stderr, res.stderr


def test_bools_are_strict(tmp_path: Path):
    path = tmp_path / "strict.yaml"
    path.write_text("name: strict\nbackend: {kind: fake}\nstages:\n  - kind: seeds\n    paths: [x]\n"
                    "  - kind: publish\n    include_gold: 1\n")
    res = factory("validate", path)
    assert res.exit_code == 1
    assert "include_gold: Input should be a valid boolean (got 1)" in res.stderr, res.stderr
