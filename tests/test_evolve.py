"""The self-evolution loop: ReST-EM records, one round end to end on the real embedded model (lineage,
release, trained model, paired eval, `rounds` rows), a kill -9 between training and eval that resumes
without training again, and a repeat in a fresh warehouse that gives the same records, weights and evals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import polars as pl
import pytest
import yaml

import schemas
from factory.backends.fake import FakeConfig
from factory.config import ConfigError, parse_pipeline
from factory.evaluation import problems
from factory.runner import run_pipeline
from factory.warehouse import Warehouse
from tests.conftest import ROOT


def rest_em_pipeline(tmp_path: Path, backend: dict, **stage) -> dict:
    return {"name": "rest", "warehouse": str(tmp_path / "wh"), "backend": backend,
            "stages": [{"kind": "rest_em", "family": "arithmetic", "problems": 4, "k": 2, **stage}]}


def test_rest_em_keeps_only_verified_answers_and_pairs_right_with_wrong(tmp_path: Path):
    """A fake model that answers with the right number for half the problems: exactly those are kept,
    wrong answers are rejects (still in samples, for the pairs), and the problems are train-stream ones."""
    drawn = problems.generate("arithmetic", 4, stream="train", seed=0)
    answers = {p.prompt: (p.reference if i % 2 == 0 else "41") for i, p in enumerate(drawn)}
    fake = {"kind": "fake", "responses": answers}
    cfg = parse_pipeline(rest_em_pipeline(tmp_path, fake, problem_seed=0))
    done = run_pipeline(cfg, show_progress=False)
    wh = done.warehouse
    tasks = wh.read("tasks", run_id=done.run_id)
    assert sorted(tasks["instruction"]) == sorted(p.prompt for p in drawn)
    assert set(tasks["source"]) == {"problem"} and all(problems.stream_of_key(k) == "train"
                                                       for k in tasks["problem_key"])
    kept = wh.query("SELECT instruction, output FROM samples_kept WHERE run_id = ?", [done.run_id])
    assert sorted(kept["output"]) == sorted(p.reference for i, p in enumerate(drawn) if i % 2 == 0)
    rejects = wh.query("SELECT reason, count(*) AS n FROM rejects WHERE run_id = ? GROUP BY ALL ORDER BY reason",
                       [done.run_id])
    # 2 samples per problem: the right ones beyond keep_per_problem=1, and every wrong one
    assert dict(rejects.iter_rows()) == {"enough_correct": 2, "wrong_answer": 4}
    for kind, table in (("task", "tasks"), ("sample", "samples")):
        validator = jsonschema.Draft202012Validator(schemas.load(kind))
        for row in wh.read(table, run_id=done.run_id).to_dicts():
            assert not list(validator.iter_errors({k: v for k, v in row.items() if v is not None}))
    assert wh.read("pairs", run_id=done.run_id).is_empty()  # no problem got both a right and a wrong answer


def test_evolve_section_is_validated_before_anything_runs(tmp_path: Path):
    data = rest_em_pipeline(tmp_path, {"kind": "fake"})
    data["evolve"] = {"train": {"options": {"epochs": "two"}}}
    with pytest.raises(ConfigError, match="evolve.train.options"):
        parse_pipeline(data)
    data["evolve"] = {"train": {"options": {"release": "x@1.0.0"}}}
    with pytest.raises(ConfigError, match="release: set by evolve"):
        parse_pipeline(data)
    data["evolve"] = {"eval": {"suites": ["nll"]}}
    with pytest.raises(ConfigError, match="needs arithmetic or ifeval"):
        parse_pipeline(data)
    assert FakeConfig  # the fake backend is registered for the pipeline above


def evolve_file(tmp_path: Path, warehouse: str = "wh") -> Path:
    data = {
        "name": "tiny", "warehouse": str(tmp_path / warehouse), "seed": 0,
        "backend": {"kind": "transformers", "model": "smollm2-135m-instruct", "batch_size": 8},
        "evolve": {"rounds": 1, "patience": 5, "train": {"options": {"max_steps": 3, "batch_size": 2, "max_length": 96,
                                                      "save_steps": 1, "learning_rate": 1e-4}},
                   "eval": {"suites": ["arithmetic", "nll"], "n": 4}},
        "stages": [{"kind": "rest_em", "family": "arithmetic", "problems": 6, "k": 3, "rationalize": True,
                    "params": {"max_tokens": 24, "temperature": 0.8}}]}
    path = tmp_path / f"evolve-{warehouse}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def round_outcome(wh: Warehouse, r: int) -> dict:
    """What a repeated round must reproduce: record ids, release content, model weights, eval answers."""
    row = wh.query("SELECT * FROM rounds WHERE round = ?", [r]).row(0, named=True)
    weights = next((wh.root / "models" / row["model_out"]).glob("*.safetensors")).read_bytes()
    release = json.loads(next((wh.root / "releases").rglob(f"{r + 1}.0.0/manifest.json")).read_text())
    return {"samples": sorted(wh.query("SELECT sample_id FROM samples WHERE run_id = ?", [row["run_id"]])["sample_id"]),
            "release": release["content_hash"], "weights": hashlib.sha256(weights).hexdigest(),
            "evals": wh.query("SELECT model, suite, item_id, answer, correct, nll FROM evals WHERE model IN (?, ?) "
                              "ORDER BY ALL", [row["model_in"], row["model_out"]]).rows(),
            "diffs": wh.query("SELECT suite, diff FROM round_evals WHERE round = ? ORDER BY suite", [r]).rows()}


@pytest.mark.slow
def test_one_round_end_to_end_and_kill_between_training_and_eval_resumes(tmp_path: Path):
    path = evolve_file(tmp_path)
    env = {**os.environ, "FACTORY_HOME": os.environ.get("FACTORY_HOME", str(Path.home() / ".cache" /
                                                                          "dataset-factory"))}
    cmd = [sys.executable, "-m", "factory.cli", "evolve", str(path), "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    models = tmp_path / "wh" / "models"
    deadline = time.monotonic() + 900
    trained = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(models.glob("*/training.json")) if models.exists() else []
        if found:
            trained = found[0]
            os.kill(proc.pid, signal.SIGKILL)  # training is done, the eval has not finished
            break
        time.sleep(0.2)
    proc.wait()
    assert trained is not None, proc.stdout.read() if proc.stdout else ""
    before = trained.read_text()
    wh = Warehouse(tmp_path / "wh")
    assert wh.read("rounds").is_empty()  # the round was not recorded yet

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert trained.read_text() == before  # not trained again
    rounds = wh.query("SELECT * FROM rounds")
    assert rounds.height == 1
    row = rounds.row(0, named=True)
    release = row["release"].split("@")[0]  # tiny-evolve-HASH6: the hash of the evolve setup
    assert row["model_in"] == "smollm2-135m-instruct" and row["release"] == f"{release}@1.0.0"
    assert release.startswith("tiny-evolve-") and release[-6:] == row["model_out"].split("-")[1]
    mix = json.loads(row["method_mix"])
    assert mix["sft:problem"] == row["sft_rows"] >= 1
    assert mix.get("preference:verifier-best-vs-worst", 0) == row["preference_rows"]
    # lineage: round-0 records were produced by model_0; model_1's parents are its start model and the release
    produced = wh.query("SELECT DISTINCT producer, round FROM samples WHERE run_id = ?", [row["run_id"]])
    assert produced.rows() == [("smollm2-135m-instruct", 0)]
    model = wh.query("SELECT * FROM models WHERE name = ?", [row["model_out"]])
    assert model.height == 1
    assert set(model["parents"][0]) >= {f"{release}@1.0.0"} and any(
        "smollm2" in p for p in model["parents"][0])
    per_suite = wh.query("SELECT suite, n, diff, diff_ci_low, diff_ci_high FROM round_evals ORDER BY suite")
    assert per_suite["suite"].to_list() == ["arithmetic", "nll"] and per_suite["n"].to_list() == [4, 4]
    evals = wh.query("SELECT run_id, suite, count(*) AS n FROM evals GROUP BY ALL")
    assert evals.height == 4 and set(evals["n"]) == {4}  # two models × two suites, nothing duplicated
    # a second call finds the round done and does nothing
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and wh.query("SELECT count(*) AS n FROM rounds")["n"][0] == 1
    assert pl.DataFrame(wh.query("SELECT * FROM round_evals")).height == 2

    # one more round: model_1 (a name registered in this warehouse, not ./warehouse) generates round 1
    more = subprocess.run([*cmd, "--rounds", "2"], cwd=ROOT, env={k: v for k, v in env.items()
                                                                 if k != "FACTORY_WAREHOUSE"},
                          capture_output=True, text=True, timeout=900)
    assert more.returncode == 0, more.stdout + more.stderr
    # the killed-and-resumed round 0 equals a repeat of it, uninterrupted, in a fresh warehouse
    repeat = subprocess.run([sys.executable, "-m", "factory.cli", "evolve", str(evolve_file(tmp_path, "wh2")), "-q"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert repeat.returncode == 0, repeat.stdout + repeat.stderr
    first, again_ = round_outcome(wh, 0), round_outcome(Warehouse(tmp_path / "wh2"), 0)
    assert first["samples"] and first["evals"] and first == again_
    second = wh.query("SELECT * FROM rounds WHERE round = 1").row(0, named=True)
    assert second["model_in"] == row["model_out"] and second["release"] == f"{release}@2.0.0"
    produced = wh.query("SELECT DISTINCT producer, round FROM samples WHERE run_id = ?", [second["run_id"]])
    assert produced.rows() == [(row["model_out"], 1)]
