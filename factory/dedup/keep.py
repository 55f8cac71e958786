"""Which record of a duplicate group survives, and union-find to turn similar pairs into groups.

The keep rule is a total order, so the same input always keeps the same records: records already in
the warehouse (``fixed``: other runs, published data) first, then the highest ``priority`` (e.g. a
judge score; missing scores last), then the earliest ``order`` (round, then position in the run),
then the smallest id.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: a frame of duplicate groups: group (int), id, _rank; resolve_groups adds keeper and kept
Groups = pl.DataFrame


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting: NumPy 2's default hash-based path is several times slower on large
    integer arrays here."""
    v = np.sort(values, kind="stable")
    if len(v) < 2:
        return v
    keep = np.empty(len(v), dtype=bool)
    keep[0] = True
    np.not_equal(v[1:], v[:-1], out=keep[1:])
    return v[keep]


def rank_records(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``_rank`` (0 = the record to keep first) and ``fixed`` (default False) to ``df``.

    ``df`` has ``id`` and optionally ``fixed`` (bool), ``priority`` (higher wins) and ``order``
    (lower wins).
    """
    if "fixed" not in df.columns:
        df = df.with_columns(fixed=pl.lit(False))
    keys, desc = ["fixed"], [True]
    if "priority" in df.columns:
        keys.append("priority")
        desc.append(True)
    if "order" in df.columns:
        keys.append("order")
        desc.append(False)
    keys.append("id")
    desc.append(False)
    ranked = df.with_row_index("_pos").sort(keys, descending=desc, nulls_last=True)
    ranked = ranked.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_rank"))
    return ranked.sort("_pos").drop("_pos")


def resolve_groups(members: pl.DataFrame, similarity: pl.DataFrame | None = None) -> Groups:
    """Give every group its keeper (the member with the lowest ``_rank``).

    ``members`` has ``group``, ``id`` and ``_rank``. Returns ``group, id, _rank, keeper, kept``.
    """
    keeper = members.sort("_rank").group_by("group", maintain_order=True).agg(pl.col("id").first().alias("keeper"))
    out = members.join(keeper, on="group").with_columns(kept=pl.col("id") == pl.col("keeper"))
    return out.sort("group", "_rank")


def union_find(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by edges ``left[k]–right[k]``, vectorised.

    A disjoint-set forest with union-by-smaller-label and full path compression, run on all edges at
    once until no edge joins two roots. Returns each node's root (the smallest node of its component).
    """
    parent = np.arange(n, dtype=np.int64)
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    if left.size == 0:
        return parent
    while True:
        pl_, pr = parent[left], parent[right]
        differ = pl_ != pr
        if not differ.any():
            return parent
        lo = np.minimum(pl_[differ], pr[differ])
        hi = np.maximum(pl_[differ], pr[differ])
        np.minimum.at(parent, hi, lo)  # union: hook the larger root under the smaller label
        while True:  # path compression until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def groups_from_pairs(ids: pl.Series, ranks: pl.Series, left: np.ndarray, right: np.ndarray) -> Groups:
    """Groups (``group, id, _rank``) of the records joined by the pairs (positions into ``ids``)."""
    if len(left) == 0:
        return pl.DataFrame(schema={"group": pl.Int64, "id": pl.String, "_rank": pl.Int64})
    nodes = sorted_unique(np.concatenate([left, right]))
    local = np.searchsorted(nodes, left), np.searchsorted(nodes, right)
    roots = union_find(len(nodes), *local)
    return pl.DataFrame({"group": nodes[roots].astype(np.int64), "id": ids.gather(nodes),
                         "_rank": ranks.gather(nodes)})


def star_groups(ids: pl.Series, ranks: pl.Series, left: np.ndarray, right: np.ndarray,
                sim: np.ndarray) -> pl.DataFrame:
    """Groups in which every dropped record is *directly* similar to its keeper (no chaining).

    Records are visited best rank first; one with an already-kept neighbour is dropped as a duplicate
    of its most similar kept neighbour, otherwise it is kept. Union-find would chain "clean the
    windows" → "clean the shoes" → "clean the taxes" into one group through a shared template; this
    keeps one record per neighbourhood, as SemDeDup does. Returns ``group, id, _rank`` (group = keeper).
    """
    if len(left) == 0:
        return pl.DataFrame(schema={"group": pl.Int64, "id": pl.String, "_rank": pl.Int64})
    rank = ranks.to_numpy()
    src = np.concatenate([left, right])
    dst = np.concatenate([right, left])
    weight = np.concatenate([sim, sim])
    order = np.lexsort((dst, src))
    src, dst, weight = src[order], dst[order], weight[order]
    nodes = sorted_unique(src)
    starts = np.searchsorted(src, nodes)
    ends = np.searchsorted(src, nodes, side="right")
    span = dict(zip(nodes.tolist(), zip(starts.tolist(), ends.tolist(), strict=True), strict=True))
    keeper_of: dict[int, int] = {}
    for node in nodes[np.argsort(rank[nodes], kind="stable")].tolist():
        s, e = span[node]
        best, best_sim = -1, -np.inf
        for nb, w in zip(dst[s:e].tolist(), weight[s:e].tolist(), strict=True):
            if keeper_of.get(nb) == nb and (w > best_sim or (w == best_sim and rank[nb] < rank[best])):
                best, best_sim = nb, w
        keeper_of[node] = best if best >= 0 else node
    members = np.fromiter(keeper_of.keys(), dtype=np.int64)
    groups = np.fromiter(keeper_of.values(), dtype=np.int64)
    return pl.DataFrame({"group": groups, "id": ids.gather(members), "_rank": ranks.gather(members)})
