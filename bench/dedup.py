"""Deduplication benchmark: signature speed, 1M-text near-dup dedup, recall/precision, semantic dedup.

    .venv/bin/python bench/dedup.py            # full size: 1,000,000 texts near-dup, 100,000 semantic
    .venv/bin/python bench/dedup.py --n 20000  # smoke run (semantic size defaults to n // 10)

A seeded corpus of short instruction-like texts (real English words from MiniLM's vocabulary, 8–30
words, one to three clauses) with planted near-duplicates (1–3 word edits, reordered clauses, case and
punctuation changes, and mixes) and, for the semantic part, planted paraphrases (the same request in
other words). Each part runs in its own subprocess so its peak RSS (``resource.getrusage``) is its own.
Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OPENERS = ["Write a", "Explain why", "Describe how", "List five", "Summarize the", "Give an example of",
           "Compare the", "Create a", "Translate the", "Suggest three", "Outline the", "Draft an",
           "Classify the", "Rewrite the", "Identify the", "Propose a", "Evaluate the", "Plan a",
           "Generate a list of", "Tell me about"]


def vocabulary() -> list[str]:
    from factory.models import minilm_path

    words = [w.strip() for w in (minilm_path() / "vocab.txt").read_text().splitlines()]
    return sorted({w for w in words if w.isalpha() and w.isascii() and 3 <= len(w) <= 12})


class _Words:
    """Zipf-distributed words drawn in large batches (drawing one at a time with ``p=`` is slow)."""

    def __init__(self, rng: np.random.Generator, vocab: np.ndarray):
        ranks = np.arange(1, len(vocab) + 1)
        self.p = (1 / ranks ** 0.8) / (1 / ranks ** 0.8).sum()
        self.rng, self.vocab, self.pool, self.at = rng, vocab, np.empty(0, dtype=vocab.dtype), 0

    def take(self, k: int) -> list[str]:
        if self.at + k > len(self.pool):
            self.pool = self.vocab[self.rng.choice(len(self.vocab), size=1 << 20, p=self.p)]
            self.at = 0
        self.at += k
        return self.pool[self.at - k:self.at].tolist()


def _clause(rng: np.random.Generator, words: _Words) -> list[str]:
    return words.take(int(rng.integers(3, 10)))


def _render(opener: str, clauses: list[list[str]], end: str) -> str:
    return opener + " " + ", ".join(" ".join(c) for c in clauses) + end


def _variant(rng: np.random.Generator, vocab: np.ndarray, opener: str, clauses: list[list[str]],
             end: str) -> tuple[str, str]:
    """A planted near-duplicate of a base text, and what was done to it."""
    clauses = [list(c) for c in clauses]
    kind = str(rng.choice(["edit", "reorder", "casepunct", "mixed"], p=[0.5, 0.15, 0.15, 0.2]))
    if kind in ("reorder", "mixed") and len(clauses) > 1:
        clauses = clauses[1:] + clauses[:1]
    if kind in ("edit", "mixed"):
        for _ in range(int(rng.integers(1, 4))):
            c = clauses[int(rng.integers(len(clauses)))]
            op = rng.integers(3)
            pos = int(rng.integers(len(c)))
            if op == 0:
                c[pos] = str(vocab[rng.integers(len(vocab))])
            elif op == 1 or len(c) < 3:
                c.insert(pos, str(vocab[rng.integers(len(vocab))]))
            else:
                del c[pos]
    text = _render(opener, clauses, end)
    if kind in ("casepunct", "mixed"):
        words = text.split(" ")
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(words)))
            words[k] = words[k].upper() if rng.random() < 0.5 else words[k].capitalize()
        text = " ".join(words)
        text = text.rstrip(".?!") + str(rng.choice(["!", "?", "...", " .", ""]))
        if rng.random() < 0.5:
            text = text.replace(",", ";", 1)
    return text, kind


def near_corpus(n: int, seed: int = 0, dup_share: float = 0.2) -> pl.DataFrame:
    """``n`` texts: unique bases, and groups of a base plus 1–3 planted near-duplicates (``group``)."""
    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary())
    rng.shuffle(vocab)
    words = _Words(rng, vocab)
    texts, groups, kinds = [], [], []
    g = 0
    while len(texts) < n:
        opener = OPENERS[int(rng.integers(len(OPENERS)))]
        clauses = [_clause(rng, words) for _ in range(int(rng.integers(1, 4)))]
        while sum(map(len, clauses)) + len(opener.split()) < 8:  # instructions run 8–30 words
            clauses[-1].extend(words.take(1))
        end = str(rng.choice([".", "?", ""]))
        texts.append(_render(opener, clauses, end))
        groups.append(g)
        kinds.append("base")
        if rng.random() < dup_share:
            for _ in range(int(rng.integers(1, 4))):
                text, kind = _variant(rng, vocab, opener, clauses, end)
                texts.append(text)
                groups.append(g)
                kinds.append(kind)
        g += 1
    order = rng.permutation(len(texts))[:n]  # planted copies land anywhere in the corpus
    return pl.DataFrame({"id": [f"t{i:07d}" for i in range(n)], "text": [texts[i] for i in order],
                         "group": np.asarray(groups)[order], "variant": [kinds[i] for i in order]})


INTENTS = [
    ["Explain how {a} affects {b}.", "Describe the effect of {a} on {b}.", "What impact does {a} have on {b}?",
     "How does {a} influence {b}? Please explain."],
    ["Write a short poem about {a}.", "Compose a brief poem on the subject of {a}.",
     "Create a short piece of poetry about {a}."],
    ["List three benefits of {a} for {b}.", "Give three advantages that {a} offers for {b}.",
     "What are three ways {a} is good for {b}?"],
    ["Summarize the history of {a} in two sentences.", "Give a two-sentence summary of the history of {a}.",
     "In two sentences, summarize how {a} developed over time."],
    ["What are the differences between {a} and {b}?", "Compare {a} and {b} and explain how they differ.",
     "How is {a} different from {b}?"],
    ["Suggest a name for a company that sells {a}.", "Propose a brand name for a business selling {a}.",
     "Come up with a name for a shop that sells {a}."],
    ["Give step by step instructions for cleaning {a}.", "How do I clean {a}? List the steps.",
     "Describe, step by step, how to clean {a}."],
    ["Why is {a} important for {b}?", "Explain the importance of {a} to {b}.",
     "What makes {a} so important for {b}?"],
]
_NOUN_TEXT = ("coffee tea rain snow wind sunlight music exercise sleep stress money time water soil forests rivers "
         "cities farms bees birds cats dogs horses fish bread cheese apples rice wheat cotton steel glass paper "
         "plastic bicycles cars trains ships planes bridges roads schools libraries hospitals markets banks "
         "computers phones cameras printers batteries engines robots satellites telescopes volcanoes "
         "earthquakes storms deserts oceans mountains islands gardens flowers trees mushrooms honey salt "
         "sugar chocolate vaccines medicine surgery nutrition vitamins protein language poetry painting "
         "sculpture dance theater film photography journalism democracy elections taxes trade tourism "
         "agriculture fishing mining energy solar power wind turbines nuclear power recycling pollution "
         "traffic noise lighting furniture carpets windows shoes jackets umbrellas backpacks keyboards")
NOUNS = sorted(set(_NOUN_TEXT.split()))


def semantic_corpus(n: int, seed: int = 0, share: float = 0.06) -> pl.DataFrame:
    """``n`` texts: unique instruction-like background texts, plus templated requests (about ``share``
    of the corpus) where each request appears in 1–3 phrasings (a planted paraphrase group). Requests
    from one template with other topics ("how X affects Y" for another X) are the hard negatives."""
    rng = np.random.default_rng(seed + 1)
    topics = np.array(NOUNS + vocabulary())  # everyday nouns and ~20k other English words
    texts, groups = [], []
    seen: set[tuple[int, str, str]] = set()
    g = 0
    while len(texts) < n * share:
        k = int(rng.integers(len(INTENTS)))
        a, b = (str(x) for x in rng.choice(topics, 2, replace=False))
        if (k, a, b) in seen:
            continue
        seen.add((k, a, b))
        for f in rng.permutation(len(INTENTS[k]))[:int(rng.integers(1, 4))]:
            texts.append(INTENTS[k][f].format(a=a, b=b))
            groups.append(g)
        g += 1
    background = near_corpus(n - len(texts), seed=seed + 2, dup_share=0.0)
    texts += background["text"].to_list()
    groups += (background["group"].to_numpy() + g).tolist()
    order = rng.permutation(len(texts))[:n]
    return pl.DataFrame({"id": [f"s{i:07d}" for i in range(n)], "text": [texts[i] for i in order],
                         "group": np.asarray(groups)[order]})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds this process has used (user + system): a figure other load on the machine does not
    inflate, unlike wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def quality(corpus: pl.DataFrame, drops: pl.DataFrame) -> dict[str, float]:
    """Precision: drops whose duplicate_of is in the same planted group. Recall: of the planted
    copies (group size - 1 per group), how many were removed as a duplicate of their own group."""
    group = dict(zip(corpus["id"], corpus["group"], strict=True))
    sizes = corpus.group_by("group").len()
    expected = int((sizes["len"] - 1).sum())
    right = [group[a] == group[b] for a, b in zip(drops["id"], drops["duplicate_of"], strict=True)]
    correct = int(np.sum(right)) if right else 0
    return {"planted_copies": expected, "dropped": drops.height, "correct_drops": correct,
            "recall": round(correct / max(expected, 1), 4), "precision": round(correct / max(drops.height, 1), 4)}


# -- parts (each run in its own process) --------------------------------------------------------------

def part_signatures(n: int) -> dict:
    """Signatures/second on the same shingles: ours vs datasketch update_batch loop vs MinHash.bulk."""
    from datasketch import MinHash

    from factory.dedup.minhash import MinHashParams, shingle_hashes, signatures

    corpus = near_corpus(n)
    params = MinHashParams()
    hashes, offsets = shingle_hashes(corpus["text"], params)
    t = time.perf_counter()
    single = signatures(hashes, offsets, params, threads=1)
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = signatures(hashes, offsets, params)  # all cores (datasketch has no multi-core path)
    ours_s = time.perf_counter() - t
    assert np.array_equal(single, ours)
    m = min(n, 20_000)  # datasketch is measured on a slice: it is slow
    docs = [hashes[offsets[i]:offsets[i + 1]].tolist() for i in range(m)]
    t = time.perf_counter()
    loop = []
    for d in docs:
        mh = MinHash(num_perm=params.num_perm, seed=params.seed, hashfunc=int)
        mh.update_batch(d)
        loop.append(mh)
    loop_s = time.perf_counter() - t
    t = time.perf_counter()
    bulk = MinHash.bulk(docs, num_perm=params.num_perm, seed=params.seed, hashfunc=int)
    bulk_s = time.perf_counter() - t
    identical = all(np.array_equal(ours[i], bulk[i].hashvalues) for i in range(m))
    return {"texts": n, "shingles_per_text": round(len(hashes) / n, 1),
            "ours_per_s": round(n / ours_s), "ours_one_thread_per_s": round(n / single_s),
            "speedup_vs_bulk_one_thread": round((n / single_s) / (m / bulk_s), 1),
            "update_batch_per_s": round(m / loop_s),
            "bulk_per_s": round(m / bulk_s), "speedup_vs_bulk": round((n / ours_s) / (m / bulk_s), 1),
            "speedup_vs_update_batch": round((n / ours_s) / (m / loop_s), 1),
            "identical_to_datasketch": bool(identical), "peak_rss_mb": round(peak_rss_mb())}


def part_near(n: int) -> dict:
    """End-to-end near-dup dedup of n texts: exact + MinHash + LSH bands + verification + union-find."""
    from factory.dedup import DedupSettings, dedup

    corpus = near_corpus(n)
    base_rss = peak_rss_mb()
    t, c = time.perf_counter(), cpu_s()
    result = dedup(corpus.select("id", "text"), DedupSettings(candidates="banded"))
    wall, cpu = time.perf_counter() - t, cpu_s() - c
    return {"texts": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "texts_per_s": round(n / wall),
            "peak_rss_mb": round(peak_rss_mb()), "rss_before_mb": round(base_rss),
            "removed": result.counts(), **quality(corpus, result.drops)}


def part_lsh_equivalence(n: int) -> dict:
    """The NumPy band bucketing gives exactly datasketch MinHashLSH's candidate pairs."""
    from factory.dedup.minhash import MinHashParams, candidates_banded, candidates_lsh, text_signatures

    corpus = near_corpus(n, seed=7)
    params = MinHashParams()
    sigs = text_signatures(corpus["text"], params)
    t = time.perf_counter()
    a = candidates_lsh(sigs, params)
    lsh_s = time.perf_counter() - t
    t = time.perf_counter()
    b = candidates_banded(sigs, params)
    banded_s = time.perf_counter() - t
    same = bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
    return {"texts": n, "pairs": len(a[0]), "identical": same, "datasketch_lsh_s": round(lsh_s, 2),
            "banded_s": round(banded_s, 2), "bands_rows": list(params.bands())}


def part_semantic(n: int, threshold: float, subset: int, candidate_threshold: float = 0.7) -> dict:
    """Semantic dedup of n texts: the static model flags rows with a close neighbour, full MiniLM
    embeds and searches only those; plus agreement of static-only and two-stage with full MiniLM."""
    from factory.dedup import semantic_dedup
    from factory.dedup.semantic import minilm, minilm_static

    corpus = semantic_corpus(n)
    texts = corpus["text"]
    t, c = time.perf_counter(), cpu_s()
    fast, full = minilm_static(), minilm()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    vecs = fast.encode(texts.to_list())
    embed_s = time.perf_counter() - t
    t = time.perf_counter()
    result = semantic_dedup(corpus.select("id", "text"), vecs, threshold, candidate_threshold=candidate_threshold,
                            verify=lambda rows: full.encode(texts.gather(rows).to_list()))
    search_s = time.perf_counter() - t
    out = {"texts": n, "threshold": threshold, "candidate_threshold": candidate_threshold,
           "wall_s": round(load_s + embed_s + search_s, 2), "cpu_s": round(cpu_s() - c, 2), "load_s": round(load_s, 2),
           "static_embed_s": round(embed_s, 2), "search_and_verify_s": round(search_s, 2),
           "static_texts_per_s": round(n / embed_s), "rows_embedded_by_full_model": full.texts_embedded,
           **quality(corpus, result.drops)}
    t = time.perf_counter()
    static_only = semantic_dedup(corpus.select("id", "text"), vecs, threshold)
    out["static_only"] = {"wall_s": round(load_s + embed_s + time.perf_counter() - t, 2),
                          **quality(corpus, static_only.drops)}
    # agreement with plain full MiniLM on a subset (full MiniLM embeds everything there): the
    # templated requests (lowest group ids), so it holds paraphrase groups and their hard negatives
    sub = corpus.sort("group").head(subset)
    t = time.perf_counter()
    fv = full.encode(sub["text"].to_list())
    full_s = time.perf_counter() - t
    sv = vecs[sub["id"].str.slice(1).cast(pl.Int64).to_numpy()]
    iu = np.triu_indices(len(sub), 1)
    frame = sub.select("id", "text")
    decisions = {
        "full": semantic_dedup(frame, fv, threshold),
        "static_only": semantic_dedup(frame, sv, threshold),
        "two_stage": semantic_dedup(frame, sv, threshold, verify=lambda rows: fv[rows],
                                    candidate_threshold=candidate_threshold)}
    dropped = {k: np.isin(sub["id"], v.drops["id"]) for k, v in decisions.items()}
    out["agreement"] = {
        "subset": len(sub), "full_minilm_texts_per_s": round(len(sub) / full_s),
        "cosine_pearson_static_vs_full": round(float(np.corrcoef((fv @ fv.T)[iu], (sv @ sv.T)[iu])[0, 1]), 4),
        "same_drop_decision_static_only": round(float(np.mean(dropped["static_only"] == dropped["full"])), 4),
        "same_drop_decision_two_stage": round(float(np.mean(dropped["two_stage"] == dropped["full"])), 4),
        **{f"quality_{k}": quality(sub, v.drops) for k, v in decisions.items()}}
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


PARTS = {"signatures": part_signatures, "near": part_near, "lsh_equivalence": part_lsh_equivalence,
         "semantic": part_semantic}


def run_part(name: str, *args: object) -> dict:
    cmd = [sys.executable, __file__, "--part", name, "--args", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"part {name} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="texts for the near-dup run")
    ap.add_argument("--semantic-n", type=int, default=None, help="texts for the semantic run (default n/10)")
    ap.add_argument("--semantic-threshold", type=float, default=0.8)
    ap.add_argument("--sig-n", type=int, default=200_000, help="texts for the signature speed run")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.part:
        print(json.dumps(PARTS[a.part](*json.loads(a.args))))
        return
    sem_n = a.semantic_n or max(a.n // 10, 1000)
    res: dict = {"cpus": os.cpu_count()}
    res["signatures"] = run_part("signatures", min(a.sig_n, a.n))
    print(f"signatures: ours {res['signatures']['ours_per_s']:,}/s, datasketch bulk "
          f"{res['signatures']['bulk_per_s']:,}/s ({res['signatures']['speedup_vs_bulk']}x), update_batch "
          f"{res['signatures']['update_batch_per_s']:,}/s; identical: {res['signatures']['identical_to_datasketch']}")
    res["lsh_equivalence"] = run_part("lsh_equivalence", min(a.n, 20_000))
    print(f"LSH candidates, NumPy bands vs datasketch MinHashLSH: identical={res['lsh_equivalence']['identical']} "
          f"({res['lsh_equivalence']['pairs']} pairs)")
    res["near"] = run_part("near", a.n)
    r = res["near"]
    print(f"near-dup dedup of {a.n:,} texts: {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB; removed {r['removed']}; "
          f"recall {r['recall']} precision {r['precision']}")
    res["semantic"] = run_part("semantic", sem_n, a.semantic_threshold, min(sem_n, 2000))
    s = res["semantic"]
    print(f"semantic dedup of {sem_n:,} texts (static flags, MiniLM decides): {s['wall_s']} s (static embed "
          f"{s['static_embed_s']} s, search+verify {s['search_and_verify_s']} s, {s['rows_embedded_by_full_model']} "
          f"rows through MiniLM); recall {s['recall']} precision {s['precision']}; agreement: {s['agreement']}")
    res["goals"] = {"sig_speedup_vs_bulk>=10": res["signatures"]["speedup_vs_bulk"] >= 10,
                    "near_wall<=60s": r["wall_s"] <= 60, "near_rss<=3GB": r["peak_rss_mb"] <= 3072,
                    "recall>=0.95": r["recall"] >= 0.95, "precision>=0.99": r["precision"] >= 0.99,
                    "semantic_wall<=120s": s["wall_s"] <= 120}
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
