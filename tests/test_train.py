"""`factory train`: real TRL on the embedded model, the models table, resume after kill -9, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory import releases
from factory.cli import app
from factory.training import registry
from factory.training.config import TrainConfig, TrainConfigError, load_train_config
from factory.training.data import TrainingError, dpo_dataset, sft_dataset
from factory.training.trainer import TRAINING_JSON, last_checkpoint, train
from factory.warehouse import Warehouse
from tests.test_releases import add_run

ROOT = Path(__file__).resolve().parent.parent
FACTS = ["Paris is the capital of France.", "Two plus two is four.", "Water boils at 100 degrees Celsius.",
         "The sky looks blue because air scatters blue light."]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("FACTORY_WAREHOUSE", raising=False)


def publish(wh: Warehouse, name: str = "facts", pairs: bool = False) -> releases.PublishResult:
    """A small release: four facts as answers to 'Give fact number i.' (and worse twins as pairs)."""
    add_run(wh, f"run-{name}", FACTS, pairs=pairs)
    return releases.publish(wh, name, [f"run-{name}"])


def prompts(n: int = 4) -> list[dict[str, str]]:
    """The user turns the release's rows hold (add_run gives even tasks an input, 'ctx')."""
    return [{"role": "user", "content": f"Give fact number {i}." + ("" if i % 2 else "\n\nctx")} for i in range(n)]


def nothing_written(wh: Warehouse) -> None:
    assert not (wh.root / registry.MODELS_DIR).exists() or not any((wh.root / registry.MODELS_DIR).iterdir())
    assert wh.query("SELECT * FROM models").is_empty()


def cli(*args: str):
    return CliRunner().invoke(app, ["train", *args])


# -- real training ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lowers_the_loss_registers_and_serves_by_path_and_name(warehouse: Warehouse,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.backends.base import ChatRequest, GenParams
    from factory.backends.transformers_backend import TransformersBackend, TransformersConfig

    rel = publish(warehouse)
    result = cli("facts@1.0.0", "-w", str(warehouse.root), "--max-steps", "6", "--batch-size", "4", "--lr", "1e-4",
                 "--max-length", "96", "--save-steps", "1000", "--name", "facts-sft")
    assert result.exit_code == 0, result.output
    folder = warehouse.root / "models" / "facts-sft"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", TRAINING_JSON):
        assert (folder / f).is_file(), f
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]  # no work folder, no lock left

    t = json.loads((folder / TRAINING_JSON).read_text())
    assert t["release"] == {**t["release"], "ref": "facts@1.0.0", "content_hash": rel.content_hash, "examples": 4}
    assert t["base_model"]["id"] == "smollm2-135m-instruct" and t["steps"] == 6 and t["seed"] == 0
    losses = [row["loss"] for row in t["loss_curve"]]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert t["hyperparameters"]["learning_rate"] == 1e-4 and {"torch", "trl", "peft"} <= set(t["libraries"])
    assert t["train_tokens"] > 0 and t["wall_time_s"] > 0

    # the models table, through the SQL front, with both parents
    row = warehouse.query("SELECT name, id, path, parents FROM models").row(0, named=True)
    assert row["name"] == "facts-sft" and row["id"] == t["model_id"] and Path(row["path"]) == folder
    assert row["parents"] == ["smollm2-135m-instruct", "facts@1.0.0"]

    # a pipeline backend by path, and by its registered name (looked up in $FACTORY_WAREHOUSE)
    requests = [ChatRequest.of([p], GenParams(max_tokens=24, temperature=0.0)) for p in prompts()]
    by_path = TransformersBackend(TransformersConfig(model=str(folder), batch_size=4)).generate(requests)
    monkeypatch.setenv("FACTORY_WAREHOUSE", str(warehouse.root))
    by_name = TransformersBackend(TransformersConfig(model="facts-sft", batch_size=4))
    assert by_name.model_id == "facts-sft"
    named = by_name.generate(requests)
    assert [c.text for c in named] == [c.text for c in by_path]
    learned = sum(c.text == fact and c.finish_reason == "stop" for c, fact in zip(by_path, FACTS, strict=True))
    assert learned >= 2, [c.text for c in by_path]  # it learned the answers, and to stop after them

    # the same command again: nothing to do
    again = cli("facts@1.0.0", "-w", str(warehouse.root), "--max-steps", "6", "--batch-size", "4", "--lr", "1e-4",
                "--max-length", "96", "--save-steps", "1000", "--name", "facts-sft")
    assert again.exit_code == 0 and "already trained" in again.output
    assert warehouse.query("SELECT count(*) AS n FROM models")["n"][0] == 1


@pytest.mark.slow
def test_loss_falls_on_the_assistant_turn_only(warehouse: Warehouse, tmp_path: Path) -> None:
    from factory.training.data import load_rows, resolve_release
    from factory.training.trainer import _build_trainer, resolve_base

    publish(warehouse)
    cfg = TrainConfig(release="facts@1.0.0", max_steps=1, quiet=True)
    source = resolve_release(cfg.release, warehouse)
    dataset = sft_dataset(load_rows(source, "sft", tmp_path / "ds"))
    trainer, tok = _build_trainer(cfg, resolve_base(cfg.base_model, warehouse), dataset, tmp_path / "ck", "cpu",
                                  False, [])
    for ex, original in zip(trainer.train_dataset, dataset, strict=True):
        trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100])
        assert trained == original["completion"][0]["content"] + "<|im_end|>\n"  # answer + end of turn
        assert "<|im_start|>user" in tok.decode(ex["input_ids"])  # the chat template was applied


@pytest.mark.slow
def test_dpo_with_lora_on_preference_pairs(warehouse: Warehouse) -> None:
    publish(warehouse, pairs=True)
    cfg = TrainConfig(release="facts@latest", method="dpo", lora={"r": 4, "alpha": 8}, max_steps=2, batch_size=2,
                      max_length=96, save_steps=1000, warehouse=warehouse.root, quiet=True)
    result = train(cfg)
    assert result.created and result.registered and result.entry.name == "facts-1.0.0-dpo-lora"
    assert (result.path / "adapter" / "adapter_config.json").is_file() and (result.path / "model.safetensors").exists()
    curve = result.training["loss_curve"]
    assert len(curve) == 2 and all("rewards/margins" in row for row in curve)
    assert abs(curve[0]["loss"] - 0.6931) < 1e-3  # policy == reference at the first step: log(2)
    assert result.training["release"]["config"] == "preference"
    got = warehouse.query("SELECT parents FROM models WHERE name = 'facts-1.0.0-dpo-lora'")
    assert got["parents"].to_list() == [["smollm2-135m-instruct", "facts@1.0.0"]]


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_to_the_same_weights(warehouse: Warehouse, tmp_path: Path) -> None:
    publish(warehouse)
    args = ["facts@1.0.0", "-w", str(warehouse.root), "--lora-r", "4", "--max-steps", "3", "--batch-size", "2",
            "--max-length", "96", "--save-steps", "1", "--no-register", "-q"]
    straight = train(load_train_config(None, {"release": "facts@1.0.0", "warehouse": warehouse.root,
                                              "lora": {"r": 4}, "max_steps": 3, "batch_size": 2, "max_length": 96,
                                              "save_steps": 1, "register_model": False, "quiet": True,
                                              "output": tmp_path / "straight"}))

    output = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "factory.cli", "train", *args, "-o", str(output)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 240
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        state = next(tmp_path.glob(".killed.train-*/checkpoints/checkpoint-1/trainer_state.json"), None)
        if state is not None:
            break
        time.sleep(0.05)
    assert state is not None, proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not output.exists()  # nothing half-written where the model goes

    resumed = cli(*args, "-o", str(output))
    assert resumed.exit_code == 0, resumed.output
    t = json.loads((output / TRAINING_JSON).read_text())
    assert t["resumed_from_step"] >= 1 and t["steps"] == 3
    assert t["model_id"] == straight.training["model_id"]  # deterministic for a seed, across the kill
    assert [r["loss"] for r in t["loss_curve"]] == [r["loss"] for r in straight.training["loss_curve"]]
    assert not list(tmp_path.glob(".killed.train-*"))  # the work folder is gone once the model is in place


# -- bad input: one line, nothing written -----------------------------------------------------------------


def test_config_with_a_wrong_type_names_the_field_and_file(tmp_path: Path, warehouse: Warehouse) -> None:
    bad = tmp_path / "train.yaml"
    bad.write_text("release: facts@1.0.0\nepochs: many\n")
    with pytest.raises(TrainConfigError, match=r"train\.yaml: epochs: Input should be a valid number.*'many'"):
        load_train_config(bad, {})
    bad.write_text("release: facts@1.0.0\nlearnin_rate: 0.1\n")
    with pytest.raises(TrainConfigError, match="learnin_rate: Extra inputs are not permitted"):
        load_train_config(bad, {})
    bad.write_text("release: facts@1.0.0\nlora: {r: 0}\n")
    result = cli("--config", str(bad), "-w", str(warehouse.root))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {bad} + command line: lora.r: Input should be greater than or equal to 1 (got 0)"]
    # flags override the file; YAML-only runs name the file
    bad.write_text("release: facts@1.0.0\nepochs: 2\n")
    assert load_train_config(bad, {"epochs": 3.0}).epochs == 3.0
    nothing_written(warehouse)


def test_missing_release_tampered_release_and_dpo_without_pairs(warehouse: Warehouse) -> None:
    result = cli("nope@1.0.0", "-w", str(warehouse.root))
    assert result.exit_code == 1 and "no release named 'nope'" in result.output
    assert len(result.output.strip().splitlines()) == 1

    rel = publish(warehouse)
    result = cli("facts@1.0.0", "--method", "dpo", "-w", str(warehouse.root))
    assert result.exit_code == 1 and "release facts@1.0.0 has no preference data for dpo" in result.output

    shard = rel.path / "data/sft/train-00000-of-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle: the footer (and `factory sql`) still read
    shard.write_bytes(bytes(data))
    result = cli("facts@1.0.0", "-w", str(warehouse.root))
    assert result.exit_code == 1 and "data/sft/train-00000-of-00001.parquet was modified" in result.output
    result = cli(str(rel.path), "-w", str(warehouse.root))  # the folder itself, as on another machine
    assert result.exit_code == 1 and "was modified" in result.output
    nothing_written(warehouse)


def test_missing_base_model_and_unwritable_output(warehouse: Warehouse, tmp_path: Path) -> None:
    publish(warehouse)
    result = cli("facts@1.0.0", "-w", str(warehouse.root), "--base-model", "no-such-model")
    assert result.exit_code == 1 and "base model not found: model 'no-such-model' is neither" in result.output
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("facts@1.0.0", "-w", str(warehouse.root), "-o", str(blocker / "model"))
    assert result.exit_code == 1 and f"output folder {blocker / 'model'} is not writable" in result.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "weights.bin").write_text("someone else's")
    result = cli("facts@1.0.0", "-w", str(warehouse.root), "-o", str(taken))
    assert result.exit_code == 1 and "already exists and holds another model" in result.output
    assert (taken / "weights.bin").read_text() == "someone else's"
    nothing_written(warehouse)


def test_rows_overlapping_the_eval_suites_are_refused(warehouse: Warehouse) -> None:
    from factory.evaluation.decontam import eval_index

    held_out = next(t.text for t in eval_index().prompts.values() if t.suite == "nll")
    add_run(warehouse, "leaky", [*FACTS[:3], held_out])
    releases.publish(warehouse, "leaky", ["leaky"])
    result = cli("leaky@1.0.0", "-w", str(warehouse.root))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "release leaky@1.0.0 (sft): " in result.output and "overlap(s) with the eval suites: row " in result.output
    assert "--no-decontaminate" in result.output
    nothing_written(warehouse)


def test_hub_release_at_a_tag_is_read_and_verified(warehouse: Warehouse, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """hf://ORG/NAME@VERSION through huggingface_hub's cache (offline: a snapshot laid out as a download)."""
    import shutil

    rel = publish(warehouse)
    cache = tmp_path / "hub"
    repo = cache / "datasets--my-org--facts"
    shutil.copytree(rel.path, repo / "snapshots" / ("c0ffee" * 6 + "c0ff"))
    (repo / "refs").mkdir()
    (repo / "refs" / "1.0.0").write_text("c0ffee" * 6 + "c0ff")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import: patch both
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    other = tmp_path / "other-machine"  # no release in this warehouse: only the Hub copy
    result = cli("hf://my-org/facts@1.0.0", "--method", "dpo", "-w", str(other))
    assert result.exit_code == 1 and "release facts@1.0.0 has no preference data" in result.output
    shard = next((repo / "snapshots").glob("*/data/sft/*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    result = cli("hf://my-org/facts@1.0.0", "-w", str(other))
    assert result.exit_code == 1 and "was modified" in result.output
    result = cli("hf://my-org/facts@9.9.9", "-w", str(other))
    assert result.exit_code == 1 and "cannot fetch my-org/facts@9.9.9 from the Hub" in result.output


# -- pieces ----------------------------------------------------------------------------------------------


def test_releases_without_conversational_columns_stay_trainable() -> None:
    import datasets

    old_sft = datasets.Dataset.from_list([{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                                          {"instruction": "Summarise.", "input": "Cats sleep.", "output": "Sleepy"}])
    ds = sft_dataset(old_sft)
    assert ds[1] == {"prompt": [{"role": "user", "content": "Summarise.\n\nCats sleep."}],
                     "completion": [{"role": "assistant", "content": "Sleepy"}]}
    old_pref = datasets.Dataset.from_list([{"prompt": "Q?", "chosen": "good", "rejected": "bad"}])
    assert dpo_dataset(old_pref)[0] == {"prompt": [{"role": "user", "content": "Q?"}],
                                        "chosen": [{"role": "assistant", "content": "good"}],
                                        "rejected": [{"role": "assistant", "content": "bad"}]}
    with pytest.raises(TrainingError, match="no assistant answers"):
        sft_dataset(datasets.Dataset.from_list([{"instruction": "x", "input": "", "output": ""}]))


def test_new_releases_carry_messages_that_match_the_strings(warehouse: Warehouse) -> None:
    rel = publish(warehouse, pairs=True)
    sft = rel_frame = releases.open(rel.ref, warehouse).to_polars("sft")
    for row in rel_frame.iter_rows(named=True):
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        assert row["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    pref = releases.open(rel.ref, warehouse).to_polars("preference")
    row = pref.row(0, named=True)
    assert row["prompt_messages"] == [{"role": "user", "content": row["prompt"]}]
    assert row["chosen_messages"] == [{"role": "assistant", "content": row["chosen"]}]
    assert row["rejected_messages"] == [{"role": "assistant", "content": row["rejected"]}]
    assert sft.height == 4


def test_last_checkpoint_skips_half_written_ones(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(tmp_path / "none") is None


def test_registered_names_resolve_and_are_immutable(warehouse: Warehouse, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.models import resolve_llm

    folder = tmp_path / "elsewhere" / "my-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    entry = registry.ModelEntry("my-model", "abc123", folder, "sft", "smollm2-135m-instruct", "facts@1.0.0", "h")
    assert registry.register(entry, warehouse) and not registry.register(entry, warehouse)
    with pytest.raises(registry.ModelNameTaken, match="'my-model' is already registered"):
        registry.register(registry.ModelEntry("my-model", "other", tmp_path, "sft", "b", "r@1.0.0", "h"), warehouse)
    monkeypatch.setenv("FACTORY_WAREHOUSE", str(warehouse.root))
    assert resolve_llm("my-model") == (folder, None)
    got = warehouse.query("SELECT name, id, parents FROM models")
    assert got.rows() == [("my-model", "abc123", ["smollm2-135m-instruct", "facts@1.0.0"])]
