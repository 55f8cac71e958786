"""Deduplication: each kind catches what it should and keeps what it should (just under / just over
its threshold), the keep rule is deterministic, and a second pipeline run is deduplicated against the
first through the warehouse, reusing its stored signatures and embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from factory.config import parse_pipeline
from factory.dedup import DedupSettings, dedup, exact_dedup, near_dedup, semantic_dedup
from factory.dedup.exact import Normalization
from factory.dedup.keep import union_find
from factory.dedup.minhash import (
    MinHashParams,
    candidates_banded,
    candidates_lsh,
    jaccard_pairs,
    shingle_hashes,
    shingle_sets,
    signatures,
    text_signatures,
)
from factory.dedup.semantic import similar_pairs
from factory.runner import run_pipeline
from tests.conftest import ROOT, write_jsonl


def frame(texts: list[str], **cols) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts, **cols})


def jaccard(a: str, b: str, params: MinHashParams) -> float:
    sets = shingle_sets(*shingle_hashes([a, b], params))
    return float(jaccard_pairs(sets, np.array([0]), np.array([1]))[0])


# -- exact --------------------------------------------------------------------------------------------

def test_exact_folds_case_whitespace_punctuation_and_is_configurable():
    texts = ["Write a haiku about autumn.", "write  a HAIKU about autumn!", "Write a haiku about autumn",
             "Write a haiku about spring."]
    res = exact_dedup(frame(texts))
    assert sorted(res.drops["id"]) == ["r1", "r2"]
    assert set(res.drops["duplicate_of"]) == {"r0"} and set(res.drops["similarity"]) == {1.0}
    assert set(res.drops["kind"]) == {"exact"}
    cluster = res.clusters.sort("record_id")
    assert cluster["kept"].to_list() == [True, False, False] and cluster["cluster_id"].n_unique() == 1
    # case folding off: the upper-case copy is no longer an exact duplicate
    res = exact_dedup(frame(texts), Normalization(case=False))
    assert res.drops["id"].to_list() == ["r2"]


def test_keep_rule_priority_then_order_then_id_and_determinism():
    texts = ["Name three prime numbers.", "name three prime numbers", "Name three prime numbers!"]
    # highest priority wins
    res = exact_dedup(frame(texts, priority=[1.0, 5.0, None]))
    assert set(res.drops["duplicate_of"]) == {"r1"}
    # no priority: the earliest order wins
    res = exact_dedup(frame(texts, order=[3, 2, 1]))
    assert set(res.drops["duplicate_of"]) == {"r2"}
    # history records (fixed) always win, and are never dropped
    res = exact_dedup(frame(texts, fixed=[False, False, True], priority=[9.0, 9.0, 0.0]))
    assert set(res.drops["duplicate_of"]) == {"r2"} and "r2" not in res.drops["id"].to_list()
    # the same input in another row order keeps the same records
    df = frame(texts * 1, order=[1, 1, 1])
    a = exact_dedup(df).drops.sort("id")
    b = exact_dedup(df.reverse()).drops.sort("id")
    assert a.equals(b)


# -- near (MinHash) -----------------------------------------------------------------------------------

def test_signatures_equal_datasketch_and_banded_equals_minhashlsh():
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choice(words, int(rng.integers(8, 25)))) for _ in range(300)]
    texts = base + [t.replace(t.split()[2], "zz", 1) for t in base[:100]] + ["", "ab"]
    params = MinHashParams()
    hashes, offsets = shingle_hashes(texts, params)
    sigs = signatures(hashes, offsets, params)
    assert np.array_equal(sigs, text_signatures(texts, params, chunk=37, threads=2))
    for i in (0, 5, 150, len(texts) - 2, len(texts) - 1):
        mh = MinHash(num_perm=params.num_perm, seed=params.seed, hashfunc=int)
        mh.update_batch(hashes[offsets[i]:offsets[i + 1]].tolist())
        assert np.array_equal(mh.hashvalues, sigs[i])
    lsh = candidates_lsh(sigs, params)
    banded = candidates_banded(sigs, params)
    assert len(lsh[0]) >= 100
    assert np.array_equal(lsh[0], banded[0]) and np.array_equal(lsh[1], banded[1])


def test_near_catches_small_edits_and_keeps_unrelated():
    base = "Write a short story about a lighthouse keeper who finds a message in a bottle on the beach"
    texts = [base,
             base.replace("short", "brief"),  # 1-word edit
             base.replace("lighthouse keeper", "fisherman").replace("beach", "shore"),  # 3-word edit
             "Explain how photosynthesis converts sunlight into chemical energy in green plants"]
    res = near_dedup(frame(texts))
    assert sorted(res.drops["id"]) == ["r1", "r2"]
    assert set(res.drops["duplicate_of"]) == {"r0"} and set(res.drops["kind"]) == {"near"}
    params = MinHashParams()
    for rid, sim in zip(res.drops["id"], res.drops["similarity"], strict=True):
        assert sim == pytest.approx(jaccard(texts[0], texts[int(rid[1:])], params), abs=1e-6)
        assert sim >= params.threshold


def test_near_threshold_just_under_and_just_over():
    a = "Describe three ways to reduce food waste in a busy restaurant kitchen"
    b = "Describe four simple ways to cut food waste in a busy school kitchen"
    j = jaccard(a, b, MinHashParams())
    assert 0.2 < j < 0.9
    over = near_dedup(frame([a, b]), MinHashParams(threshold=round(j - 0.01, 4)))
    under = near_dedup(frame([a, b]), MinHashParams(threshold=round(j + 0.01, 4)))
    assert over.drops["id"].to_list() == ["r1"] and over.drops["similarity"][0] == pytest.approx(j, abs=1e-6)
    assert under.drops.is_empty()


def test_union_find_groups_chains():
    roots = union_find(6, np.array([0, 3, 4]), np.array([1, 4, 5]))
    assert roots.tolist() == [0, 0, 2, 3, 3, 3]


# -- semantic -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from stages.dedup import embedder

    return embedder("minilm")


def test_blocked_search_equals_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[150:160] = x[0:10] + 0.05 * rng.normal(size=(10, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j, s = similar_pairs(x, 0.8, block=32)
    full = x @ x.T
    want = {(a, b) for a in range(300) for b in range(a) if full[a, b] >= 0.8}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
    assert np.allclose(s, full[i, j], atol=1e-5)
    # history rows (before first_query) are not compared with each other
    i, j, _ = similar_pairs(x, 0.8, first_query=155, block=32)
    assert all(a >= 155 for a in i.tolist())


def test_semantic_paraphrase_caught_unrelated_kept_and_threshold_edges(minilm):
    texts = ["How do I bake sourdough bread at home?", "What is the way to make sourdough bread in my own kitchen?",
             "List the planets of the solar system in order."]
    vecs = minilm.encode(texts)
    cos = float(vecs[0] @ vecs[1])
    assert cos > 0.7 and float(vecs[0] @ vecs[2]) < 0.3
    over = semantic_dedup(frame(texts), vecs, threshold=cos - 0.01)
    under = semantic_dedup(frame(texts), vecs, threshold=cos + 0.01)
    assert over.drops["id"].to_list() == ["r1"] and over.drops["duplicate_of"].to_list() == ["r0"]
    assert over.drops["similarity"][0] == pytest.approx(cos, abs=1e-4)
    assert under.drops.is_empty()


def test_dedup_runs_kinds_in_order(minilm):
    texts = ["Give me five tips for sleeping better.", "give me five tips for sleeping better",
             "Give me five useful tips for sleeping better.", "Offer five pieces of advice for better sleep.",
             "Translate 'good morning' into Spanish."]
    vecs = minilm.encode(texts)
    thr = float(vecs[0] @ vecs[3]) - 0.01
    res = dedup(frame(texts), DedupSettings(semantic=True, semantic_threshold=thr),
                vectors_for=lambda rows: vecs[[int(i[1:]) for i in rows["id"]]])
    assert dict(zip(res.drops["id"], res.drops["kind"], strict=True)) == {"r1": "exact", "r2": "near",
                                                                          "r3": "semantic"}
    assert res.counts() == {"exact": 1, "near": 1, "semantic": 1}


# -- the stage, through the warehouse -----------------------------------------------------------------

RUN1 = [
    {"instruction": "Write a short story about a lighthouse keeper who finds a message in a bottle."},
    {"instruction": "write a short story about a lighthouse keeper who finds a message in a bottle!"},
    {"instruction": "Explain how vaccines train the immune system to recognise a virus."},
    {"instruction": "List three reasons why people enjoy gardening on weekends."},
]
RUN2 = [
    {"instruction": "Write a brief story about a lighthouse keeper who finds a message in a bottle."},
    {"instruction": "Explain how vaccines train the immune system to recognise a virus!"},
    {"instruction": "Describe how a vaccine teaches the body's immune system to recognize a virus."},
    {"instruction": "Suggest a name for a bakery that only sells cinnamon rolls."},
]


def pipeline(tmp: Path, name: str, seeds: list[dict], semantic_threshold: float) -> dict:
    folder = tmp / f"seeds-{name}"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "seeds.jsonl", seeds)
    return {"name": name, "warehouse": str(tmp / "warehouse"),
            "stages": [{"kind": "seeds", "paths": [str(folder)]},
                       {"kind": "dedup", "table": "tasks", "semantic_threshold": semantic_threshold}]}


def rejects_of(wh, run_id: str) -> pl.DataFrame:
    return wh.query("SELECT record_id, reason, related_id, similarity, detail FROM rejects "
                    "WHERE run_id = ? AND stage = 'dedup' ORDER BY record_id", [run_id])


def test_stage_incremental_against_history_and_deterministic(tmp_path, minilm):
    from factory.records import task_id

    a, b = RUN2[1]["instruction"], RUN2[2]["instruction"]
    va = minilm.encode([a + "\n", b + "\n"])
    thr = round(float(va[0] @ va[1]) - 0.02, 4)
    r1 = run_pipeline(parse_pipeline(pipeline(tmp_path, "first", RUN1, thr)), show_progress=False)
    wh = r1.warehouse
    first = rejects_of(wh, r1.run_id)
    assert first["reason"].to_list() == ["exact_duplicate"]
    ids1 = {r["instruction"]: task_id(r["instruction"]) for r in RUN1}
    assert first["related_id"].to_list() == [ids1[RUN1[0]["instruction"]]]
    m1 = json.loads(wh.query("SELECT metrics FROM stages WHERE run_id = ? AND stage = 'dedup'",
                             [r1.run_id])["metrics"][0])
    assert m1["exact"] == 1 and m1["embedded"] == 3 and m1["signatures_computed"] == 3
    assert wh.query("SELECT count(*) AS n FROM minhash_signatures")["n"][0] == 3
    assert wh.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 3

    r2 = run_pipeline(parse_pipeline(pipeline(tmp_path, "second", RUN2, thr)), show_progress=False)
    second = rejects_of(wh, r2.run_id)
    ids2 = {r["instruction"]: task_id(r["instruction"]) for r in RUN2}
    by_id = {r["record_id"]: r for r in second.iter_rows(named=True)}
    assert set(by_id) == {ids2[RUN2[0]["instruction"]], ids2[a], ids2[b]}
    near = by_id[ids2[RUN2[0]["instruction"]]]
    assert near["reason"] == "near_duplicate" and near["related_id"] == ids1[RUN1[0]["instruction"]]
    assert 0.45 <= near["similarity"] < 1 and "from run first" in near["detail"]
    exact = by_id[ids2[a]]
    assert exact["reason"] == "exact_duplicate" and exact["related_id"] == ids1[RUN1[2]["instruction"]]
    sem = by_id[ids2[b]]
    assert sem["reason"] == "semantic_duplicate" and sem["related_id"] == ids1[RUN1[2]["instruction"]]
    assert sem["similarity"] >= thr
    # history was neither re-signed nor re-embedded: only the new survivors were
    m2 = json.loads(wh.query("SELECT metrics FROM stages WHERE run_id = ? AND stage = 'dedup'",
                             [r2.run_id])["metrics"][0])
    assert m2["signatures_reused"] == 3 and m2["signatures_computed"] == 3
    assert m2["embeddings_reused"] == 3 and m2["embedded"] == 2
    assert (m2["exact"], m2["near"], m2["semantic"]) == (1, 1, 1)
    # clusters are queryable, and kept tasks exclude the duplicates
    clusters = wh.query("SELECT * FROM dedup_clusters WHERE run_id = ? ORDER BY kind, kept", [r2.run_id])
    assert clusters.filter(pl.col("kept"))["record_id"].to_list() == [ids1[RUN1[2]["instruction"]],
                                                                      ids1[RUN1[0]["instruction"]],
                                                                      ids1[RUN1[2]["instruction"]]]
    kept = wh.query("SELECT task_id FROM tasks_kept WHERE run_id = ?", [r2.run_id])["task_id"].to_list()
    assert kept == [ids2[RUN2[3]["instruction"]]]

    # determinism: the same two runs in a fresh warehouse make the same decisions
    other = tmp_path / "again"
    other.mkdir()
    s1 = run_pipeline(parse_pipeline(pipeline(other, "first", RUN1, thr)), show_progress=False)
    s2 = run_pipeline(parse_pipeline(pipeline(other, "second", RUN2, thr)), show_progress=False)
    cols = ["record_id", "reason", "related_id", "similarity"]
    assert rejects_of(s1.warehouse, s1.run_id).select(cols).equals(first.select(cols))
    assert rejects_of(s2.warehouse, s2.run_id).select(cols).equals(second.select(cols))

    # the CLI reports the same duplicates for run 2 (read-only)
    from typer.testing import CliRunner

    from factory.cli import app

    res = CliRunner().invoke(app, ["dedup", "tasks", "--run", r2.run_id, "--methods", "exact,near",
                                   "-w", str(wh.root)])
    assert res.exit_code == 0, res.output
    assert "2 duplicates" in res.output and "'exact': 1, 'near': 1" in res.output


def test_cli_dedups_a_published_release(tmp_path: Path):
    """`factory dedup --release` reads a release's sft rows (checksums verified) and reports duplicates."""
    rows = [{"instruction": "Name the largest planet in our solar system.", "output": "Jupiter is the largest."},
            {"instruction": "Name the largest planet in the solar system.", "output": "Jupiter is the largest."},
            {"instruction": "Give two uses of baking soda in the kitchen.", "output": "Baking and cleaning."}]
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows)
    wh_dir = tmp_path / "wh"
    run_pipeline(parse_pipeline({"name": "rel", "warehouse": str(wh_dir), "stages": [
        {"kind": "seeds", "paths": [str(seeds)]}, {"kind": "publish", "include_gold": True}]}), show_progress=False)
    proc = subprocess.run([sys.executable, "-m", "factory.cli", "dedup", "--release", "rel@latest", "--methods",
                           "exact,near", "-w", str(wh_dir)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "release rel@latest: 3 records, 1 duplicates" in proc.stdout
    assert "'near': 1" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "factory.cli", "dedup", "--release", "nope@1.0.0", "-w",
                              str(wh_dir)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert missing.returncode == 1 and "no release named 'nope'" in missing.stderr
