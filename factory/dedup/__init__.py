"""Deduplication: exact, near (MinHash + LSH) and semantic (embeddings), with a deterministic keep rule.

The core functions are pure: a polars frame of records in (``id``, ``text``; optionally ``fixed`` for
records already kept elsewhere, e.g. other runs, ``priority`` and ``order`` for the keep rule), a
:class:`DedupResult` out: the dropped records (``id, kind, duplicate_of, similarity``) and the
clusters they belong to (``cluster_id, record_id, kept, kind, similarity``). Fixed records are never
dropped and always win; only clusters with at least one dropped record are reported. The stage
(``stages/dedup.py``) adds the warehouse: history, stored signatures and embeddings, reject rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from factory.dedup import distributed
from factory.dedup.distributed import MapReduce
from factory.dedup.exact import Normalization, exact_duplicates
from factory.dedup.keep import rank_records, sorted_unique, star_groups
from factory.dedup.minhash import (
    MinHashParams,
    candidates_banded,
    candidates_lsh,
    jaccard_pairs,
    text_shingle_sets,
    text_signatures,
)
from factory.dedup.semantic import similar_pairs
from factory.records import content_id

Kind = Literal["exact", "near", "semantic"]
REASONS: dict[str, str] = {"exact": "exact_duplicate", "near": "near_duplicate", "semantic": "semantic_duplicate"}

DROPS_SCHEMA = {"id": pl.String, "kind": pl.String, "duplicate_of": pl.String, "similarity": pl.Float64}
CLUSTERS_SCHEMA = {"cluster_id": pl.String, "record_id": pl.String, "kept": pl.Boolean, "kind": pl.String,
                   "similarity": pl.Float64}


@dataclass
class DedupResult:
    drops: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DROPS_SCHEMA))
    clusters: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CLUSTERS_SCHEMA))

    def counts(self) -> dict[str, int]:
        found = dict(self.drops.group_by("kind").len().iter_rows()) if self.drops.height else {}
        return {k: int(found.get(k, 0)) for k in REASONS}

    @staticmethod
    def concat(parts: list[DedupResult]) -> DedupResult:
        return DedupResult(pl.concat([p.drops for p in parts] or [DedupResult().drops]),
                           pl.concat([p.clusters for p in parts] or [DedupResult().clusters]))


@dataclass(frozen=True)
class DedupSettings:
    """Which methods run and how (the stage's config maps onto this)."""

    exact: bool = True
    near: bool = True
    semantic: bool = False
    normalization: Normalization = Normalization()
    minhash: MinHashParams = MinHashParams()
    semantic_threshold: float = 0.8
    #: two-step semantic dedup: the cheap vectors flag rows with a neighbour at this cosine, the accurate
    #: ones decide at ``semantic_threshold`` (used when ``dedup`` gets ``accurate_for``)
    semantic_candidate_threshold: float = 0.7
    candidates: Literal["lsh", "banded"] = "lsh"  # datasketch MinHashLSH, or the same pairs via NumPy


class TooManyDrops(ValueError):
    """Dedup would drop more than the allowed share of the records: stop before anything is written."""


def check_drop_fraction(result: DedupResult, records: pl.DataFrame, max_fraction: float, setting: str,
                        thresholds: str) -> None:
    """Raise :class:`TooManyDrops` (naming the figure, the largest clusters and the settings to change)
    when ``result`` drops more than ``max_fraction`` of ``records`` (``id``, ``text``, ``fixed``)."""
    total = records.filter(~pl.col("fixed")).height if "fixed" in records.columns else records.height
    dropped = result.drops.height
    if total == 0 or dropped / total <= max_fraction:
        return
    sizes = (result.clusters.group_by("cluster_id", "kind").agg(
        pl.len().alias("size"), pl.col("record_id").filter(pl.col("kept")).first().alias("keeper"))
        .sort("size", "cluster_id", descending=[True, False]).head(3))
    text = dict(zip(records["id"], records["text"], strict=True))
    largest = "; ".join(f"{r['size']} records ({r['kind']}) around {_clip(text.get(r['keeper'], ''))!r}"
                        for r in sizes.iter_rows(named=True)) or "none (the records are already held by other runs)"
    raise TooManyDrops(
        f"dedup would drop {dropped:,} of {total:,} records ({dropped / total:.1%}), more than "
        f"{setting}={max_fraction}; largest clusters: {largest}. Nothing was written. If these are "
        f"duplicates, raise {setting}; if not, raise the threshold ({thresholds}) or drop a method.")


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _prepare(df: pl.DataFrame) -> pl.DataFrame:
    return df if "_rank" in df.columns else rank_records(df)


def _resolve(kind: str, ranked: pl.DataFrame, groups: pl.DataFrame,
             similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> DedupResult:
    """Keepers, drops and cluster rows from groups (``group, id, _rank`` with positions in ``_pos``)."""
    if groups.is_empty():
        return DedupResult()
    g = groups.join(ranked.select("id", "fixed", pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos")), on="id")
    if "keeper" in g.columns:  # star groups name their keeper
        keepers = g.filter(pl.col("id") == pl.col("keeper")).select("group", pl.col("_pos").alias("_kpos"))
    else:  # exact groups: the best-ranked member
        keepers = g.sort("_rank").group_by("group", maintain_order=True).agg(
            pl.col("id").first().alias("keeper"), pl.col("_pos").first().alias("_kpos"))
    g = g.join(keepers, on="group")
    g = g.filter((pl.col("id") == pl.col("keeper")) | ~pl.col("fixed"))  # history non-keepers: not ours
    has_drop = g.filter(pl.col("id") != pl.col("keeper"))["group"].unique()
    g = g.filter(pl.col("group").is_in(has_drop.implode())).sort("group", "_rank")
    if g.is_empty():
        return DedupResult()
    is_keeper = (g["id"] == g["keeper"]).to_numpy()
    sims = np.ones(g.height)
    if similarity is not None and (~is_keeper).any():
        sims[~is_keeper] = similarity(g["_pos"].to_numpy()[~is_keeper], g["_kpos"].to_numpy()[~is_keeper])
    g = g.with_columns(similarity=pl.Series(np.round(sims, 6)), kept=pl.Series(is_keeper))
    cluster_ids = {k: content_id("dedup_cluster", kind, k) for k in g["keeper"].unique().to_list()}
    g = g.with_columns(cluster_id=pl.col("keeper").replace_strict(cluster_ids, return_dtype=pl.String),
                       kind=pl.lit(kind))
    drops = g.filter(~pl.col("kept")).select("id", "kind", pl.col("keeper").alias("duplicate_of"), "similarity")
    clusters = g.select("cluster_id", pl.col("id").alias("record_id"), "kept", "kind", "similarity")
    return DedupResult(drops, clusters)


def exact_dedup(df: pl.DataFrame, norm: Normalization | None = None) -> DedupResult:
    """Drop records whose normalised text equals a better-ranked record's."""
    ranked = _prepare(df)
    groups = exact_duplicates(ranked, norm or Normalization()).select("group", "id", "_rank")
    return _resolve("exact", ranked, groups, None)


def near_dedup(df: pl.DataFrame, params: MinHashParams | None = None, sigs: np.ndarray | None = None,
               candidates: Literal["lsh", "banded"] = "lsh", map_reduce: MapReduce | None = None) -> DedupResult:
    """Drop records whose shingle Jaccard similarity to a kept record (verified, not estimated) is >= threshold.

    ``sigs`` are the rows' MinHash signatures when already known (e.g. loaded from the warehouse). With
    ``map_reduce`` (a remote executor's), signatures and candidate pairs are made by its workers
    (factory/dedup/distributed.py); verification and grouping stay here, the same for every executor.
    """
    params = params or MinHashParams()
    ranked = _prepare(df)
    if ranked.height < 2:
        return DedupResult()
    # a "_norm" column (set by dedup()) holds the text already normalised the same way: reuse it
    normalized = "_norm" in ranked.columns
    texts = ranked["_norm"] if normalized else ranked["text"]
    if sigs is None and map_reduce is not None:
        sigs = distributed.signatures(texts, params, map_reduce, normalized=normalized)
    elif sigs is None:
        sigs = text_signatures(texts, params, normalized=normalized)
    query = np.flatnonzero(~ranked["fixed"].to_numpy())
    if map_reduce is not None:
        left, right = distributed.candidates(sigs, params, query, map_reduce)
    else:
        left, right = (candidates_lsh if candidates == "lsh" else candidates_banded)(sigs, params, query)
    if len(left) == 0:
        return DedupResult()
    # exact Jaccard on the shingle sets of just the rows that have a candidate
    involved = sorted_unique(np.concatenate([left, right]))
    sets = text_shingle_sets(texts.gather(involved), params, normalized=normalized)

    def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return jaccard_pairs(sets, np.searchsorted(involved, a), np.searchsorted(involved, b))

    sims = jaccard(left, right)
    ok = sims >= params.threshold
    # stars, not union-find: every drop is verified similar to the very record it is dropped for
    groups = star_groups(ranked["id"], ranked["_rank"], left[ok], right[ok], sims[ok], ranked["fixed"].to_numpy(),
                         ranked["_tier"])
    return _resolve("near", ranked, groups, jaccard)


def semantic_dedup(df: pl.DataFrame, vectors: np.ndarray, threshold: float = 0.8, block: int = 2048,
                   verify: Callable[[np.ndarray], np.ndarray] | None = None,
                   candidate_threshold: float | None = None) -> DedupResult:
    """Drop records whose embedding's cosine similarity to a kept record is >= threshold.

    ``vectors`` are L2-normalised and aligned with ``df``'s rows. Grouping is by stars, not union-find
    (see :func:`factory.dedup.keep.star_groups`): every drop is directly similar to its keeper.
    With ``verify`` (row positions → accurate normalised vectors), ``vectors`` only flag the rows that
    have a neighbour at ``candidate_threshold``; the accurate model embeds and searches just those rows
    and its cosine decides: a static model's speed with (most of) the full model's judgement.
    """
    ranked = _prepare(df)
    if ranked.height < 2:
        return DedupResult()
    fixed = ranked["fixed"].to_numpy()
    order = np.argsort(~fixed, kind="stable")  # history first: compared with new rows, not with itself
    x = np.ascontiguousarray(vectors[order], dtype=np.float32)
    nfixed = int(fixed.sum())
    first = threshold if verify is None else (candidate_threshold or threshold)
    i, j, sim = similar_pairs(x, first, first_query=nfixed, block=block)
    if verify is not None and len(i):
        # two-stage: the cheap vectors flag the rows that have any close neighbour; the accurate model
        # then searches among just those rows and decides (as MinHash proposes and Jaccard decides)
        sub = sorted_unique(np.concatenate([i, j]))
        accurate = np.asarray(verify(order[sub]), dtype=np.float32)
        vectors = np.zeros((len(ranked), accurate.shape[1]), dtype=np.float32)
        vectors[order[sub]] = accurate
        si, sj, sim = similar_pairs(accurate, threshold, first_query=int((sub < nfixed).sum()), block=block)
        i, j = sub[si], sub[sj]
    i, j = order[i], order[j]
    groups = star_groups(ranked["id"], ranked["_rank"], i, j, sim, fixed, ranked["_tier"])

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", vectors[a].astype(np.float64), vectors[b].astype(np.float64))

    return _resolve("semantic", ranked, groups, cosine)


def dedup(df: pl.DataFrame, settings: DedupSettings = DedupSettings(),
          signatures_for: Callable[[pl.DataFrame], np.ndarray] | None = None,
          vectors_for: Callable[[pl.DataFrame], np.ndarray] | None = None,
          accurate_for: Callable[[pl.DataFrame], np.ndarray] | None = None,
          map_reduce: MapReduce | None = None) -> DedupResult:
    """Exact, then near, then semantic dedup; each method sees only the survivors of the one before.

    ``signatures_for(frame)`` / ``vectors_for(frame)`` return MinHash signatures / normalised
    embeddings for a frame's rows (the stage serves them from the warehouse's cache); semantic dedup
    needs ``vectors_for``. ``map_reduce`` (a remote executor's) spreads near dedup's candidate search over
its workers. With ``accurate_for`` (a better, slower embedder), semantic dedup is two-step:
    ``vectors_for`` only flags the rows with a close neighbour, and ``accurate_for`` embeds and decides.
    """
    ranked = _prepare(df)
    if settings.minhash.normalization == settings.normalization and "_norm" not in ranked.columns:
        ranked = ranked.with_columns(settings.normalization.expr(pl.col("text")).alias("_norm"))  # once
    parts: list[DedupResult] = []
    remaining = ranked

    def drop(res: DedupResult) -> pl.DataFrame:
        parts.append(res)
        return remaining.filter(~pl.col("id").is_in(res.drops["id"].implode()))

    if settings.exact:
        remaining = drop(exact_dedup(remaining, settings.normalization))
    if settings.near and remaining.height > 1:
        sigs = signatures_for(remaining) if signatures_for else None
        remaining = drop(near_dedup(remaining, settings.minhash, sigs, settings.candidates, map_reduce))
    if settings.semantic and remaining.height > 1:
        if vectors_for is None:
            raise ValueError("semantic dedup needs embeddings: pass vectors_for")
        rows = remaining
        verify = (lambda positions: accurate_for(rows[positions])) if accurate_for is not None else None
        remaining = drop(semantic_dedup(rows, vectors_for(rows), settings.semantic_threshold, verify=verify,
                                        candidate_threshold=settings.semantic_candidate_threshold))
    return DedupResult.concat(parts)
