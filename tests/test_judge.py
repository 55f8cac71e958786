"""The judge: score parsing, the calibration set, the reliability check and its fallback, pairwise pairs.

The reliability check runs with the real embedded model (SmolLM2-135M): its calibration accuracy is
recorded (``record_property`` and the printed line), and the test asserts that the composite score falls
back to heuristics whenever that accuracy is below the threshold. Small scripted judges below exercise
the pass/fail branches deterministically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from factory.backends.base import ChatRequest, Completion, GenParams
from factory.config import parse_pipeline
from factory.context import StageContext
from factory.records import content_id, frame
from factory.runner import run_pipeline
from factory.warehouse import StageStats
from stages.judge import CALIBRATION, JudgeConfig, calibration_pairs, parse_score, parse_winner
from stages.judge import run as judge_run
from stages.score import ScoreConfig, judge_trusted, score_samples
from tests.conftest import write_jsonl


@pytest.mark.parametrize("text, expected", [
    # good
    ("The answer is relevant and correct.\nScore: 4", 4),
    ("**Score:** 3", 3),
    ("Overall score 4/5.", 4),
    ("Score - 2 out of 5", 2),
    ("It earns a total of 4 points.", 4),
    ("score=0", 0),
    ("Score: 3.5", 3.5),
    ("Rating: 4/5", 4),
    # odd: the last occurrence wins; rubric echoes are not scores
    ("Score: 2 at first glance, but on reflection the final Score: 5", 5),
    ("Total: 5 points\nScore: 2", 2),
    ("Add 1 point if the response is relevant. The response is relevant. Score: 1", 1),
    ("Score: 4\n\nAdd 1 point if it is excellent.", 4),
    # broken
    ("Score: N", None),
    ("Score: 7", None),
    ("Score: -1", None),
    ("I would rate it 8/10", None),
    ("Score: 4/10", None),
    ("Add 1 point if the response is relevant.", None),
    ("This is a good answer.", None),
    ("", None),
])
def test_parse_score(text: str, expected: float | None):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Response A is clearer.\nWinner: A", "A"),
    ("**Winner:** B", "B"),
    ("Winner: A... actually, Winner: B", "B"),
    ("B", "B"),
    ("Verdict - Response A", "A"),
    ("Both are fine.", None),
    ("", None),
])
def test_parse_winner(text: str, expected: str | None):
    assert parse_winner(text) == expected


def test_calibration_set():
    pairs = calibration_pairs(0)
    assert len(pairs) == len(CALIBRATION) >= 12
    assert {p["corruption"] for p in pairs} == {"truncated", "shuffled", "off_topic"}
    for p in pairs:
        assert p["good"] != p["bad"]
        if p["corruption"] == "shuffled":
            assert sorted(p["good"].split()) == sorted(p["bad"].split())
        if p["corruption"] == "truncated":
            assert p["good"].startswith(p["bad"]) and len(p["bad"]) < len(p["good"])
    assert pairs == calibration_pairs(0)


class ScriptedJudge:
    """A judge that grades with a rule (no model): for the trusted/untrusted branches of the stage."""

    def __init__(self, rule):
        self.model_id, self.batch_size, self.rule = "scripted", 8, rule

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return [Completion(self.rule(r.messages[-1][1]), "stop", 10, 5) for r in requests]


GOOD_ANSWERS = dict(CALIBRATION)


def oracle(prompt: str) -> str:
    question = prompt.split("Question: ", 1)[1].split("\n\nResponse: ", 1)[0]
    answer = prompt.split("Response: ", 1)[1].split("\n\nJustify", 1)[0]
    return "Clear and correct. Score: 5" if GOOD_ANSWERS.get(question) == answer else "Poor. Score: 1"


def _ctx(warehouse, backend) -> StageContext:
    return StageContext(run_id="r", stage_name="judge", position=0, round=0, seed=0, warehouse=warehouse,
                        earlier_stages=[], backend_loader=lambda: backend, show_progress=False)


def test_oracle_judge_is_trusted(warehouse):
    out = judge_run(_ctx(warehouse, ScriptedJudge(oracle)), JudgeConfig(structured=False))
    assert out.metrics["calibration_accuracy"] == 1.0 and out.metrics["trusted"]
    calib = out.tables["judgments"].filter(pl.col("kind") == "calibration")
    assert calib.height == 2 * len(CALIBRATION) and calib["parsed_ok"].all()
    assert calib["judge_template_id"].unique().to_list() == ["judge/additive5@1"]


@pytest.mark.parametrize("fallback", [True, False])
def test_constant_judge_fails_calibration(warehouse, fallback: bool):
    out = judge_run(_ctx(warehouse, ScriptedJudge(lambda _: "Score: 3")),
                    JudgeConfig(fallback_to_heuristics=fallback, structured=False))
    assert out.metrics["calibration_accuracy"] == 0.0 and not out.metrics["calibration_passed"]
    assert out.metrics["trusted"] is (not fallback)


def test_pairwise_and_repeats_with_scripted_judge(tmp_path: Path):
    """k repeats, mean/spread, parse failures and swap-agreeing pairs, through the whole pipeline."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": "Name a planet."}])
    cfg = {"name": "pw", "warehouse": str(tmp_path / "wh"),
           "backend": {"kind": "fake", "replies": ["Mars is a planet.", "Venus is a planet."]},
           "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                      {"kind": "self_label", "n": 2, "params": {"max_tokens": 32}},
                      {"kind": "judge", "k": 3, "calibrate": False, "pairwise": True, "structured": False},
                      {"kind": "score"}]}
    # the fake backend answers every judge prompt with the next scripted reply: the two answers, which
    # the parser cannot read (parse failures), so no pair is made either
    result = run_pipeline(parse_pipeline(cfg), show_progress=False)
    wh = result.warehouse
    j = wh.query("SELECT kind, count(*) AS n, sum(parsed_ok::INT) AS ok FROM judgments GROUP BY kind ORDER BY kind")
    assert j.to_dicts() == [{"kind": "additive-5", "n": 6, "ok": 0}, {"kind": "pairwise", "n": 2, "ok": 0}]
    metrics = json.loads(wh.query("SELECT metrics FROM stages WHERE stage = 'judge'")["metrics"][0])
    assert metrics["parse_failure_rate"] == 1.0 and metrics["pairs"] == 0
    assert wh.query("SELECT judge_n FROM judge_scores")["judge_n"].to_list() == [0, 0]


@pytest.mark.slow
def test_reliability_check_with_the_embedded_model(warehouse, embedded_backend, record_property):
    """The real 135M judge: record its calibration accuracy; below the threshold, scores fall back."""
    samples = _commit_samples(warehouse, [("What colour is the sky on a clear day?", "It is blue."),
                                          ("Name a fruit.", "the the the the")])
    ctx = _ctx(warehouse, embedded_backend)
    ctx.earlier_stages = ["label"]
    # 3 of the 12 calibration pairs (one truncated, one shuffled, one off-topic twin) and 2 samples: the
    # 8 calls fill one batch of the fixture's backend, which keeps this test near a minute on 2 CPU cores
    cfg = JudgeConfig(k=1, calibration_size=3, params=GenParams(max_tokens=32, temperature=0.7, top_p=0.95))
    out = judge_run(ctx, cfg)
    m = out.metrics
    accuracy = m["calibration_accuracy"]
    record_property("calibration_accuracy", accuracy)
    record_property("parse_failure_rate", m["parse_failure_rate"])
    print(f"\nSmolLM2-135M judge: calibration accuracy {accuracy:.3f} on {m['calibration_pairs']} pairs, "
          f"calibration parse-failure rate {m['calibration_parse_failure_rate']}, "
          f"sample parse-failure rate {m['parse_failure_rate']}")
    judgments = out.tables["judgments"]
    assert judgments.filter(pl.col("kind") == "calibration").height == 2 * 3
    assert judgments.filter(pl.col("kind") == "additive-5").height == 2
    assert (judgments["parsed_ok"] == judgments["score"].is_not_null()).all()
    judge_scores = out.tables["judge_scores"]
    scores = score_samples(samples, judge_scores, ScoreConfig(), use_judge=judge_trusted(judge_scores))
    if accuracy < cfg.min_calibration_accuracy:
        assert m["trusted"] is False and not judge_trusted(judge_scores)
        assert not scores["judge_used"].any()
        assert (scores["composite"] == scores["heuristic"]).all()
    else:
        assert m["trusted"] is True


def _commit_samples(warehouse, answers: list[tuple[str, str]]) -> pl.DataFrame:
    rows = [{"sample_id": content_id("s", i, a), "task_id": content_id("t", q), "sample_index": i,
             "instruction": q, "input": "", "output": a, "finish_reason": "stop", "run_id": "r", "stage": "label",
             "round": 0, "producer": "test", "parent_ids": []} for i, (q, a) in enumerate(answers)]
    samples = frame("sample", rows)
    warehouse.commit_stage("r", "label", {"samples": samples}, StageStats("self_label", 0, 1, len(rows), 0))
    return samples


def test_pairwise_swap_agreement_makes_a_pair(warehouse):
    """A judge that always prefers the answer mentioning Mars agrees with itself in both orders (a pair);
    one that always says "A" contradicts itself once the order is swapped (no pair)."""
    samples = _commit_samples(warehouse, [("Name a planet.", "Mars is the fourth planet."),
                                          ("Name a planet.", "I like turtles.")])

    def prefers_mars(prompt: str) -> str:
        if "Response A:" in prompt:
            a = prompt.split("Response A: ", 1)[1].split("\n\nResponse B:", 1)[0]
            return "Winner: A" if "Mars" in a else "**Winner:** B"
        return "Score: 5" if "Mars" in prompt else "Score: 1"

    ctx = _ctx(warehouse, ScriptedJudge(prefers_mars))
    ctx.earlier_stages = ["label"]
    out = judge_run(ctx, JudgeConfig(k=3, calibrate=False, pairwise=True, structured=False))
    pairs = out.tables["pairs"]
    mars = samples.filter(pl.col("output").str.contains("Mars"))["sample_id"][0]
    assert pairs.height == 1 and pairs["chosen_id"][0] == mars and pairs["margin"][0] == 4.0
    assert pairs["rule"][0] == "pairwise-swap-agree"
    js = out.tables["judge_scores"].sort("judge_mean")
    assert js["judge_mean"].to_list() == [1.0, 5.0] and js["judge_spread"].to_list() == [0.0, 0.0]
    assert js["judge_n"].to_list() == [3, 3] and out.metrics["parse_failure_rate"] == 0.0

    ctx = _ctx(warehouse, ScriptedJudge(lambda p: "Winner: A" if "Response A:" in p else "Score: 3"))
    ctx.earlier_stages = ["label"]
    out = judge_run(ctx, JudgeConfig(k=1, calibrate=False, pairwise=True, structured=False))
    assert out.tables["pairs"].height == 0 and out.metrics["pairwise_judgments"] == 2
