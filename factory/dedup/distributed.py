"""Near and semantic dedup's heavy parts as map-reduce jobs, for executors that spread work (Ray).

The same algorithm as the in-process path, cut where a cluster can share it:

- **signatures** and **embeddings**: a map over row chunks (``signature_rows`` / ``embedding_rows``);
- **candidate pairs**: a map that turns each signature into its band keys, each row sent to the
  partition its key hashes to (``band_rows``), then a reduce per partition that pairs the rows whose
  keys are equal (``bucket_pairs``): a shuffle by band key, as in a MapReduce join;
- **verification** (true Jaccard) and the **star grouping**: on the driver, on the candidate pairs only
  (``near_dedup`` does them, the same code for every executor).

``MapReduce`` is the executor's ``map_reduce`` (factory/executors/base.py). The functions it is given
are module-level (or partials of them), so they pickle to any worker.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import polars as pl

from factory.dedup.minhash import (
    MinHashParams,
    band_keys,
    pairs_sharing_keys,
    text_signatures,
    verified_candidates,
)

#: ``(frame, map_fn, reduce_fn, by, chunk_rows) -> frame``: see ``Executor.map_reduce``
MapReduce = Callable[..., pl.DataFrame]

#: partitions of the band-key shuffle: each reduce holds about rows × bands / PARTITIONS keys
PARTITIONS = 16
CHUNK_ROWS = 50_000


def signature_rows(frame: pl.DataFrame, params: MinHashParams, normalized: bool = False) -> pl.DataFrame:
    """Map: ``pos, text`` → ``pos, signature``."""
    sigs = text_signatures(frame["text"], params, threads=1, normalized=normalized)
    return pl.DataFrame({"pos": frame["pos"], "signature": sigs}, schema_overrides={"pos": pl.Int64})


def signatures(texts: pl.Series, params: MinHashParams, map_reduce: MapReduce, normalized: bool = False
               ) -> np.ndarray:
    """MinHash signatures of ``texts`` computed by the executor's workers, in the order of ``texts``."""
    frame = pl.DataFrame({"pos": np.arange(len(texts), dtype=np.int64), "text": texts})
    out = map_reduce(frame, partial(signature_rows, params=params, normalized=normalized),
                     chunk_rows=CHUNK_ROWS).sort("pos")
    return out["signature"].to_numpy().astype(np.uint32).reshape(len(texts), params.num_perm)


def band_rows(frame: pl.DataFrame, params: MinHashParams, partitions: int) -> pl.DataFrame:
    """Map: ``pos, signature`` → one ``part, key, pos`` row per band (``part`` = the key's partition)."""
    sigs = frame["signature"].to_numpy().astype(np.uint32)
    keys = band_keys(sigs, params)  # (rows × bands), flattened row by row
    pos = np.repeat(frame["pos"].to_numpy().astype(np.int64), keys.shape[1])
    keys = keys.ravel()
    return pl.DataFrame({"part": (keys % np.uint64(partitions)).astype(np.int64), "key": keys, "pos": pos})


def bucket_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """Reduce (one partition): every pair of rows that share a band key."""
    left, right = pairs_sharing_keys(frame["key"].to_numpy(), frame["pos"].to_numpy().astype(np.int64))
    return pl.DataFrame({"left": left, "right": right}, schema={"left": pl.Int64, "right": pl.Int64})


def candidates(sigs: np.ndarray, params: MinHashParams, query: np.ndarray | None, map_reduce: MapReduce,
               partitions: int = PARTITIONS) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of :func:`~factory.dedup.minhash.candidates_banded`, the band keys shuffled by the executor."""
    if len(sigs) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    frame = pl.DataFrame({"pos": np.arange(len(sigs), dtype=np.int64), "signature": sigs})
    pairs = map_reduce(frame, partial(band_rows, params=params, partitions=partitions), bucket_pairs, by="part",
                       chunk_rows=CHUNK_ROWS)
    return verified_candidates(sigs, params, pairs["left"].to_numpy().astype(np.int64),
                               pairs["right"].to_numpy().astype(np.int64), query)


def embedding_rows(frame: pl.DataFrame, model: str) -> pl.DataFrame:
    """Map: ``pos, text`` → ``pos, vector`` with the named embedder (loaded once per worker process)."""
    from factory.dedup.semantic import shared_embedder

    vectors = shared_embedder(model).encode(frame["text"].to_list())
    return pl.DataFrame({"pos": frame["pos"], "vector": np.asarray(vectors, dtype=np.float32)},
                        schema_overrides={"pos": pl.Int64})


def embeddings(texts: list[str], model: str, map_reduce: MapReduce, chunk_rows: int = 2_048) -> np.ndarray:
    """Normalised embeddings of ``texts`` computed by the executor's workers, in order."""
    frame = pl.DataFrame({"pos": np.arange(len(texts), dtype=np.int64), "text": pl.Series(texts, dtype=pl.String)})
    out = map_reduce(frame, partial(embedding_rows, model=model), chunk_rows=chunk_rows).sort("pos")
    return np.asarray(out["vector"].to_numpy(), dtype=np.float32).reshape(len(texts), -1)
