"""Helpers for the fault tests: the real ``factory`` CLI in-process, and small real warehouses to point it at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import Result
from typer.testing import CliRunner

from factory.cli import app


def factory(*args: Any, env: dict[str, str] | None = None) -> Result:
    """``factory ARGS…`` through the real app (stdout and stderr kept apart)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def error_line(res: Result) -> str:
    """The one line a failed command printed on stderr (asserting it is exactly one)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in res.output
    return lines[0]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def seeds_pipeline(tmp: Path, *paths: Path, name: str = "faults", **seeds: Any) -> Path:
    """A pipeline of one seeds stage over ``paths`` whose warehouse is ``tmp/wh``."""
    stage = {"kind": "seeds", "paths": [str(p) for p in paths], **seeds}
    return write_yaml(tmp / "pipeline.yaml", {"name": name, "warehouse": str(tmp / "wh"), "stages": [stage]})


GOOD_ROWS = [{"instruction": "Name three primary colours.", "output": "Red, blue, yellow.", "category": "open_qa"},
             {"instruction": "Translate 'chat' to English.", "output": "Cat.", "category": "rewriting"}]


def labelled_warehouse(tmp: Path, name: str = "labelled") -> tuple[Path, str]:
    """A warehouse with one finished run (seeds → self_label) that has samples to publish.

    The answers come from the scripted backend: what is tested with it (names, versions, the catalog's
    lock and damage) does not depend on the model's words."""
    seeds = write_jsonl(tmp / "seeds.jsonl", GOOD_ROWS)
    pipeline = write_yaml(tmp / f"{name}.yaml", {
        "name": name, "warehouse": str(tmp / "wh"),
        "backend": {"kind": "fake", "replies": ["A complete answer to the task, in one sentence."]},
        "stages": [{"kind": "seeds", "paths": [str(seeds)]}, {"kind": "self_label", "n": 1}]})
    res = factory("run", pipeline, "-q")
    assert res.exit_code == 0, res.output
    run_id = factory("sql", "SELECT run_id FROM runs", "-f", "csv", "-w", tmp / "wh").stdout.splitlines()[1]
    return tmp / "wh", run_id
