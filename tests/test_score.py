"""Quality scoring in DuckDB: every heuristic on hand-made records, the composite, decontamination."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from factory.config import parse_pipeline
from factory.runner import run_pipeline
from stages.score import ScoreConfig, Thresholds, Weights, compute_features, find_contamination, score_samples
from tests.conftest import write_jsonl


def sample(sid: str, instruction: str, output: str, finish_reason: str = "stop", input: str = "") -> dict:
    return {"sample_id": sid, "instruction": instruction, "input": input, "output": output,
            "finish_reason": finish_reason}


GOOD = sample("good", "What is the capital of France?", "The capital of France is Paris.")
RECORDS = [
    GOOD,
    sample("repeat", "Describe a cat.", "the cat is nice the cat is nice the cat is nice the cat is nice."),
    sample("symbols", "Give an example.", "### ***{{[[ ok ]]}}*** $$$ ### @@@ == ok"),
    sample("digits", "Compute.", "12345 + 678 = 13023; 99*9 = 891 ok"),
    sample("refusal", "Tell me how to pick a lock.", "I'm sorry, but I cannot help with that request."),
    sample("apology", "Summarise the news.", "I apologise, as an AI I do not have access to the news."),
    sample("echo", "Write a poem about the sea and the sky.", "Write a poem about the sea and the sky."),
    sample("unfinished", "List three fruits.", "Apples, bananas and"),
    sample("cut", "Explain photosynthesis.", "Plants use light to make sugar from water.", "length"),
    sample("comma", "Name two colours.", "Red, blue,"),
    sample("short", "Explain in detail how a car engine works, including the role of pistons, valves, the "
                    "crankshaft, fuel injection, ignition timing and the cooling system.", "Pistons."),
]


@pytest.fixture(scope="module")
def features() -> dict[str, dict]:
    df = compute_features(pl.DataFrame(RECORDS))
    return {r["sample_id"]: r for r in df.iter_rows(named=True)}


def test_good_answer_passes(features):
    f = features["good"]
    assert f["heuristic_reasons"] == []
    assert f["answer_words"] == 6 and f["instruction_words"] == 6 and f["answer_chars"] == 31
    assert f["word_repetition"] == 0 and f["ngram_repetition"] == 0 and f["ends_cleanly"]
    assert not f["refusal"] and not f["echo"] and not f["unfinished"]


def test_repetition(features):
    f = features["repeat"]
    assert f["word_repetition"] == pytest.approx(0.75)       # 4 distinct of 16 words
    assert f["ngram_repetition"] == pytest.approx(1 - 4 / 14, abs=1e-3)  # 4 distinct of 14 trigrams
    assert "repetitive_ngrams" in f["heuristic_reasons"]


def test_non_alpha_and_symbols(features):
    assert features["symbols"]["symbol_ratio"] > 0.2 and "symbols" in features["symbols"]["heuristic_reasons"]
    assert features["digits"]["non_alpha_ratio"] > 0.6
    assert "non_alphabetic" in features["digits"]["heuristic_reasons"]
    assert features["good"]["non_alpha_ratio"] == pytest.approx(1 / 31, abs=1e-3)  # the final "."


def test_refusal_and_apology(features):
    assert features["refusal"]["refusal"] and "refusal" in features["refusal"]["heuristic_reasons"]
    assert features["apology"]["refusal"]


def test_echo(features):
    f = features["echo"]
    assert f["echo"] and f["echo_overlap"] == 1.0 and "echo" in f["heuristic_reasons"]


def test_unfinished(features):
    for sid in ("unfinished", "cut", "comma"):
        assert features[sid]["unfinished"], sid
        assert "unfinished" in features[sid]["heuristic_reasons"], sid


def test_length_ratio(features):
    f = features["short"]
    assert f["answer_instruction_ratio"] < 0.05
    assert f["heuristic_reasons"] == ["too_short", "answer_too_short_for_instruction"]


def test_thresholds_come_from_config():
    lenient = ScoreConfig(thresholds=Thresholds(max_ngram_repetition=0.9, min_words=0,
                                                min_answer_instruction_ratio=0))
    df = compute_features(pl.DataFrame([RECORDS[1], RECORDS[-1]]), lenient)
    assert df["heuristic_reasons"].to_list() == [[], []]


def test_composite_formula_and_judge_fallback():
    judge = pl.DataFrame({"sample_id": ["good"], "judge_mean": [0.0], "judge_spread": [0.5], "judge_n": [3]})
    cfg = ScoreConfig(weights=Weights(w_judge=0.5))
    heuristic_only = score_samples(pl.DataFrame([GOOD]), judge, cfg, use_judge=False).row(0, named=True)
    with_judge = score_samples(pl.DataFrame([GOOD]), judge, cfg, use_judge=True).row(0, named=True)
    assert heuristic_only["composite"] == heuristic_only["heuristic"] and not heuristic_only["judge_used"]
    assert with_judge["judge_used"]
    assert with_judge["composite"] == pytest.approx(0.5 * 0.0 / 5 + 0.5 * with_judge["heuristic"], abs=1e-4)
    assert with_judge["drop_reasons"] == ["low_composite"] and not with_judge["keep"]
    assert heuristic_only["keep"] and heuristic_only["drop_reasons"] == []


def test_every_bad_record_is_dropped_with_reasons():
    scores = score_samples(pl.DataFrame(RECORDS))
    by_id = {r["sample_id"]: r for r in scores.iter_rows(named=True)}
    assert by_id["good"]["keep"]
    assert all(not r["keep"] and r["drop_reasons"] for sid, r in by_id.items() if sid != "good")


def test_decontamination_on_planted_overlap():
    benchmark = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many "
                 "clips in May how many clips did she sell altogether")
    evals = pl.DataFrame({"benchmark": ["gsm.jsonl"], "text": [benchmark]})
    planted = sample("planted", "Solve this:", "NATALIA sold clips to forty-eight of her friends in April, and "
                     "then she sold half as many clips in May! So 72.")
    near = sample("near", "Solve this:", "Natalia sold clips to forty eight of her friends in April and "
                  "went home.")  # 12 shared words: below the 13-gram
    found = find_contamination(pl.DataFrame([planted, near, GOOD]), evals, ngram=13)
    assert found["sample_id"].to_list() == ["planted"]
    row = found.row(0, named=True)
    assert row["benchmark"] == "gsm.jsonl" and len(row["ngram"].split()) == 13
    assert row["ngram"] in benchmark.lower()


def test_score_stage_in_a_pipeline(tmp_path: Path):
    """seeds → self_label (scripted answers) → score with a planted eval overlap: the scores table,
    rejects whose detail says why, and samples_kept. The features themselves are tested above."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": q} for q in (
        "What is the capital of France?", "Describe a cat in one sentence.", "Name a planet and describe it.")])
    replies = ["The capital of France is Paris.",
               "the cat is nice the cat is nice the cat is nice the cat.",
               "Mars is a planet that appears in the benchmark sentence about red dust storms on the surface."]
    bench = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Which planet? Mars is a planet that appears in "
                                                               "the benchmark sentence about red dust storms"}])
    cfg = {"name": "score", "warehouse": str(tmp_path / "wh"),
           "backend": {"kind": "fake", "replies": replies},
           "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                      {"kind": "self_label", "params": {"max_tokens": 64}},
                      {"kind": "score", "eval_sets": [{"path": str(bench)}]}]}
    result = run_pipeline(parse_pipeline(cfg), show_progress=False)
    wh = result.warehouse
    why = wh.query("""SELECT s.output, r.reason, r.detail FROM samples s JOIN rejects r
                      ON r.record_id = s.sample_id AND r.stage = 'score' ORDER BY r.reason""")
    reasons = dict(zip(why["reason"], why["detail"], strict=True))
    assert set(reasons) == {"contaminated", "low_quality"}
    assert "eval.jsonl" in reasons["contaminated"] and "red dust storms" in reasons["contaminated"]
    assert "repetitive_ngrams" in reasons["low_quality"]
    kept = wh.query("SELECT output FROM samples_kept")["output"].to_list()
    assert kept == ["The capital of France is Paris."]
    scores = wh.query("SELECT * FROM scores")
    assert scores.height == 3 and {"composite", "keep", "drop_reasons", "judge_mean", "ngram_repetition"} <= set(
        scores.columns)
    metrics = json.loads(wh.query("SELECT metrics FROM stages WHERE stage = 'score'")["metrics"][0])
    assert metrics["kept"] == 1 and metrics["contaminated"] == 1 and not metrics["judge_used"]
