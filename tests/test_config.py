"""Pipeline files: mistakes are reported with the field's path and what was expected, before any model loads."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.config import ConfigError, load_pipeline

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
backend: {kind: transformers}
stages:
  - kind: seeds
    paths: [data/seeds]
"""


def test_demo_pipeline_is_valid():
    cfg = load_pipeline(ROOT / "data" / "demo.yaml")
    assert [s.kind for s in cfg.stages][:3] == ["seeds", "self_instruct", "self_label"]


@pytest.mark.parametrize("text, expected", [
    (BASE + "  - kind: self_label\n    n: three\n", "stages.1.self_label.n: Input should be a valid integer"),
    (BASE + "  - kind: self_label\n    temperature: 0.5\n", "stages.1.self_label.temperature: Extra inputs"),
    (BASE + "  - kind: sef_label\n", "stages.1: Input tag 'sef_label' found using 'kind' does not match"),
    (BASE + "  - kind: self_instruct\n    rouge_threshold: 1.5\n",
     "stages.1.self_instruct.rouge_threshold: Input should be less than or equal to 1"),
    (BASE.replace("name: t", "name: 'bad name!'"),
     "name: Value error, name 'bad name!' must be 1-100 characters of a-z"),
    (BASE.replace("backend: {kind: transformers}", "backend: {kind: transformers, batch_size: 0}"),
     "backend.transformers.batch_size: Input should be greater than or equal to 1"),
    (BASE.replace("backend: {kind: transformers}", "backend: {kind: gpt5}"), "backend: Input tag 'gpt5'"),
    (BASE + "  - kind: seeds\n    paths: [x]\n", "stage names must be unique; repeated: seeds"),
    ("name: t\nbackend: {kind: fake}\nstages:\n  - kind: self_label\n",
     "stages.0 (self_label) reads tasks, which no earlier stage makes"),
    (BASE + "  - kind: score\n", "stages.1 (score) reads samples, which no earlier stage makes"),
    ("name: t\nstages:\n  - {kind: seeds, paths: [x]}\n  - kind: self_label\n",
     "need an LLM: add a `backend:` section"),
    ("name: t\nstages: []\n", "stages: List should have at least 1 item"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: t\nstages: [\n", "invalid YAML at line"),
])
def test_validation_errors_name_the_field_and_the_expectation(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_cli_reports_config_errors_in_one_message_before_loading_any_model(tmp_path: Path):
    path = write(tmp_path, BASE + "  - kind: self_label\n    n: -1\n")
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert "stages.1.self_label.n: Input should be greater than or equal to 1" in proc.stderr
    assert "Traceback" not in proc.stderr and "loaded transformers" not in proc.stderr
    assert time.monotonic() - began < 30  # no model was loaded


def test_the_warehouse_location_is_not_part_of_a_runs_identity(tmp_path: Path):
    from factory.runner import default_run_id

    one = load_pipeline(write(tmp_path, BASE))
    other = load_pipeline(write(tmp_path, BASE.replace("name: t", "name: t\nwarehouse: /elsewhere")))
    changed = load_pipeline(write(tmp_path, BASE.replace("name: t", "name: t\nseed: 1")))
    assert default_run_id(one) == default_run_id(other) != default_run_id(changed)
