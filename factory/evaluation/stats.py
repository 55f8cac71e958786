"""The statistics of an eval: Wilson intervals, McNemar's exact test and paired bootstrap intervals.

Small enough to read and check by hand, so no scipy: Wilson and McNemar are closed forms, the
bootstrap is numpy resampling with a fixed seed (the same rows always give the same interval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k/n`` (well-behaved at 0, 1 and small ``n``)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo, 1.0 if k == n else hi)  # exact at the ends, not 1 - 1e-16


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under H0 the ``b + c`` discordant pairs are fair coin flips.

    ``b`` = items only the first model got right, ``c`` = items only the second got right.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_ci(stat: Callable[[np.ndarray], np.ndarray], n_items: int, n_boot: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat`` over item resamples; ``stat`` maps an (n_boot, n) index matrix to
    n_boot values, so paired statistics resample both models' items together."""
    if n_items == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    values = stat(idx)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000,
                          seed: int = 0) -> tuple[float, float, float]:
    """(mean(b - a), CI low, CI high): the paired difference, items resampled jointly."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(lambda idx: diff[idx].mean(axis=1), diff.size, n_boot, seed)
    return (float(diff.mean()), lo, hi)


def ratio_of_sums(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return num[idx].sum(axis=1) / den[idx].sum(axis=1)


def nll_per_token(nll: Sequence[float], tokens: Sequence[int], n_boot: int = 10_000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(total NLL / total tokens, CI low, CI high), items resampled (token-weighted, like perplexity)."""
    num, den = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    if num.size == 0 or den.sum() == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(lambda idx: ratio_of_sums(num, den, idx), num.size, n_boot, seed)
    return (float(num.sum() / den.sum()), lo, hi)


def paired_nll_diff(nll_a: Sequence[float], tok_a: Sequence[int], nll_b: Sequence[float], tok_b: Sequence[int],
                    n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(B's NLL/token - A's, CI low, CI high) on the same items, resampled jointly (negative = B better)."""
    na, ta = np.asarray(nll_a, dtype=float), np.asarray(tok_a, dtype=float)
    nb, tb = np.asarray(nll_b, dtype=float), np.asarray(tok_b, dtype=float)
    if na.size == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(lambda idx: ratio_of_sums(nb, tb, idx) - ratio_of_sums(na, ta, idx), na.size,
                          n_boot, seed)
    return (float(nb.sum() / tb.sum() - na.sum() / ta.sum()), lo, hi)
