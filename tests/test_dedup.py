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
    params = MinHashParams(threshold=0.45)  # a loose threshold: plenty of candidate pairs to compare
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


def near_corpus(n: int = 300, edited: int = 100, seed: int = 3) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choice(words, int(rng.integers(8, 25)))) for _ in range(n)]
    return base + [t.replace(t.split()[2], "zz", 1) for t in base[:edited]] + ["", "ab"]


def test_map_reduce_candidates_equal_the_in_process_ones():
    """The band-key shuffle (what a Ray executor runs) finds exactly candidates_banded's pairs, whatever
    the chunking and the number of partitions; near_dedup through it drops the same records."""
    from factory.dedup import distributed
    from factory.executors.base import map_reduce_here

    texts = near_corpus()
    params = MinHashParams(threshold=0.45)
    sigs = text_signatures(texts, params)
    query = np.arange(0, len(texts), 2)
    want = candidates_banded(sigs, params, query)
    assert len(want[0]) >= 50

    def small_chunks(*args, **kw):
        return map_reduce_here(*args, **{**kw, "chunk_rows": 37})

    for partitions in (1, 7):
        got = distributed.candidates(sigs, params, query, small_chunks, partitions=partitions)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert np.array_equal(distributed.signatures(pl.Series(texts), params, small_chunks), sigs)
    local = near_dedup(frame(texts), params, candidates="banded")
    spread = near_dedup(frame(texts), params, map_reduce=small_chunks)
    assert local.drops.height >= 50 and local.drops.sort("id").equals(spread.drops.sort("id"))
    assert local.clusters.sort("record_id").equals(spread.clusters.sort("record_id"))


def test_near_catches_small_edits_and_keeps_unrelated():
    base = "Write a short story about a lighthouse keeper who finds a message in a bottle on the beach"
    texts = [base,
             base.replace("short", "brief"),  # 1-word edit
             base.replace("lighthouse keeper", "fisherman").replace("beach", "shore"),  # 3-word edit
             "Explain how photosynthesis converts sunlight into chemical energy in green plants"]
    res = near_dedup(frame(texts))
    assert res.drops["id"].to_list() == ["r1"]  # the default (0.82): about one edited word in a sentence
    low = MinHashParams(threshold=0.45)  # the 3-word edit too, at a looser threshold
    res = near_dedup(frame(texts), low)
    assert sorted(res.drops["id"]) == ["r1", "r2"]
    assert set(res.drops["duplicate_of"]) == {"r0"} and set(res.drops["kind"]) == {"near"}
    for rid, sim in zip(res.drops["id"], res.drops["similarity"], strict=True):
        assert sim == pytest.approx(jaccard(texts[0], texts[int(rid[1:])], low), abs=1e-6)
        assert sim >= low.threshold


def test_near_threshold_just_under_and_just_over():
    a = "Describe three ways to reduce food waste in a busy restaurant kitchen"
    b = "Describe three ways to cut food waste in a busy restaurant kitchen"
    j = jaccard(a, b, MinHashParams())
    assert 0.2 < j < 0.9
    over = near_dedup(frame([a, b]), MinHashParams(threshold=round(j - 0.01, 4)))
    under = near_dedup(frame([a, b]), MinHashParams(threshold=round(j + 0.01, 4)))
    assert over.drops["id"].to_list() == ["r1"] and over.drops["similarity"][0] == pytest.approx(j, abs=1e-6)
    assert under.drops.is_empty()


TASKS = ["Write a short quiz on", "Compose a limerick about", "Draft a one-page handout on"]
TOPICS = ["the water cycle", "the rules of chess", "how bridges carry heavy loads", "the life cycle of a star"]
AUDIENCES = ["for a ten-year-old", "for a retired teacher"]


def templated() -> tuple[list[str], list[int]]:
    """24 slot combinations of one template (bases), each with a typo copy and every other one with an
    inserted word: (texts, group of each text)."""
    texts, groups = [], []
    for g, (task, topic, audience) in enumerate((t, o, a) for t in TASKS for o in TOPICS for a in AUDIENCES):
        base = f"{task} {topic} {audience}, focusing on three surprising facts."
        copies = [base.replace("surprising", "surprsiing")]
        if g % 2:
            copies.append(base.replace("focusing on", "focusing mainly on"))
        for text in [base, *copies]:
            texts.append(text)
            groups.append(g)
    return texts, groups


def components(texts: list[str], threshold: float, params: MinHashParams) -> int:
    """Connected components of the graph of pairs at or above the threshold: what union-find keeps."""
    n = len(texts)
    sets = shingle_sets(*shingle_hashes(texts, params))
    left, right = np.triu_indices(n, 1)
    sims = jaccard_pairs(sets, left, right)
    adjacent = {i: set() for i in range(n)}
    for a, b in zip(left[sims >= threshold].tolist(), right[sims >= threshold].tolist(), strict=True):
        adjacent[a].add(b)
        adjacent[b].add(a)
    seen, count = set(), 0
    for start in range(n):
        if start in seen:
            continue
        count += 1
        todo = [start]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(adjacent[node] - seen)
    return count


def test_near_on_templated_text_keeps_one_per_task_and_never_chains():
    texts, groups = templated()
    params = MinHashParams()  # the default threshold
    sets = shingle_sets(*shingle_hashes(texts, params))
    left, right = np.triu_indices(len(texts), 1)
    sims = jaccard_pairs(sets, left, right)
    same = np.asarray(groups)[left] == np.asarray(groups)[right]
    # the corpus is what it claims: copies are near duplicates of their base, other tasks are not
    assert sims[~same].max() < params.threshold
    for i, g in enumerate(groups):  # each group's base comes first
        assert jaccard(texts[i], texts[groups.index(g)], params) >= params.threshold
    res = near_dedup(frame(texts))
    dropped = set(res.drops["id"])
    kept = [i for i in range(len(texts)) if f"r{i}" not in dropped]
    assert len(kept) == 24 and sorted(groups[i] for i in kept) == list(range(24))

    # at the old default (0.45) the template chains everything into one component (union-find kept 1
    # record); stars drop only what is directly similar to a record that stays
    low = MinHashParams(threshold=0.45)
    assert components(texts, 0.45, low) == 1
    res = near_dedup(frame(texts), low)
    dropped = set(res.drops["id"])
    assert len(texts) - len(dropped) > 1  # more than union-find kept, and each drop verified below
    for rid, keeper, sim in res.drops.select("id", "duplicate_of", "similarity").iter_rows():
        assert keeper not in dropped
        assert sim == pytest.approx(jaccard(texts[int(rid[1:])], texts[int(keeper[1:])], low), abs=1e-6)
        assert sim >= 0.45


def test_star_groups_prefer_the_record_its_copies_resemble():
    """b and c are each a copy of a but not of each other: keeping a (most connected) drops both; keeping
    b (first in order) would leave c behind. A score still beats connectedness."""
    a = "Explain how vaccines train the immune system to recognise a virus"
    b = a.replace("Explain", "Describe")
    c = a.replace("recognise a virus", "recognize viruses")
    params = MinHashParams(threshold=0.75)
    assert jaccard(a, b, params) >= 0.75 and jaccard(a, c, params) >= 0.75 and jaccard(b, c, params) < 0.75
    res = near_dedup(frame([b, a, c]), params)
    assert sorted(res.drops["id"]) == ["r0", "r2"] and set(res.drops["duplicate_of"]) == {"r1"}
    res = near_dedup(frame([b, a, c], priority=[2.0, 1.0, 1.0]), params)
    assert res.drops["id"].to_list() == ["r1"] and res.drops["duplicate_of"].to_list() == ["r0"]


# -- semantic -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from factory.dedup.semantic import shared_embedder

    return shared_embedder("minilm")


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dedup_runs_kinds_in_order(minilm):
    texts = ["Give me five tips for sleeping better after a long day at work.",
             "give me five tips for sleeping better after a long day at work",
             "Give me five useful tips for sleeping better after a long day at work.",
             "Offer five pieces of advice for better sleep after a tiring workday.",
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
    {"instruction": "Write a short story about a lighthouse keeper who finds a mesage in a botle."},
    {"instruction": "Explain how vaccines train the immune system to recognise a virus!"},
    {"instruction": "Describe how a vaccine teaches the body's immune system to recognize a virus."},
    {"instruction": "Suggest a name for a bakery that only sells cinnamon rolls."},
]


def pipeline(tmp: Path, name: str, seeds: list[dict], semantic_threshold: float,
             max_drop_fraction: float = 0.9) -> dict:
    folder = tmp / f"seeds-{name}"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "seeds.jsonl", seeds)
    return {"name": name, "warehouse": str(tmp / "warehouse"),
            "stages": [{"kind": "seeds", "paths": [str(folder)]},
                       {"kind": "dedup", "table": "tasks", "semantic_threshold": semantic_threshold,
                        "max_drop_fraction": max_drop_fraction}]}


def rejects_of(wh, run_id: str) -> pl.DataFrame:
    return wh.query("SELECT record_id, reason, related_id, similarity, detail FROM rejects "
                    "WHERE run_id = ? AND stage = 'dedup' ORDER BY record_id", [run_id])


@pytest.mark.slow
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
    assert 0.82 <= near["similarity"] < 1 and "from run first" in near["detail"]
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


@pytest.mark.slow  # distils the static model from MiniLM once per machine (~3 minutes on 2 cores)
def test_stage_two_step_embedder_flags_with_static_and_decides_with_minilm(tmp_path: Path, minilm):
    """`embedder: minilm-two-step`: every new text gets a static embedding, only the flagged ones a
    MiniLM embedding, and MiniLM's cosine is what the reject records."""
    seeds = RUN1 + RUN2
    a, b = RUN2[1]["instruction"], RUN2[2]["instruction"]
    va = minilm.encode([a + "\n", b + "\n"])
    thr = round(float(va[0] @ va[1]) - 0.02, 4)
    cfg = pipeline(tmp_path, "two-step", seeds, thr)
    cfg["stages"][1].update(embedder="minilm-two-step", candidate_threshold=0.5)
    done = run_pipeline(parse_pipeline(cfg), show_progress=False)
    wh = done.warehouse
    sem = rejects_of(wh, done.run_id).filter(pl.col("reason") == "semantic_duplicate")
    assert sem.height == 1 and sem["similarity"][0] >= thr
    models = dict(wh.query("SELECT model_id, count(*) AS n FROM embeddings GROUP BY ALL").iter_rows())
    static = [m for m in models if m.startswith("model2vec/")]
    assert len(static) == 1 and models[static[0]] == 5  # every survivor of exact + near
    assert 2 <= models["sentence-transformers/all-MiniLM-L6-v2"] < 5  # only the flagged ones


def test_stage_guard_stops_before_writing_when_most_records_would_go(tmp_path: Path):
    """Copies of one task make up a quarter of the run: above a 0.2 guard the stage stops, names the
    figure, the largest cluster and the setting, and writes nothing; with a looser guard it goes through."""
    texts, groups = templated()
    bases = [t for i, t in enumerate(texts) if i == groups.index(groups[i])][:9]
    copies = [bases[0].replace("short", "brief"), bases[0].replace("quiz", "quizz"),
              bases[0].replace("three", "the three")]
    assert all(jaccard(c, bases[0], MinHashParams()) >= 0.82 for c in copies)
    cfg = pipeline(tmp_path, "guarded", [{"instruction": t} for t in bases + copies], 0.8, max_drop_fraction=0.2)
    cfg["stages"][1]["methods"] = ["exact", "near"]
    with pytest.raises(ValueError, match=r"would drop 3 of 12 records \(25\.0%\), more than max_drop_fraction=0\.2; "
                       r"largest clusters: 4 records \(near\) around 'Write a short quiz on the water cycle"):
        run_pipeline(parse_pipeline(cfg), show_progress=False)
    from factory.warehouse import Warehouse

    wh = Warehouse(tmp_path / "warehouse")
    assert wh.query("SELECT stage FROM stages WHERE status = 'done'")["stage"].to_list() == ["seeds"]
    assert wh.query("SELECT count(*) AS n FROM rejects WHERE stage = 'dedup'")["n"][0] == 0
    assert wh.query("SELECT count(*) AS n FROM tasks_kept")["n"][0] == 12  # nothing lost
    cfg["stages"][1]["max_drop_fraction"] = 0.5
    cfg["warehouse"] = str(tmp_path / "other")
    done = run_pipeline(parse_pipeline(cfg), show_progress=False)
    assert rejects_of(done.warehouse, done.run_id).height == 3


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


# -- factory dedup FILE… --------------------------------------------------------------------------------

def test_cli_dedups_files_without_a_warehouse(tmp_path: Path):
    """JSONL and Parquet in, kept.parquet + dropped.parquet out (every readable row in exactly one),
    unreadable rows kept with their raw text; a missing column and a missing file are one line each."""
    from typer.testing import CliRunner

    from factory.cli import app

    base = "Write a short story about a lighthouse keeper who finds a message in a bottle."
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate([
        base, base.replace("message", "mesage"), "Explain how vaccines train the immune system.",
        "explain how vaccines train the immune system!"])) + "\n{not json\n")
    parquet = tmp_path / "b.parquet"
    pl.DataFrame({"text": [base.upper(), "List three reasons why people enjoy gardening."], "n": [10, 11]}
                 ).write_parquet(parquet)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["dedup", str(jsonl), str(parquet), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "6 rows from 2 input(s), 3 duplicates {'exact': 2, 'near': 1, 'semantic': 0}" in res.output
    kept, dropped = pl.read_parquet(out / "kept.parquet"), pl.read_parquet(out / "dropped.parquet")
    assert sorted(kept["n"].to_list()) == [0, 2, 11]
    assert sorted(dropped["n"].to_list()) == [1, 3, 10]
    by_n = {r["n"]: r for r in dropped.iter_rows(named=True)}
    assert by_n[1]["kind"] == "near" and by_n[1]["duplicate_of"] == f"{jsonl}:1"
    assert by_n[1]["similarity"] == pytest.approx(jaccard(base, base.replace("message", "mesage"),
                                                          MinHashParams()), abs=1e-6)
    assert by_n[10]["kind"] == "exact" and by_n[10]["source_file"] == str(parquet)
    unreadable = pl.read_parquet(out / "unreadable.parquet")
    assert unreadable.select("source_line", "reason", "raw").rows() == [(5, "bad_json", "{not json")]

    # an id column, and the default output folder next to the first file
    res = runner.invoke(app, ["dedup", str(parquet), "--id-column", "n"])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "b.parquet.dedup" / "kept.parquet").height == 2

    res = runner.invoke(app, ["dedup", str(parquet), "--text-column", "body"])
    assert res.exit_code == 1
    assert f"error: {parquet}: no column 'body' (it has: text, n)" in res.output
    res = runner.invoke(app, ["dedup", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 1 and "nope.jsonl: no such file or folder" in res.output
    res = runner.invoke(app, ["dedup", str(jsonl), "--max-drop-fraction", "0.3", "-o", str(tmp_path / "g")])
    assert res.exit_code == 1 and "would drop 2 of 4 records (50.0%)" in res.output
    assert not (tmp_path / "g").exists()
