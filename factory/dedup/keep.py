"""Which record of a duplicate group survives, and star grouping to turn similar pairs into groups.

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
    # records equal on everything but their order share a tier: star grouping may prefer the most
    # connected of them as keeper (see star_groups), never one of a worse tier
    tier_keys = keys[:-1 - ("order" in df.columns)]
    changed = pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in tier_keys)
    ranked = ranked.with_columns((changed.fill_null(True).cum_sum().cast(pl.Int64) - 1).alias("_tier"))
    return ranked.sort("_pos").drop("_pos")


def resolve_groups(members: pl.DataFrame, similarity: pl.DataFrame | None = None) -> Groups:
    """Give every group its keeper (the member with the lowest ``_rank``).

    ``members`` has ``group``, ``id`` and ``_rank``. Returns ``group, id, _rank, keeper, kept``.
    """
    keeper = members.sort("_rank").group_by("group", maintain_order=True).agg(pl.col("id").first().alias("keeper"))
    out = members.join(keeper, on="group").with_columns(kept=pl.col("id") == pl.col("keeper"))
    return out.sort("group", "_rank")


def star_groups(ids: pl.Series, ranks: pl.Series, left: np.ndarray, right: np.ndarray, sim: np.ndarray,
                fixed: np.ndarray | None = None, tiers: pl.Series | None = None) -> Groups:
    """Groups in which every dropped record is *directly* similar to its keeper (no chaining).

    Records are visited in keep order; one with an already-kept neighbour is dropped as a duplicate
    of its most similar kept neighbour (ties: the better-ranked one), otherwise it is kept. ``fixed``
    records (history) are always kept. Union-find would chain "clean the windows" → "clean the shoes"
    → "clean the taxes" into one group through a shared template, and on templated text one group
    swallows the corpus; this keeps one record per neighbourhood, as SemDeDup does.

    With ``tiers`` (records equal on history and score share a tier), the most connected record of a
    tier is visited first: the original that its copies each resemble, rather than the copy that
    happened to come first, which would leave the other copies (not similar to it) behind.
    Returns ``group, id, _rank, keeper`` (group = the keeper's position).
    """
    if len(left) == 0:
        return pl.DataFrame(schema={"group": pl.Int64, "id": pl.String, "_rank": pl.Int64, "keeper": pl.String})
    rank = ranks.to_numpy()
    src = np.concatenate([left, right]).astype(np.int64)
    dst = np.concatenate([right, left]).astype(np.int64)
    weight = np.concatenate([sim, sim])
    # each node's neighbours, most similar first (then best rank): the first kept one is its keeper
    order = np.lexsort((rank[dst], -weight, src))
    src, dst = src[order], dst[order]
    nodes = sorted_unique(src)
    starts = np.searchsorted(src, nodes)
    ends = np.searchsorted(src, nodes, side="right")
    if tiers is None:
        visit = np.argsort(rank[nodes], kind="stable")
    else:
        visit = np.lexsort((rank[nodes], -(ends - starts), tiers.to_numpy()[nodes]))
    always = (np.zeros(len(nodes), dtype=bool) if fixed is None else np.asarray(fixed)[nodes])[visit]
    neighbours = dst.tolist()
    kept = bytearray(len(rank))
    keeper = np.empty(len(nodes), dtype=np.int64)
    for slot, node, s, e, pinned in zip(visit.tolist(), nodes[visit].tolist(), starts[visit].tolist(),
                                        ends[visit].tolist(), always.tolist(), strict=True):
        found = node
        if not pinned:
            for nb in neighbours[s:e]:
                if kept[nb]:
                    found = nb
                    break
        if found == node:
            kept[node] = 1
        keeper[slot] = found
    return pl.DataFrame({"group": keeper, "id": ids.gather(nodes), "_rank": ranks.gather(nodes),
                         "keeper": ids.gather(keeper)})
