"""Releases: a real pipeline that ends by publishing, immutability, crash safety, checksums, `datasets`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

import schemas
from factory import releases
from factory.config import parse_pipeline
from factory.records import content_id, frame
from factory.runner import run_pipeline
from factory.warehouse import StageStats, Warehouse
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def load_dataset(path: Path, config: str, tmp: Path):
    """`datasets.load_dataset` fully offline, with its caches in the test's folder."""
    import datasets

    return datasets.load_dataset(str(path), config, cache_dir=str(tmp / "hf_cache"))


@pytest.fixture(autouse=True)
def _offline_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def add_run(wh: Warehouse, run: str, outputs: list[str], *, pairs: bool = False,
            scores: list[float] | None = None) -> str:
    """A finished run written straight into the warehouse: seeds, samples (one per output), maybe pairs."""
    wh.begin_run(run, "demo", "{}", content_id(run) * 4, 0)
    tasks = [{"task_id": content_id("t", i), "instruction": f"Give fact number {i}.", "input": "" if i % 2 else "ctx",
              "category": "general", "source": "seed", "run_id": run, "stage": "seeds", "round": 0,
              "producer": "human", "parent_ids": [], "gold_answer": f"gold {i}"} for i in range(len(outputs))]
    samples = [{"sample_id": content_id("s", t["task_id"], out), "task_id": t["task_id"], "sample_index": 0,
                "instruction": t["instruction"], "input": t["input"], "category": "general", "output": out,
                "finish_reason": "stop", "run_id": run, "stage": "label", "round": 0, "producer": "model-x",
                "template_id": "self_label/answer@1", "gen_params": "{}", "parent_ids": [t["task_id"]]}
               for t, out in zip(tasks, outputs, strict=True)]
    wh.commit_stage(run, "seeds", {"tasks": frame("task", tasks)}, StageStats("seeds", 0, len(tasks), len(tasks), 0))
    tables = {"samples": frame("sample", samples)}
    if pairs:
        worse = [{**s, "sample_id": content_id("worse", s["sample_id"]), "output": s["output"][:3],
                  "sample_index": 1} for s in samples]
        tables["samples"] = frame("sample", samples + worse)
        tables["pairs"] = frame("pair", [
            {"pair_id": content_id("p", s["sample_id"]), "task_id": s["task_id"], "chosen_id": s["sample_id"],
             "rejected_id": w["sample_id"], "margin": 1.5, "rule": "best-vs-worst", "run_id": run, "stage": "label",
             "round": 0, "producer": "model-x", "parent_ids": []} for s, w in zip(samples, worse, strict=True)])
        # the worse answers are not SFT material: a filter rejected them
        tables["rejects"] = frame("reject", [
            {"reject_id": content_id("r", w["sample_id"]), "run_id": run, "stage": "label", "round": 0,
             "record_kind": "sample", "record_id": w["sample_id"], "reason": "worse", "detail": "pair loser"}
            for w in worse])
    if scores is not None:
        tables["scores"] = pl.DataFrame({"sample_id": [s["sample_id"] for s in samples], "composite": scores})
    wh.commit_stage(run, "label", tables, StageStats("self_label", 1, len(tasks), len(samples), 0))
    wh.finish_run(run, "done")
    return run


# -- a real pipeline that ends by publishing ------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_publishes_a_release_datasets_loads(tmp_path: Path, seed_rows: list[dict]) -> None:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:3])
    spec = {"name": "tiny", "warehouse": str(tmp_path / "wh"), "seed": 0,
            "backend": {"kind": "transformers", "batch_size": 8},
            "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                       {"kind": "self_label", "keep_truncated": True,
                        "params": {"max_tokens": 16, "temperature": 0.0}},
                       {"kind": "publish", "license": "apache-2.0", "tags": ["test"]}]}
    result = run_pipeline(parse_pipeline(spec), show_progress=False)
    wh = result.warehouse
    rel = releases.open("tiny@latest", wh)
    assert rel.version == "1.0.0"
    kept = wh.query("SELECT sample_id, output FROM samples_kept WHERE run_id = ?", [result.run_id])
    assert kept.height > 0
    df = rel.to_polars("sft")
    assert sorted(df["sample_id"]) == sorted(kept["sample_id"])
    assert df["producer"].n_unique() == 1 and df["producer"][0] != "human"

    manifest = json.loads((rel.path / "manifest.json").read_text())
    jsonschema.validate(manifest, schemas.load("release_manifest"))
    assert manifest["run_ids"] == [result.run_id]
    assert [f["stage"] for f in manifest["funnel"]] == ["seeds", "self_label"]
    assert manifest["model_ids"] == sorted(set(df["producer"]))
    card = (rel.path / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and "test" in meta["tags"]
    assert meta["configs"][0]["config_name"] == "sft"
    assert meta["dataset_info"][0]["splits"][0]["num_examples"] == df.height
    assert "self_label/answer@1" in card and "| self_label |" in card and "Intended use" in card

    ds = load_dataset(rel.path, "sft", tmp_path)
    assert ds["train"].num_rows == df.height
    assert sorted(ds["train"]["sample_id"]) == sorted(df["sample_id"])

    # the catalog knows it, and `factory sql` can read it
    got = wh.query("SELECT r.name, r.version, count(*) AS n FROM releases r JOIN release_sft s "
                   "USING (name, version) GROUP BY ALL")
    assert got.rows() == [("tiny", "1.0.0", df.height)]
    # running the pipeline again resumes: nothing new is published
    again = run_pipeline(parse_pipeline(spec), show_progress=False)
    assert "publish" in again.skipped and releases.versions(wh, "tiny") == ["1.0.0"]


# -- immutability and idempotence ------------------------------------------------------------------------


def test_same_content_is_a_no_op_and_versions_bump(warehouse: Warehouse) -> None:
    r1 = add_run(warehouse, "r1", ["a one", "b two", "c three"])
    first = releases.publish(warehouse, "demo", [r1])
    assert (first.version, first.created) == ("1.0.0", True)
    again = releases.publish(warehouse, "demo", [r1])
    assert (again.version, again.created, again.content_hash) == ("1.0.0", False, first.content_hash)
    explicit = releases.publish(warehouse, "demo", [r1], releases.ReleaseSpec(version="1.0.0"))
    assert not explicit.created

    r2 = add_run(warehouse, "r2", ["a one", "b two, better", "c three", "d four"])
    with pytest.raises(releases.ReleaseConflict, match=r"demo@1\.0\.0 already exists with different content"):
        releases.publish(warehouse, "demo", [r2], releases.ReleaseSpec(version="1.0.0"))
    patch = releases.publish(warehouse, "demo", [r2])
    assert patch.version == "1.0.1" and patch.created
    r3 = add_run(warehouse, "r3", ["only one"])
    minor = releases.publish(warehouse, "demo", [r3], releases.ReleaseSpec(bump="minor"))
    assert minor.version == "1.1.0"
    assert releases.versions(warehouse, "demo") == ["1.0.0", "1.0.1", "1.1.0"]
    assert releases.open("demo@1.1.0", warehouse).manifest["parents"] == ["demo@1.0.1"]
    assert releases.open("demo@latest", warehouse).version == "1.1.0"
    assert releases.bump("1.1.0", "major") == "2.0.0"

    # what changed between two versions, across releases with SQL
    added = warehouse.query("SELECT output FROM release_sft WHERE version = '1.0.1' EXCEPT "
                            "SELECT output FROM release_sft WHERE version = '1.0.0' ORDER BY output")
    assert added["output"].to_list() == ["b two, better", "d four"]
    cat = warehouse.query("SELECT version, rows ->> '$.sft' AS n FROM releases ORDER BY version")
    assert cat.rows() == [("1.0.0", "3"), ("1.0.1", "4"), ("1.1.0", "1")]


def test_crash_before_the_move_leaves_no_release(warehouse: Warehouse) -> None:
    run = add_run(warehouse, "r1", ["x", "y"])

    def boom(tmp: Path) -> None:
        assert (tmp / "manifest.json").is_file()  # fully written, not yet visible
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        releases.publish(warehouse, "demo", [run], _before_move=boom)
    assert releases.versions(warehouse, "demo") == []
    assert [p.name for p in (warehouse.root / "releases" / "demo").iterdir() if p.name != ".lock"] == []
    with pytest.raises(releases.ReleaseError, match="no release named 'demo'"):
        releases.open("demo@latest", warehouse)
    assert warehouse.query("SELECT * FROM releases").is_empty()


def test_killed_process_leaves_no_visible_release(warehouse: Warehouse) -> None:
    """A real kill (os._exit: no finally, no cleanup) between writing and the rename."""
    run = add_run(warehouse, "r1", ["x", "y"])
    code = (f"import os\nfrom factory import releases\nfrom factory.warehouse import Warehouse\n"
            f"releases.publish(Warehouse({str(warehouse.root)!r}), 'demo', ['{run}'], "
            f"_before_move=lambda tmp: os._exit(9))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    leftovers = [p.name for p in (warehouse.root / "releases" / "demo").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the half release is there, but hidden
    assert releases.versions(warehouse, "demo") == []
    done = releases.publish(warehouse, "demo", [run])  # the next publish sweeps it and succeeds
    assert done.version == "1.0.0"
    assert not any(p.name.startswith(".tmp-") for p in (warehouse.root / "releases" / "demo").iterdir())


# -- checksums ------------------------------------------------------------------------------------------


def test_open_catches_modified_missing_and_extra_files(warehouse: Warehouse) -> None:
    releases.publish(warehouse, "demo", [add_run(warehouse, "r1", ["x", "y"])])
    rel = releases.open("demo@1.0.0", warehouse)
    shard = rel.path / "data/sft/train-00000-of-00001.parquet"
    original = shard.read_bytes()
    shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(releases.ChecksumError, match=r"data/sft/train-00000-of-00001\.parquet was modified"):
        releases.open("demo@1.0.0", warehouse)
    assert releases.open("demo@1.0.0", warehouse, verify=False).path == rel.path
    shard.write_bytes(original)
    (rel.path / "README.md").write_text((rel.path / "README.md").read_text() + "edited\n")
    with pytest.raises(releases.ChecksumError, match="README.md was modified"):
        releases.open("demo@1.0.0", warehouse)
    (rel.path / "README.md").unlink()
    with pytest.raises(releases.ChecksumError, match="README.md listed in manifest.json is missing"):
        releases.open("demo@1.0.0", warehouse)


def test_open_uses_factory_warehouse_env(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    releases.publish(warehouse, "demo", [add_run(warehouse, "r1", ["x", "y"])])
    rel = releases.open("demo@1.0.0", warehouse)
    (rel.path / "data/sft/stray.parquet").write_bytes(b"not listed")
    monkeypatch.setenv("FACTORY_WAREHOUSE", str(warehouse.root))
    with pytest.raises(releases.ChecksumError, match="unexpected file data/sft/stray.parquet"):
        releases.open("demo@latest")
    with pytest.raises(releases.ReleaseError, match="NAME@VERSION"):
        releases.open("demo@")
    with pytest.raises(releases.ReleaseError, match="versions: 1.0.0"):
        releases.open("demo@9.9.9")


# -- configs, scores, the CLI ---------------------------------------------------------------------------


def test_preference_config_and_every_config_loads(warehouse: Warehouse, tmp_path: Path) -> None:
    run = add_run(warehouse, "r1", ["first answer", "second answer", "third answer"], pairs=True)
    rel = releases.open(releases.publish(warehouse, "prefs", [run]).ref, warehouse)
    assert rel.configs == ["sft", "preference"]
    pref = rel.to_polars("preference")
    assert pref.columns[:3] == ["prompt", "chosen", "rejected"]
    assert set(pref["chosen"]) == {"first answer", "second answer", "third answer"}
    assert set(pref["rejected"]) == {"fir", "sec", "thi"}
    assert "Give fact number 0.\n\nctx" in set(pref["prompt"])
    assert rel.to_polars("sft").height == 3  # the rejected losers are not SFT rows
    for config, n in (("sft", 3), ("preference", 3)):
        ds = load_dataset(rel.path, config, tmp_path)
        assert ds["train"].num_rows == n
    assert warehouse.query("SELECT count(*) AS n FROM release_preference")["n"][0] == 3


def test_min_score_filters_and_the_card_shows_scores(warehouse: Warehouse) -> None:
    run = add_run(warehouse, "r1", ["a", "b", "c", "d"], scores=[0.2, 0.6, 0.9, 0.4])
    result = releases.publish(warehouse, "scored", [run], releases.ReleaseSpec(min_score=0.5))
    rel = releases.open(result.ref, warehouse)
    assert sorted(rel.to_polars()["output"]) == ["b", "c"]
    card = (rel.path / "README.md").read_text()
    assert "## Score distribution (`composite`)" in card and "at least 0.5" in card
    plain = add_run(warehouse, "r2", ["a"])
    with pytest.raises(releases.ReleaseError, match="needs a `scores` table"):
        releases.publish(warehouse, "scored", [plain], releases.ReleaseSpec(min_score=0.5))


def test_cli_publish(warehouse: Warehouse) -> None:
    from factory.cli import app

    run = add_run(warehouse, "r1", ["x", "y"])
    cli = CliRunner()
    res = cli.invoke(app, ["publish", run, "--name", "cli-demo", "--version", "2.0.0", "--license", "cc-by-4.0",
                           "-w", str(warehouse.root)])
    assert res.exit_code == 0, res.output
    assert "published cli-demo@2.0.0" in res.output
    res = cli.invoke(app, ["publish", run, "--name", "cli-demo", "-w", str(warehouse.root)])
    assert res.exit_code == 0 and "unchanged" in res.output and "cli-demo@2.0.0" in res.output
    res = cli.invoke(app, ["publish", "nope", "--name", "cli-demo", "-w", str(warehouse.root)])
    assert res.exit_code == 1 and "no run 'nope'" in res.output
    res = cli.invoke(app, ["sql", "SELECT name, version FROM releases", "-f", "json", "-w", str(warehouse.root)])
    assert json.loads(res.output) == [{"name": "cli-demo", "version": "2.0.0"}]
    meta = yaml.safe_load((warehouse.root / "releases/cli-demo/2.0.0/README.md").read_text().split("---\n")[1])
    assert meta["license"] == "cc-by-4.0" and meta["size_categories"] == ["n<1K"]


def test_gold_answers_make_a_seeds_only_release(warehouse: Warehouse, tmp_path: Path, seed_rows: list[dict]) -> None:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:5])
    spec = {"name": "golden", "warehouse": str(warehouse.root),
            "stages": [{"kind": "seeds", "paths": [str(seeds)]}, {"kind": "publish", "include_gold": True}]}
    run_pipeline(parse_pipeline(spec), show_progress=False)
    df = releases.open("golden@latest", warehouse).to_polars()
    with_gold = [r for r in seed_rows[:5] if (r.get("output") or "").strip()]
    assert df.height == len(with_gold) > 0
    assert set(df["producer"]) == {"human"} and set(df["source"]) == {"seed"}
    # gold_sources keeps only the named sources' gold answers: none of these tasks is a `problem`
    spec["stages"][1].update(gold_sources=["problem"], version="2.0.0")
    spec["name"] = "golden-problems"
    with pytest.raises(releases.ReleaseError, match="no kept samples to publish"):
        run_pipeline(parse_pipeline(spec), show_progress=False)
