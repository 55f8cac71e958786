"""Heuristic quality features: the SQL in factory/sql_features/features.sql (DuckDB) vs a plain Python loop.

Both compute the same features (lengths, word and 3-gram repetition, non-alphabetic and symbol ratios,
refusal phrases, echo overlap, unfinished answers, answer/instruction ratio) over synthetic records. The
SQL runs over all N records; the Python loop runs over a subset (default 100,000) and its time is
extrapolated linearly to N (the loop is per-record work with no shared state, so it scales linearly; the
figure is labelled as extrapolated). The records are 200,000 distinct synthetic texts repeated to N (each
row is still processed on its own by both sides; generating 1M texts in Python only slows the setup).
A spot check compares both implementations on 2,000 records.

    .venv/bin/python bench/score.py [--rows 1000000] [--python-rows 100000]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.score import DEFAULT_REFUSAL, DEFAULT_UNFINISHED_WORDS, ScoreConfig, compute_features  # noqa: E402

VOCAB_TEXT = ("the a of to and in is it that for on with as was be by this are or an from at which plants light water "
         "sugar energy cells engine piston valve river mountain city music colour number answer question "
         "because therefore however simple example important people time year way day thing world life hand "
         "part child eye woman place work week case point government company system program")
ENDINGS = [".", ".", ".", "!", "?", ",", " and", ":", "", ")"]
PREFIXES = ["", "", "", "", "I'm sorry, but ", "As an AI, ", "### ", "1. ", "**Note:** ", "12 + 30 = 42; "]


def synthetic(n: int, seed: int = 0) -> pl.DataFrame:
    """n records with varied lengths, some repetitive, refusing, echoing, symbol-heavy or unfinished."""
    rng = np.random.default_rng(seed)
    vocab = np.array(VOCAB_TEXT.split())
    out_len = rng.integers(1, 60, n)
    ins_len = rng.integers(3, 20, n)
    words = vocab[rng.integers(0, len(vocab), out_len.sum() + ins_len.sum())].tolist()
    out_len, ins_len = out_len.tolist(), ins_len.tolist()
    outputs, instructions = [], []
    pos = 0
    prefix = rng.integers(0, len(PREFIXES), n).tolist()
    ending = rng.integers(0, len(ENDINGS), n).tolist()
    repeat = (rng.random(n) < 0.1).tolist()
    echo = (rng.random(n) < 0.05).tolist()
    for i in range(n):
        ins = " ".join(words[pos:pos + ins_len[i]])
        pos += ins_len[i]
        body = words[pos:pos + out_len[i]]
        pos += out_len[i]
        text = " ".join(body[:4] * 6) if repeat[i] else " ".join(body)
        if echo[i]:
            text = ins
        instructions.append(ins.capitalize() + "?")
        outputs.append(PREFIXES[prefix[i]] + text + ENDINGS[ending[i]])
    finish = np.where(rng.random(n) < 0.05, "length", "stop")
    return pl.DataFrame({"sample_id": [f"{i:016x}" for i in range(n)], "instruction": instructions,
                         "input": [""] * n, "output": outputs, "finish_reason": finish})


# -- the same features, one record at a time ---------------------------------------------------------

WORD = re.compile(r"(?:[^\w']|_)+")
NON_ALPHA_KEEP = re.compile(r"[^\W\d_]|\s")
SYMBOL = re.compile(r"[#*_~`|<>{}\[\]\\^@$%=+]")
REFUSAL = re.compile(DEFAULT_REFUSAL)
UNFINISHED_END = re.compile(r"[,;:(\-–]$")
CLEAN_END = re.compile(r"[.!?)\"'\]`*。…]$")
STOP_END = re.compile(r"[.!?]$")
UNFINISHED_WORDS = set(DEFAULT_UNFINISHED_WORDS)


def python_features(rows: list[dict], max_echo: float = 0.9) -> list[dict]:
    out = []
    for r in rows:
        output, instruction = r["output"] or "", r["instruction"] or ""
        words = [w for w in WORD.split(output.lower()) if w]
        prompt_words = [w for w in WORD.split((instruction + " " + (r["input"] or "")).lower()) if w]
        grams = [" ".join(words[i:i + 3]) for i in range(len(words) - 2)]
        chars = len(output)
        trimmed = output.rstrip()
        distinct = set(words)
        overlap = len(distinct & set(prompt_words)) / len(distinct) if distinct else 0.0
        starts = trimmed.lower().startswith(instruction.strip().lower()) and len(instruction.strip()) > 0
        out.append({
            "sample_id": r["sample_id"],
            "answer_chars": chars,
            "answer_words": len(words),
            "word_repetition": round(1 - len(distinct) / len(words), 4) if words else 0.0,
            "ngram_repetition": round(1 - len(set(grams)) / len(grams), 4) if grams else 0.0,
            "non_alpha_ratio": round((chars - len(NON_ALPHA_KEEP.findall(output))) / chars, 4) if chars else 0.0,
            "symbol_ratio": round(len(SYMBOL.findall(output)) / chars, 4) if chars else 0.0,
            "refusal": REFUSAL.search(output.lower()) is not None,
            "echo": starts or (overlap >= max_echo and len(words) >= 3),
            "unfinished": r["finish_reason"] == "length" or bool(UNFINISHED_END.search(trimmed))
            or (bool(words) and words[-1] in UNFINISHED_WORDS and not STOP_END.search(trimmed)),
            "ends_cleanly": bool(CLEAN_END.search(trimmed)),
            "answer_instruction_ratio": round(len(words) / max(len(prompt_words), 1), 4),
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--python-rows", type=int, default=100_000)
    args = ap.parse_args()

    began = time.perf_counter()
    base = synthetic(min(args.rows, 200_000))  # generating text in Python is slow: build 200k, then tile
    reps = -(-args.rows // base.height)
    df = pl.concat([base] * reps).head(args.rows).with_columns(
        sample_id=pl.int_range(pl.len()).cast(pl.String).str.zfill(16))
    print(f"generated {df.height:,} synthetic records in {time.perf_counter() - began:.1f}s (not timed below)")

    cfg = ScoreConfig()
    began = time.perf_counter()
    sql = compute_features(df, cfg)
    sql_s = time.perf_counter() - began
    assert sql.height == df.height

    subset = df.head(args.python_rows).to_dicts()
    began = time.perf_counter()
    py = python_features(subset)
    py_subset_s = time.perf_counter() - began
    py_s = py_subset_s * df.height / len(subset)

    # spot check: both implementations agree on the same records
    check = pl.DataFrame(py[:2000])
    joined = check.join(sql.select(check.columns), on="sample_id", suffix="_sql")
    def differ(c: str) -> int:  # floats within 1e-3 (Python rounds half to even, DuckDB half away from zero)
        a, b = joined[c], joined[f"{c}_sql"]
        return int(((a - b).abs() > 1e-3).sum()) if a.dtype == pl.Float64 else int((a != b).sum())

    mismatched = {c: differ(c) for c in check.columns if c != "sample_id"}
    mismatched = {c: v for c, v in mismatched.items() if v}
    drops = sql.select(pl.col("heuristic_reasons").list.len() > 0).to_series().mean()

    sql_rps = df.height / sql_s
    py_rps = len(subset) / py_subset_s
    print(f"DuckDB SQL   : {df.height:,} records in {sql_s:.2f}s = {sql_rps:,.0f} rows/s (measured)")
    print(f"Python loop  : {len(subset):,} records in {py_subset_s:.2f}s = {py_rps:,.0f} rows/s; "
          f"{df.height:,} records would take {py_s:.1f}s (extrapolated linearly from the subset)")
    print(f"speed-up     : {sql_rps / py_rps:.1f}x (goal >= 50x, SQL under 15 s: {sql_s < 15})")
    print(f"agreement    : {mismatched if mismatched else 'all features equal on 2,000 records'}")
    print(f"share of records with a heuristic drop reason: {drops:.1%}")
    print("RESULT " + json.dumps({
        "rows": df.height, "sql_seconds": round(sql_s, 3), "sql_rows_per_s": round(sql_rps),
        "python_rows_timed": len(subset), "python_seconds_subset": round(py_subset_s, 3),
        "python_seconds_extrapolated": round(py_s, 2), "python_rows_per_s": round(py_rps),
        "speedup": round(sql_rps / py_rps, 2), "features_agree": not mismatched}))


if __name__ == "__main__":
    main()
