"""The self-evolution method stages: Evol-Instruct, SPIN pairs and instruction backtranslation.

Fast tests drive each elimination / reject rule with scripted replies (one parent per pipeline, so the
reply order is known) and the pure parsing functions; slow tests run each stage on the real embedded
model with a few tasks and check the records against the JSON schemas.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest

import schemas
from factory import releases
from factory.config import parse_pipeline
from factory.records import content_id, task_id
from factory.runner import run_pipeline
from stages.backtranslate import BacktranslateConfig, copies_passage, instruction_problem, parse_instruction
from stages.evol_instruct import (
    IN_DEPTH,
    OPS,
    EvolInstructConfig,
    answer_failure,
    choose_op,
    elimination,
    evol_prompt,
    parse_evolved,
    template_id,
)
from stages.spin_pairs import signal
from tests.conftest import write_jsonl

PARENT = "Suggest three ways to keep a vegetable garden free of slugs."
GOOD = "Suggest three ways to keep a vegetable garden free of slugs without chemicals, explaining why each works."
PASSAGE = ("To keep cut tulips standing straight, trim the stems at an angle, wrap the bunch tightly in newspaper "
           "and stand it in cold water for an hour before arranging. Tulips keep growing in the vase and bend "
           "towards light, so turn the vase every day and keep it away from fruit bowls.")


def _validate(kind: str, rows: list[dict[str, Any]]) -> None:
    validator = jsonschema.Draft202012Validator(schemas.load(kind))
    for row in rows:
        clean = {k: v for k, v in row.items() if v is not None or k in ("gold_answer", "margin")}
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(clean)]
        assert not errors, (kind, errors, row)


def _run(tmp_path: Path, stages: list[dict], backend: dict) -> tuple[Any, str]:
    cfg = parse_pipeline({"name": "methods-test", "warehouse": str(tmp_path / "wh"), "backend": backend,
                          "stages": stages})
    result = run_pipeline(cfg, show_progress=False)
    return result.warehouse, result.run_id


def _seeds(tmp_path: Path, rows: list[dict], name: str = "seeds.jsonl") -> str:
    return str(write_jsonl(tmp_path / name, rows))


# -- Evol-Instruct: parsing and the elimination filter ------------------------------------------------


@pytest.mark.parametrize("reply, expected", [
    (f"New task: {GOOD}", GOOD),
    (f"Sure! Here is the new task: \"{GOOD}\"", GOOD),
    (f"**Rewritten task:** {GOOD}\n\nAnswer: 1. Beer traps...", GOOD),
    (f"{GOOD}\nResponse: use copper tape.", GOOD),
    ("Sure! Here it is:\nExplain why slugs prefer damp soil.", "Explain why slugs prefer damp soil."),
    ("  ", ""),
])
def test_parse_evolved(reply: str, expected: str):
    assert parse_evolved(reply) == expected


@pytest.mark.parametrize("evolved, finish, reason", [
    (GOOD, "length", "truncated"),
    ("", "stop", "empty"),
    ("Slugs?", "stop", "too_short"),
    (" ".join(["word"] * 151), "stop", "too_long"),
    (f"Rewrite the given prompt: {GOOD}", "stop", "copies_prompt"),
    (f"{GOOD} #Rewritten Prompt#", "stop", "copies_prompt"),
    (PARENT.upper(), "stop", "no_information_gain"),                       # same after normalising
    (PARENT + " Please.", "stop", "no_information_gain"),  # ROUGE-L >= 0.9
    ("Suggest ways to keep a garden free of slugs.", "stop", "no_information_gain"),  # no new word
    (GOOD, "stop", None),
])
def test_elimination_rules(evolved: str, finish: str, reason: str | None):
    found = elimination(evolved, PARENT, finish, EvolInstructConfig())
    assert (found[0] if found else None) == reason


def test_a_reply_cut_while_answering_its_own_task_is_not_truncated():
    from stages.evol_instruct import task_ended

    reply = f"New task: {GOOD}\n\nAnswer: 1. Beer traps catch"
    assert task_ended(reply) and not task_ended(f"New task: {GOOD[:40]}")
    assert elimination(parse_evolved(reply), PARENT, "length", EvolInstructConfig(), ended=True) is None


@pytest.mark.parametrize("answer, finish, reason", [
    ("", "stop", "answer_empty"),
    ("   \n", "stop", "answer_empty"),
    ("I'm sorry, but I cannot help with that request.", "stop", "answer_refusal"),
    ("As an AI language model, I do not have a garden.", "stop", "answer_refusal"),
    ("... and the, of it; to be.", "stop", "answer_no_content"),
    ("Beer traps", "length", "answer_degenerate"),
    ("Beer traps.", "stop", None),  # short but complete: fine
    ("Sorry to hear about the slugs! " + "Copper tape around the beds stops them crossing. " * 12, "length", None),
])
def test_answer_failure(answer: str, finish: str, reason: str | None):
    found = answer_failure(answer, finish, EvolInstructConfig())
    assert (found[0] if found else None) == reason


def test_op_choice_is_seeded_and_breadth_is_rarer():
    ids = [content_id("t", i) for i in range(600)]
    ops = EvolInstructConfig().ops
    drawn = [choose_op(0, i, ops) for i in ids]
    assert drawn == [choose_op(0, i, ops) for i in ids]  # reproducible
    assert drawn != [choose_op(1, i, ops) for i in ids]  # and the seed matters
    counts = Counter(drawn)
    assert set(counts) == set(OPS)
    assert counts["breadth"] < min(counts[op] for op in IN_DEPTH)
    assert {choose_op(0, i, {"deepen": 1.0}) for i in ids[:50]} == {"deepen"}


def test_every_template_is_versioned_and_filled():
    parent = {"instruction": PARENT, "input": ""}
    for op in OPS:
        prompt = evol_prompt(op, parent, 20)
        assert PARENT in prompt and "{" not in prompt and template_id(op) == f"evol/{op}@1"
    with pytest.raises(ValueError, match="unknown operation"):
        EvolInstructConfig(ops={"shorten": 1.0})
    with pytest.raises(ValueError, match="at least one > 0"):
        EvolInstructConfig(ops={"deepen": 0.0})


def _evol(tmp_path: Path, replies: list[str], **cfg: Any) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    seeds = _seeds(tmp_path, [{"instruction": PARENT, "output": "Beer traps, copper tape, hand picking.",
                               "category": "brainstorming"}])
    wh, run_id = _run(tmp_path, [{"kind": "seeds", "paths": [seeds]},
                                 {"kind": "evol_instruct", "ops": {"add_constraints": 1.0}, **cfg}],
                      {"kind": "fake", "model": "model-r", "replies": replies})
    return (wh.read("tasks", run_id, ["evol_instruct"]), wh.read("samples", run_id, ["evol_instruct"]),
            wh.read("rejects", run_id, ["evol_instruct"]))


def test_evol_keeps_a_good_rewrite_with_lineage_and_its_answer(tmp_path: Path):
    tasks, samples, rejects = _evol(tmp_path, [f"New task: {GOOD}", "Use beer traps, copper tape and wool pellets."])
    assert rejects.is_empty()
    task = tasks.row(0, named=True)
    assert task["instruction"] == GOOD and task["task_id"] == task_id(GOOD)
    assert (task["source"], task["op"], task["category"]) == ("evol", "add_constraints", "brainstorming")
    assert task["parent_ids"] == [task_id(PARENT)] and task["template_id"] == "evol/add_constraints@1"
    assert task["producer"] == "model-r" and task["round"] == 0 and task["evol_depth"] == 1
    sample = samples.row(0, named=True)
    assert sample["task_id"] == task["task_id"] and sample["output"].startswith("Use beer traps")
    _validate("task", tasks.to_dicts())
    _validate("sample", samples.to_dicts())


@pytest.mark.parametrize("replies, reason", [
    ([f"New task: {PARENT}"], "no_information_gain"),
    ([f"New task: Using the given prompt, {GOOD.lower()}"], "copies_prompt"),
    (["New task: Slugs?"], "too_short"),
    ([f"New task: {GOOD}", "I'm sorry, I cannot help with that."], "answer_refusal"),
    ([f"New task: {GOOD}", ""], "answer_empty"),
    ([f"New task: {GOOD}", "?? !! ... the of"], "answer_no_content"),
])
def test_evol_rejects_with_reason_and_raw_text(tmp_path: Path, replies: list[str], reason: str):
    tasks, samples, rejects = _evol(tmp_path, replies)
    assert tasks.is_empty() and samples.is_empty()
    assert rejects["reason"].to_list() == [reason]
    row = rejects.row(0, named=True)
    assert row["record_kind"] == "task_candidate" and row["related_id"] == task_id(PARENT) and row["raw"]
    _validate("reject", rejects.to_dicts())


def test_evol_degenerate_answer_at_max_tokens(tmp_path: Path):
    tasks, _, rejects = _evol(tmp_path, [f"New task: {GOOD}", "Beer traps copper tape wool pellets"],
                              answer_params={"max_tokens": 3}, min_answer_words=5)
    assert tasks.is_empty() and rejects["reason"].to_list() == ["answer_degenerate"]


def test_evol_keeps_the_task_but_not_a_truncated_answer(tmp_path: Path):
    """A long answer cut at max_tokens shows the model can answer, but is not SFT data (self_label's rule)."""
    tasks, samples, rejects = _evol(tmp_path, [f"New task: {GOOD}", "word " * 50], answer_params={"max_tokens": 8})
    assert tasks.height == 1 and samples.is_empty()
    assert rejects.select("record_kind", "reason").rows() == [("sample", "truncated")]


def test_evol_without_answer_check_makes_one_call_per_parent(tmp_path: Path):
    tasks, samples, rejects = _evol(tmp_path, [f"New task: {GOOD}", "I'm sorry."], check_answer=False)
    assert tasks.height == 1 and samples.is_empty() and rejects.is_empty()


def test_evol_drops_tasks_that_overlap_the_eval_suites(tmp_path: Path):
    tasks, _, rejects = _evol(tmp_path, ["New task: What does a thermostat do? Answer in two sentences for a child.",
                                         "It keeps the room at the temperature you choose."])
    assert tasks.is_empty() and rejects["reason"].to_list() == ["eval_overlap"]
    assert "nll" in rejects["detail"][0]


# -- SPIN pairs ---------------------------------------------------------------------------------------


def test_signal():
    assert signal("Paris is the capital.", " Paris  is the capital.\n", 0.9)[1][0] == "identical_to_reference"
    assert signal("RAIN FELL.", "Rain fell.", 0.9, graded=True)[1] is None  # a checker says they differ
    assert signal("The capital is Paris, in France.", "The capital is Paris, in France!", 0.9)[1][0] == \
        "near_identical_to_reference"
    score, none = signal("The capital of France is Paris.", "I think it might be Lyon, a large city.", 0.9)
    assert none is None and 0 <= score < 0.9


def test_spin_pairs_rules_and_release(tmp_path: Path):
    """gold vs the model's answer makes a pair (and the gold a sample); an identical answer, a task with no
    reference and a reference with no model answer are rejects; the release joins the texts."""
    answer = "The model's own answer about it."
    early = _seeds(tmp_path, [
        {"instruction": "Name a fruit that is yellow when ripe.", "output": "A banana is yellow when ripe.",
         "category": "open_qa"},
        {"instruction": "Describe the colour of a clear daytime sky.", "output": answer, "category": "open_qa"},
        {"instruction": "Invent a name for a bakery.", "category": "brainstorming"},  # no gold answer
    ], "early.jsonl")
    late = _seeds(tmp_path, [{"instruction": "Name a green vegetable.", "output": "Broccoli.",
                              "category": "open_qa"}], "late.jsonl")
    wh, run_id = _run(tmp_path, [
        {"kind": "seeds", "paths": [early]},
        {"kind": "self_label", "params": {"max_tokens": 32}},
        {"kind": "seeds", "name": "late_seeds", "paths": [late]},  # no model answer for this one
        {"kind": "spin_pairs"},
        {"kind": "publish", "dataset": "spin", "include_gold": True},
    ], {"kind": "fake", "model": "model-r", "replies": [answer]})
    pairs = wh.read("pairs", run_id, ["spin_pairs"])
    refs = wh.read("samples", run_id, ["spin_pairs"])
    rejects = wh.read("rejects", run_id, ["spin_pairs"])
    banana = task_id("Name a fruit that is yellow when ripe.")
    model_sample = wh.read("samples", run_id, ["self_label"]).filter(pl.col("task_id") == banana).row(0, named=True)
    assert pairs.height == 1
    pair = pairs.row(0, named=True)
    assert (pair["task_id"], pair["rule"], pair["chosen_id"], pair["rejected_id"]) == \
        (banana, "spin", content_id("gold", banana), model_sample["sample_id"])
    assert pair["producer"] == "model-r" and pair["round"] == 0 and 0 < pair["margin"] <= 1
    ref = refs.row(0, named=True)
    assert (ref["sample_id"], ref["output"], ref["producer"], ref["op"]) == \
        (content_id("gold", banana), "A banana is yellow when ripe.", "human", "reference")
    assert sorted(rejects["reason"]) == ["identical_to_reference", "no_model_answer", "no_reference", "spin_rejected"]
    lost = rejects.filter(pl.col("reason") == "spin_rejected").row(0, named=True)
    assert lost["record_kind"] == "sample" and lost["record_id"] == model_sample["sample_id"]
    _validate("pair", pairs.to_dicts())
    _validate("sample", refs.to_dicts())
    _validate("reject", rejects.to_dicts())

    release = releases.open("spin@1.0.0", wh)
    pref = release.to_polars("preference").row(0, named=True)
    assert (pref["chosen"], pref["rejected"], pref["prompt"]) == \
        ("A banana is yellow when ripe.", answer, "Name a fruit that is yellow when ripe.")
    sft = release.to_polars("sft")
    assert sft["sample_id"].n_unique() == sft.height  # the gold answer is there once, with include_gold too
    assert content_id("gold", banana) in sft["sample_id"].to_list()
    assert model_sample["sample_id"] not in sft["sample_id"].to_list()  # the loser is not SFT data


def test_spin_pairs_verified_reference(warehouse):
    """Without a gold answer, a sample a checker marked correct is the chosen side; a wrong answer (rejected
    as ``wrong_answer`` upstream) is the rejected side; another correct answer is never rejected."""
    from factory.context import StageContext
    from factory.records import frame, lineage, reject
    from factory.warehouse import StageStats
    from stages.spin_pairs import SpinPairsConfig
    from stages.spin_pairs import run as spin_run

    warehouse.begin_run("r", "p", "{}", "h", 0)
    ctx = StageContext(run_id="r", stage_name="rest_em", position=0, round=2, seed=0, warehouse=warehouse,
                       earlier_stages=[], show_progress=False)
    tid = task_id("Write one sentence about rain in all capitals.")
    task = {"task_id": tid, "instruction": "Write one sentence about rain in all capitals.", "input": "",
            "gold_answer": None, "category": "ifeval", "source": "problem", **lineage(ctx, producer="problems:train")}
    outputs = {"right": ("RAIN FELL ALL NIGHT.", True), "right2": ("THE RAIN IS COLD.", True),
               "wrong": ("Rain fell all night.", False)}
    samples = [{"sample_id": content_id(name), "task_id": tid, "sample_index": i, "output": out, "correct": ok,
                "finish_reason": "stop", **lineage(ctx, producer="model-r2", parent_ids=[tid])}
               for i, (name, (out, ok)) in enumerate(outputs.items())]
    wrong = reject(ctx, record_kind="sample", record_id=content_id("wrong"), reason="wrong_answer", detail="x")
    warehouse.commit_stage("r", "rest_em", {"tasks": frame("task", [task]), "samples": frame("sample", samples),
                                            "rejects": frame("reject", [wrong])}, StageStats("rest_em", 0, 1, 3, 1))
    ctx = StageContext(run_id="r", stage_name="spin_pairs", position=1, round=2, seed=0, warehouse=warehouse,
                       earlier_stages=["rest_em"], show_progress=False)
    out = spin_run(ctx, SpinPairsConfig(pairs_per_task=4))
    pairs = out.tables["pairs"].to_dicts()
    assert [(p["chosen_id"], p["rejected_id"], p["reference"], p["round"], p["producer"]) for p in pairs] == \
        [(content_id("right"), content_id("wrong"), "verified", 2, "model-r2")]
    assert out.tables["samples"].is_empty()  # the reference is already a sample
    assert out.rejects == []  # the wrong answer was already rejected upstream: no second reject
    assert spin_run(ctx, SpinPairsConfig(references=["gold"])).rejects[0]["reason"] == "no_reference"


def test_spin_pairs_needs_samples_before_it():
    with pytest.raises(ValueError, match="reads tasks, samples"):
        parse_pipeline({"name": "x", "stages": [{"kind": "spin_pairs"}]})


def test_self_label_max_tasks_is_a_seeded_choice(tmp_path: Path):
    """``max_tasks`` (used by data/methods.yaml to keep SPIN's model answers cheap) labels a seeded subset."""
    rows = [{"instruction": f"Name a colour that starts with the letter {c}.", "category": "open_qa"} for c in "BGRPY"]
    stages = [{"kind": "seeds", "paths": [_seeds(tmp_path, rows)]}, {"kind": "self_label", "max_tasks": 2}]
    wh, run_id = _run(tmp_path, stages, {"kind": "fake", "replies": ["Blue is one such colour."]})
    first = wh.read("samples", run_id)["task_id"].sort().to_list()
    wh2, run2 = _run(tmp_path / "again", stages, {"kind": "fake", "replies": ["Blue is one such colour."]})
    assert len(first) == 2 and wh2.read("samples", run2)["task_id"].sort().to_list() == first


# -- instruction backtranslation ----------------------------------------------------------------------


@pytest.mark.parametrize("reply, expected", [
    ("Instruction: How do I keep tulips upright in a vase?", "How do I keep tulips upright in a vase?"),
    ('"How do I keep tulips upright in a vase?"\nText: To keep cut tulips...',
     "How do I keep tulips upright in a vase?"),
    ("\n\nNew task: How should cut tulips be arranged?", "How should cut tulips be arranged?"),
    ("", ""),
])
def test_parse_instruction(reply: str, expected: str):
    assert parse_instruction(reply) == expected


@pytest.mark.parametrize("instruction, finish, reason", [
    ("How do I keep tulips upright?", "length", "truncated"),
    ("", "stop", "empty_instruction"),
    ("Tulips?", "stop", "instruction_too_short"),
    (" ".join(["tulips"] * 61), "stop", "instruction_too_long"),
    ("Explain: trim the stems at an angle, wrap the bunch tightly in newspaper", "stop", "copies_passage"),
    ("keep it away from fruit bowls", "stop", "copies_passage"),  # all of it is a span of the passage
    ("How do I keep cut tulips standing straight in a vase?", "stop", None),
])
def test_instruction_rules(instruction: str, finish: str, reason: str | None):
    found = instruction_problem(instruction, finish, PASSAGE, BacktranslateConfig(paths=[Path("x")]))
    assert (found[0] if found else None) == reason
    if reason == "truncated":  # the instruction's line ended before the cut: usable
        assert instruction_problem(instruction, finish, PASSAGE, BacktranslateConfig(paths=[Path("x")]),
                                   first_line_done=True) is None


def test_copies_passage_detail():
    assert "verbatim run of 12 words" in copies_passage(
        "Why trim the stems at an angle, wrap the bunch tightly in newspaper?", PASSAGE, 8)
    assert copies_passage("How can tulips be kept upright?", PASSAGE, 8) is None


def _backtranslate(tmp_path: Path, replies: list[str], rows: list[dict] | None = None,
                   **cfg: Any) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    path = write_jsonl(tmp_path / "passages.jsonl",
                       rows or [{"text": PASSAGE, "source": "test-garden", "category": "how-to"}])
    wh, run_id = _run(tmp_path, [{"kind": "backtranslate", "paths": [str(path)], **cfg}],
                      {"kind": "fake", "model": "model-r", "replies": replies})
    return (wh.read("tasks", run_id), wh.read("samples", run_id), wh.read("rejects", run_id))


def test_backtranslate_keeps_a_curated_pair(tmp_path: Path):
    instruction = "How do I keep cut tulips standing straight in a vase?"
    tasks, samples, rejects = _backtranslate(tmp_path, [f"{instruction}\nText: and the model goes on",
                                                        '{"reason": "It answers the question well.", "score": 5}'])
    assert rejects.is_empty()
    task, sample = tasks.row(0, named=True), samples.row(0, named=True)
    assert (task["instruction"], task["input"], task["source"], task["op"], task["category"]) == \
        (instruction, "", "backtranslated", "backtranslate", "how-to")
    assert task["producer"] == "model-r" and task["template_id"] == "backtranslate/instruction@1"
    assert task["parent_ids"] == [content_id("passage", " ".join(PASSAGE.lower().split()))]
    assert (sample["output"], sample["producer"], sample["task_id"]) == (PASSAGE, "passage:test-garden",
                                                                         task["task_id"])
    assert sample["curate_score"] == 5.0 and sample["curate_template_id"] == "backtranslate/curate-json@1"
    _validate("task", tasks.to_dicts())
    _validate("sample", samples.to_dicts())


@pytest.mark.parametrize("replies, reason, raw_from", [
    (["Instruction: How do I keep cut tulips upright?", "Fine. Score: 3"], "low_score", "curate"),
    (["Instruction: How do I keep cut tulips upright?", "1: unrelated\n2: misses it\n3: helps"], "unparseable_score",
     "curate"),  # the rubric echoed back is no verdict
    (["Instruction: How do I keep cut tulips upright?", "Score: 3/5"], "low_score", "curate"),
    (["Instruction: How do I keep cut tulips upright?", "A lovely answer, I like it."], "unparseable_score",
     "curate"),
    (["Instruction: How do I keep cut tulips upright?", "Score: 0"], "unparseable_score", "curate"),  # out of 1-5
    (["Instruction: How do I keep cut tulips upright?", "Score: 9/10"], "unparseable_score", "curate"),
    (["Instruction: How do I keep cut tulips upright?", '{"reason": "ok", "score": 9}'], "unparseable_score",
     "curate-json"),
    (["Instruction: How do I keep cut tulips upright?", '{"reason": "ok", "score": 2}'], "low_score",
     "curate-json"),
    (["Instruction:"], "empty_instruction", "instruction"),
    (["Instruction: Trim the stems at an angle, wrap the bunch tightly in newspaper and stand it."],
     "copies_passage", "instruction"),
])
def test_backtranslate_rejects(tmp_path: Path, replies: list[str], reason: str, raw_from: str):
    tasks, samples, rejects = _backtranslate(tmp_path, replies, structured=raw_from == "curate-json")
    assert tasks.is_empty() and samples.is_empty()
    assert rejects["reason"].to_list() == [reason]
    assert rejects["raw"][0] == replies[0 if raw_from == "instruction" else 1]
    assert (rejects["record_kind"][0], rejects["record_id"][0]) == \
        ("task_candidate", task_id(parse_instruction(replies[0])) if parse_instruction(replies[0]) else None)
    _validate("reject", rejects.to_dicts())


def test_backtranslate_min_score_and_bad_passages(tmp_path: Path):
    rows = [{"text": PASSAGE, "source": "s"}, {"text": "Too short to answer anything.", "source": "s"},
            {"text": 42}, {"text": PASSAGE.upper(), "source": "s"}]
    tasks, _, rejects = _backtranslate(tmp_path, ["Instruction: How do I keep cut tulips upright?", "Score: 3"],
                                       rows, min_score=3, structured=False)
    assert tasks.height == 1 and tasks["category"][0] == "backtranslated"  # no category field: the default
    assert sorted(rejects["reason"]) == ["bad_row", "duplicate", "passage_length"]
    assert all(r["source_file"] and r["source_line"] for r in rejects.to_dicts())


def test_backtranslate_without_curation_keeps_sane_pairs(tmp_path: Path):
    tasks, samples, rejects = _backtranslate(tmp_path, ["How do I keep cut tulips upright?", "Score: 1"],
                                             curate=False)
    assert rejects.is_empty() and tasks.height == 1
    assert samples["curate_score"].to_list() == [None] and samples["curate_raw"].to_list() == [None]


def test_backtranslate_missing_file_names_it(tmp_path: Path):
    with pytest.raises(ValueError, match="nowhere.jsonl: no such file"):
        _run(tmp_path, [{"kind": "backtranslate", "paths": [str(tmp_path / "nowhere.jsonl")]}],
             {"kind": "fake", "replies": ["x"]})


def test_shipped_passages_are_clean_and_documented():
    """The passages that ship with the project: 40-150 words, licensed, and no overlap with any eval suite."""
    from factory.evaluation.decontam import find_overlaps

    path = Path(__file__).resolve().parent.parent / "data" / "unlabeled" / "passages.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert 60 <= len(rows) <= 100
    assert all(40 <= len(r["text"].split()) <= 150 and r["license"] == "CC0-1.0" and r["source"] for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)
    assert find_overlaps(rows) == []


# -- the real embedded model --------------------------------------------------------------------------

SEEDS = [
    {"instruction": "Give two tips for staying focused while studying.", "category": "open_qa",
     "output": "Put your phone in another room, and study in short blocks with a five-minute break between them."},
    {"instruction": "Name a musical instrument with strings.", "category": "open_qa",
     "output": "The violin is a string instrument played with a bow."},
    {"instruction": "Suggest a title for a story about a lost kite.", "category": "brainstorming"},
]


@pytest.mark.slow
def test_methods_on_the_embedded_model(tmp_path: Path, embedded_backend, monkeypatch):
    """Each method on SmolLM2-135M: records of the right shape, every input accounted for, rejects with reasons."""
    monkeypatch.setattr("factory.runner.load_backend", lambda cfg: embedded_backend)
    passages = Path(__file__).resolve().parent.parent / "data" / "unlabeled" / "passages.jsonl"
    rows = [json.loads(line) for line in passages.read_text().splitlines()][:3]
    rows.append({"text": "Far too short.", "source": "test"})
    wh, run_id = _run(tmp_path, [
        {"kind": "seeds", "paths": [_seeds(tmp_path, SEEDS)]},
        {"kind": "self_label", "params": {"max_tokens": 48}},
        {"kind": "evol_instruct", "params": {"max_tokens": 64}, "answer_params": {"max_tokens": 32}},
        {"kind": "backtranslate", "paths": [str(write_jsonl(tmp_path / "p.jsonl", rows))], "min_score": 1,
         "params": {"max_tokens": 40}, "curate_params": {"max_tokens": 48}},
        {"kind": "spin_pairs", "keep_rejected_in_sft": True},
    ], {"kind": "transformers"})
    model = embedded_backend.model_id
    rejects = wh.read("rejects", run_id)
    _validate("reject", rejects.to_dicts())

    # Evol-Instruct: each of the 3 parents is evolved, then kept or eliminated with a known reason
    evolved = wh.read("tasks", run_id, ["evol_instruct"])
    _validate("task", evolved.to_dicts())
    evol_rejects = rejects.filter((pl.col("stage") == "evol_instruct") & (pl.col("record_kind") == "task_candidate"))
    assert evolved.height + evol_rejects.height == 3
    assert set(evol_rejects["reason"]) <= {"truncated", "empty", "too_short", "too_long", "copies_prompt",
                                           "no_information_gain", "duplicate", "answer_empty", "answer_refusal",
                                           "answer_no_content", "answer_degenerate", "eval_overlap"}
    seed_ids = {task_id(s["instruction"]) for s in SEEDS}
    for t in evolved.to_dicts():
        assert t["source"] == "evol" and t["op"] in OPS and t["parent_ids"][0] in seed_ids and t["producer"] == model

    # backtranslation: 3 passages give instructions, min_score 1 keeps every parseable one; the short one is a reject
    bt_tasks = wh.read("tasks", run_id, ["backtranslate"])
    bt_samples = wh.read("samples", run_id, ["backtranslate"])
    _validate("task", bt_tasks.to_dicts())
    _validate("sample", bt_samples.to_dicts())
    bt_rejects = rejects.filter(pl.col("stage") == "backtranslate")
    assert bt_rejects.filter(pl.col("record_kind") == "passage")["reason"].to_list() == ["passage_length"]
    assert bt_tasks.height + bt_rejects.filter(pl.col("record_kind") == "task_candidate").height == 3
    assert set(bt_samples["output"]) <= {r["text"] for r in rows}
    assert all(t["source"] == "backtranslated" and t["producer"] == model for t in bt_tasks.to_dicts())

    # SPIN: the two seeds with gold answers and a kept model answer become pairs; the third has no reference
    pairs = wh.read("pairs", run_id, ["spin_pairs"])
    _validate("pair", pairs.to_dicts())
    spin_rejects = rejects.filter(pl.col("stage") == "spin_pairs")
    assert "no_reference" in spin_rejects["reason"].to_list()
    labelled = wh.read("samples", run_id, ["self_label"])
    with_gold = {task_id(s["instruction"]) for s in SEEDS if "output" in s}
    answered = with_gold & set(labelled["task_id"])
    assert set(pairs["task_id"]) | set(spin_rejects["related_id"].drop_nulls()) >= answered
    for p in pairs.to_dicts():
        assert p["rule"] == "spin" and p["producer"] == model and p["chosen_id"] == content_id("gold", p["task_id"])
        assert p["rejected_id"] in set(labelled["sample_id"])
