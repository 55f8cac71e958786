"""Self-Instruct: list parsing, rule and novelty filters, and what happens to output that cannot be used."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from factory.config import parse_pipeline
from factory.runner import run_pipeline
from stages.self_instruct import SelfInstructConfig, parse_numbered_list, rule_violation
from tests.conftest import DEMO_SEEDS


@pytest.mark.parametrize("text, expected", [
    ("9. Explain photosynthesis to a child.\n10. List three uses of vinegar.",
     ["Explain photosynthesis to a child.", "List three uses of vinegar."]),
    ("Sure! Here are some tasks:\n\n9) Name a mammal that lays eggs\n10) Describe a rainbow\n\nHope this helps",
     ["Name a mammal that lays eggs", "Describe a rainbow"]),
    ("9. Task: Suggest a name for a cat. 10. Instruction: Convert 5 km to miles.",
     ["Suggest a name for a cat.", "Convert 5 km to miles."]),
    ("- Give two synonyms for happy\n* Summarize the plot of Cinderella\n\u2022 Define entropy",
     ["Give two synonyms for happy", "Summarize the plot of Cinderella", "Define entropy"]),
    ('Task 1: "Write a limerick about tea."', ["Write a limerick about tea."]),
    ("I am sorry, I cannot come up with tasks.", []),
    ("", []),
    ("9.\n10.   \n", []),
])
def test_parse_numbered_list(text: str, expected: list[str]):
    assert parse_numbered_list(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("Do it", "too_short"),
    (" ".join(["word"] * 61), "too_long"),
    ("Draw a picture of a horse in the snow", "blocked_word"),
    ("Describe the image of a sunset over the sea", "blocked_word"),
    ("¿Cuál es la capital de Francia y por qué?", "non_ascii_start"),
    ("Summarize the following paragraph in one sentence.", "dangling_reference"),
    ("Answer the above question in detail please.", "dangling_reference"),
    ("The 3rd task is:", "incomplete"),
    ("Here are four new tasks for you", "incomplete"),
    ("Explain why the sky looks blue during the day.", None),
])
def test_rule_filters(text: str, reason: str | None):
    found = rule_violation(text, SelfInstructConfig())
    assert (found[0] if found else None) == reason


def pipeline(tmp_path: Path, backend: dict, **si) -> dict:
    return {"name": "si", "warehouse": str(tmp_path / "wh"), "backend": backend,
            "stages": [{"kind": "seeds", "paths": [str(DEMO_SEEDS)]},
                       {"kind": "self_instruct", "prompts_per_batch": 4, **si}]}


def test_control_flow_with_scripted_replies(tmp_path: Path):
    """Fake replies exercise every branch: novelty vs the seed pool, duplicates within the run, rules,
    unparseable answers, and stopping at the target count."""
    replies = [
        "9. Explain how a bicycle gear works.\n10. Explain how a bicycle gear works!",      # 2nd too similar
        "I cannot help with that.",                                                        # unparseable
        "9. Draw a map of your town\n10. Suggest three names for a bakery near the sea.",  # blocked + ok
        "9. List three ways to save water at home.\n10. Give a synonym for quick.",        # ok, ok (target)
        "9. Name a planet with rings.",                                                     # never reached
    ]
    cfg = parse_pipeline(pipeline(tmp_path, {"kind": "fake", "replies": replies}, target_tasks=4, max_calls=8))
    result = run_pipeline(cfg, show_progress=False)
    wh = result.warehouse
    tasks = wh.read("tasks", run_id=result.run_id, stages=["self_instruct"])
    rejects = wh.read("rejects", run_id=result.run_id)
    # requests go to the backend length-sorted, so which prompt got which reply varies; the outcome does not
    assert sorted(tasks["instruction"]) == [
        "Explain how a bicycle gear works.", "Give a synonym for quick.",
        "List three ways to save water at home.", "Suggest three names for a bakery near the sea."]
    assert sorted(rejects["reason"]) == ["blocked_word", "too_similar", "unparseable"]
    similar = rejects.filter(pl.col("reason") == "too_similar").row(0, named=True)
    gear = tasks.filter(pl.col("instruction").str.starts_with("Explain how a bicycle"))["task_id"][0]
    assert similar["related_id"] == gear and similar["similarity"] > 0.7
    unparseable = rejects.filter(pl.col("reason") == "unparseable").row(0, named=True)
    assert unparseable["raw"] == "I cannot help with that." and unparseable["record_kind"] == "model_output"
    stage = wh.query("SELECT calls, records_out FROM stages WHERE stage = 'self_instruct'").row(0, named=True)
    assert stage == {"calls": 4, "records_out": 4}  # the 4th batch's calls reached the target; no 5th call
    row = tasks.row(0, named=True)
    assert row["source"] == "self_instruct" and row["template_id"] == "self_instruct/bootstrap@1"
    seed_ids = set(wh.read("tasks", run_id=result.run_id, stages=["seeds"])["task_id"])
    # first batch: 6 seed demonstrations, no machine-made tasks in the pool yet
    assert len(row["parent_ids"]) == 6 and set(row["parent_ids"]) <= seed_ids
    assert row["novelty_nearest_id"] is not None


@pytest.mark.slow
def test_real_model_output_is_parsed_or_rejected_with_its_raw_text(tmp_path: Path, embedded_backend):
    cfg = parse_pipeline(pipeline(tmp_path, {"kind": "transformers", "batch_size": 8},
                                  target_tasks=50, max_calls=4, params={"max_tokens": 48}))
    from factory.runner import Runner

    runner = Runner(cfg, show_progress=False)
    runner._backend = embedded_backend  # reuse the session's loaded model
    result = runner.run()
    wh = result.warehouse
    tasks = wh.read("tasks", run_id=result.run_id, stages=["self_instruct"])
    rejects = wh.read("rejects", run_id=result.run_id)
    stage = wh.query("SELECT calls, completion_tokens FROM stages WHERE stage = 'self_instruct'").row(0)
    assert stage[0] == 4 and stage[1] > 0
    # with max_tokens=48 the model's lists are cut off: every answer yields tasks, a truncated item or a reject
    assert tasks.height + rejects.height >= 4
    assert rejects.filter(pl.col("raw").is_null() & (pl.col("reason") != "target_reached")).is_empty()
    assert (rejects["reason"] == "truncated").any()
