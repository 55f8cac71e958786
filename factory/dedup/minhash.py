"""Near duplicates: MinHash signatures computed for many texts at once with NumPy, an LSH index
from datasketch, verification with true Jaccard similarity, and union-find grouping.

Signatures are bit-identical to datasketch's default ``affine32`` scheme fed the same 32-bit shingle
hashes (``MinHash(hashfunc=int).update_batch(hashes)``): each hash is pre-mixed with the MurmurHash3
finaliser and then ``a_k * h + b_k mod 2**32`` with datasketch's own permutations. So any row can
become a :class:`datasketch.LeanMinHash`, be inserted in a :class:`datasketch.MinHashLSH` and be
compared with sketches made by datasketch itself. The difference is speed: one ``(shingles × perms)``
matrix product-and-min per chunk of documents instead of a Python loop per document.

Shingling for short texts: the default is character 4-grams of the normalised text (bytes). A 1–3
word edit in an 8–30 word instruction still leaves most 4-grams shared, where word 3-grams would
share almost none. ``word`` shingling (1- and 2-grams of words) is the other option.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import polars as pl

from factory.dedup.exact import Normalization
from factory.dedup.keep import sorted_unique

_U32 = np.uint32
_MAX32 = np.uint32(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class MinHashParams:
    """Everything that changes a signature; stored signatures are reused only when this matches."""

    num_perm: int = 128
    seed: int = 1
    shingle: Literal["char", "word"] = "char"
    n: int = 4  # char n-gram size in bytes (2–8); for "word", the largest word n-gram (1..n)
    threshold: float = 0.82  # Jaccard similarity at and above which two texts are near duplicates
    normalization: Normalization = Normalization()

    def fingerprint(self) -> str:
        """A short text naming the signature space (everything but the threshold)."""
        nz = self.normalization
        flags = "".join(k[0] for k, v in (("unicode", nz.unicode), ("case", nz.case),
                                           ("punctuation", nz.punctuation), ("whitespace", nz.whitespace)) if v)
        return f"affine32/p{self.num_perm}/s{self.seed}/{self.shingle}{self.n}/{flags}"

    def bands(self) -> tuple[int, int]:
        """LSH (bands, rows) for the threshold, from datasketch's own optimiser."""
        return lsh_params(self.threshold, self.num_perm)


#: rows per band at least this many: with fewer, a band of 3 values is shared by swathes of unrelated
#: short texts and the candidate pairs of a million texts no longer fit in memory
MIN_ROWS = 5


@lru_cache(maxsize=8)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands × rows minimising datasketch's own error integrals, weighted 0.95 against false negatives
    (every candidate is verified with its true Jaccard, so a false positive costs one comparison, while a
    false negative is a duplicate that stays: with equal weights a pair at 0.85 was found 69% of the
    time at threshold 0.8, with these 99%), with at least ``MIN_ROWS`` rows per band."""
    from datasketch.lsh import _false_negative_probability, _false_positive_probability

    best, opt = float("inf"), (1, min(MIN_ROWS, num_perm))
    for b in range(1, num_perm + 1):
        for r in range(min(MIN_ROWS, num_perm), num_perm // b + 1):
            error = (0.05 * _false_positive_probability(threshold, b, r)
                     + 0.95 * _false_negative_probability(threshold, b, r))
            if error < best:
                best, opt = error, (b, r)
    return opt


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own (a, b) for these settings, so our signatures equal its signatures."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.ascontiguousarray(a, dtype=_U32), np.ascontiguousarray(b, dtype=_U32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch pre-mixes every input hash with it)."""
    h = h.astype(_U32, copy=True)
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 with good avalanche."""
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    return x ^ (x >> np.uint64(31))


# -- shingles ----------------------------------------------------------------------------------------

def _bytes_of(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of all texts back to back, offsets of each text) without a Python loop per text."""
    lengths = texts.str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buf = np.frombuffer("".join(texts.fill_null("").to_list()).encode(), dtype=np.uint8)
    return buf, offsets


def _char_shingles(buf: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)
    total = int(offsets[-1])
    padded = np.zeros(total + n, dtype=np.uint64)
    padded[:total] = buf
    value = np.zeros(total, dtype=np.uint64)
    for k in range(n):  # the n bytes of each window packed into one integer: the shingle itself
        value <<= np.uint64(8)
        value |= padded[k:k + total]
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    doc = np.repeat(np.arange(len(lengths)), counts)
    starts = np.repeat(offsets[:-1], counts)
    cum = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=cum[1:])
    pos = starts + (np.arange(cum[-1]) - np.repeat(cum[:-1], counts))
    vals = value[pos]
    short = lengths[doc] < n  # a text shorter than n bytes is one shingle: itself
    if short.any():
        vals[short] >>= (np.uint64(8) * (n - lengths[doc][short]).astype(np.uint64))
    hashes = (_mix64(vals + np.uint64(n)) >> np.uint64(32)).astype(_U32)
    return hashes, cum


def _word_shingles(buf: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    ndocs = len(offsets) - 1
    space = buf == 32
    doc_of_byte = np.repeat(np.arange(ndocs), np.diff(offsets))
    # a word starts at a non-space byte that begins a text or follows a space
    first = np.zeros(len(buf), dtype=bool)
    first[offsets[:-1][np.diff(offsets) > 0]] = True
    starts_word = ~space & (first | np.concatenate([[True], space[:-1]]))
    word_of_byte = np.cumsum(starts_word) - 1
    keep = ~space
    wid = word_of_byte[keep]
    nwords = int(starts_word.sum())
    if nwords == 0:
        return np.zeros(0, dtype=_U32), np.zeros(ndocs + 1, dtype=np.int64)
    # polynomial hash of each word's bytes: sum(byte_k * P**k) mod 2**64, then mixed
    pos_in_word = np.arange(len(wid)) - np.searchsorted(wid, wid)
    powers = np.cumprod(np.full(int(pos_in_word.max()) + 1, _GOLDEN, dtype=np.uint64))
    terms = (buf[keep].astype(np.uint64) + np.uint64(1)) * powers[pos_in_word]
    word_hash = _mix64(np.add.reduceat(terms, np.flatnonzero(np.diff(wid, prepend=-1))))
    word_doc = doc_of_byte[np.flatnonzero(starts_word)]
    grams, gram_doc = [word_hash], [word_doc]
    h = word_hash
    for k in range(2, n + 1):  # k-grams of words within one text
        same = word_doc[k - 1:] == word_doc[:len(word_doc) - k + 1]
        h = _mix64(h[:len(h) - 1] * _GOLDEN + word_hash[k - 1:] + np.uint64(k))
        grams.append(h[same])
        gram_doc.append(word_doc[k - 1:][same])
    hashes = np.concatenate(grams)
    docs = np.concatenate(gram_doc)
    order = np.argsort(docs, kind="stable")
    counts = np.bincount(docs, minlength=ndocs)
    cum = np.zeros(ndocs + 1, dtype=np.int64)
    np.cumsum(counts, out=cum[1:])
    return (hashes[order] >> np.uint64(32)).astype(_U32), cum


def shingle_hashes(texts: pl.Series | list[str], params: MinHashParams = MinHashParams(),
                   normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """32-bit shingle hashes of every text, as (hashes, offsets): text i owns hashes[offsets[i]:offsets[i+1]].

    Hashes may repeat within a text (a set is what MinHash sees either way).
    """
    s = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    if not normalized:
        s = params.normalization.apply(s)
    buf, offsets = _bytes_of(s)
    if params.shingle == "char":
        if not 2 <= params.n <= 8:
            raise ValueError(f"char shingles need 2 <= n <= 8 bytes, got n={params.n}")
        return _char_shingles(buf, offsets, params.n)
    if not 1 <= params.n <= 4:
        raise ValueError(f"word shingles need 1 <= n <= 4 words, got n={params.n}")
    return _word_shingles(buf, offsets, params.n)


# -- signatures --------------------------------------------------------------------------------------

def _sign_into(out: np.ndarray, mixed: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
               block: int) -> None:
    """Fill ``out`` (texts × perms) with the signatures of the texts delimited by ``offsets``.

    The permuted hashes are laid out perms × shingles, so each text's minimum is a reduction over a
    contiguous run; blocks of about ``block`` shingles reuse one buffer that stays in cache (large
    fresh allocations are what costs most here: page faults).
    """
    n = len(offsets) - 1
    out[:] = _MAX32
    lengths = np.diff(offsets)
    buf = np.empty((len(a), block), dtype=_U32)
    t = 0
    while t < n:
        # take texts while they fit in the block (always at least one; a huge text gets its own buffer)
        stop = int(np.searchsorted(offsets, offsets[t] + block, side="right")) - 1
        stop = max(stop, t + 1)
        lo, hi = int(offsets[t]), int(offsets[stop])
        if hi > lo:
            work = buf[:, :hi - lo] if hi - lo <= block else np.empty((len(a), hi - lo), dtype=_U32)
            np.multiply(a[:, None], mixed[None, lo:hi], out=work)
            work += b[:, None]
            nonempty = np.flatnonzero(lengths[t:stop] > 0)
            out[t + nonempty] = np.minimum.reduceat(work, offsets[t:stop][nonempty] - lo, axis=1).T
        t = stop


def signatures(hashes: np.ndarray, offsets: np.ndarray, params: MinHashParams = MinHashParams(),
               block: int = 4096, threads: int | None = None) -> np.ndarray:
    """MinHash signatures (n_texts × num_perm, uint32) of the shingle sets, many texts at a time.

    Chunks of 8,192 texts (small temporaries are recycled, not page-faulted) go to ``threads`` workers
    (default: up to 4 cores; NumPy releases the GIL inside its loops)."""
    a, b = permutations(params.num_perm, params.seed)
    n = len(offsets) - 1
    out = np.empty((n, params.num_perm), dtype=_U32)

    def work(s: int) -> None:
        e = min(s + 8192, n)
        lo, hi = int(offsets[s]), int(offsets[e])
        _sign_into(out[s:e], fmix32(hashes[lo:hi]), offsets[s:e + 1] - lo, a, b, block)

    _map(work, range(0, n, 8192), threads)
    return out


def _map(work: Callable[[int], None], starts: range, threads: int | None) -> None:
    workers = threads or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            work(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, starts))


def text_signatures(texts: pl.Series | list[str], params: MinHashParams = MinHashParams(),
                    chunk: int = 8192, threads: int | None = None, normalized: bool = False) -> np.ndarray:
    """Normalise, shingle and sign texts: chunks of texts spread over threads (NumPy releases the GIL
    inside its loops), each chunk small enough that its arrays are recycled rather than page-faulted."""
    s = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    if not normalized:
        s = params.normalization.apply(s)
    out = np.empty((len(s), params.num_perm), dtype=_U32)
    a, b = permutations(params.num_perm, params.seed)

    def work(start: int) -> None:
        hashes, offsets = shingle_hashes(s.slice(start, chunk), params, normalized=True)
        _sign_into(out[start:start + chunk], fmix32(hashes), offsets, a, b, 4096)

    _map(work, range(0, len(s), chunk), threads)
    return out


def lean(signature: np.ndarray, params: MinHashParams = MinHashParams()):
    """A datasketch LeanMinHash with this signature (for MinHashLSH, or for MinHash.jaccard)."""
    from datasketch import LeanMinHash

    return LeanMinHash(seed=params.seed, hashvalues=signature, scheme="affine32")


# -- candidates --------------------------------------------------------------------------------------

def lsh_index(keys: list, sigs: np.ndarray, params: MinHashParams = MinHashParams()):
    """A datasketch MinHashLSH holding these signatures under these keys."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, params=params.bands())
    with lsh.insertion_session(buffer_size=100_000) as session:
        for key, sig in zip(keys, sigs, strict=True):
            session.insert(key, lean(sig, params), check_duplication=False)
    return lsh


def candidates_lsh(sigs: np.ndarray, params: MinHashParams = MinHashParams(),
                   query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j, positions into ``sigs``) from a datasketch MinHashLSH.

    Every row is indexed; rows in ``query`` (default: all) are looked up. This is the stage's path.
    """
    lsh = lsh_index(list(range(len(sigs))), sigs, params)
    rows = np.arange(len(sigs)) if query is None else np.asarray(query)
    left, right = [], []
    for i in rows.tolist():
        for j in lsh.query(lean(sigs[i], params)):
            if j != i:
                left.append(min(i, j))
                right.append(max(i, j))
    return _unique_pairs(np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64), len(sigs))


def candidates_banded(sigs: np.ndarray, params: MinHashParams = MinHashParams(),
                      query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same candidate pairs as :func:`candidates_lsh`, by sorting band keys with NumPy.

    Two texts are candidates when all ``r`` values of some band are equal, which is exactly
    MinHashLSH's bucket rule (its bucket key is the band's bytes). Bands are grouped by a 64-bit hash
    and then compared value by value (:func:`verified_candidates`), so a hash collision cannot add a
    pair. Used for millions of texts, where inserting into datasketch's dict-of-sets index one by one
    would dominate.
    """
    positions = np.arange(len(sigs), dtype=np.int64)
    keys = band_keys(sigs, params)
    lefts, rights = [], []
    for band in range(keys.shape[1]):
        left, right = pairs_sharing_keys(keys[:, band], positions)
        lefts.append(left)
        rights.append(right)
    return verified_candidates(sigs, params, np.concatenate(lefts), np.concatenate(rights), query)


def band_keys(sigs: np.ndarray, params: MinHashParams = MinHashParams()) -> np.ndarray:
    """(n × bands) 64-bit keys: a band's ``r`` values hashed, mixed with the band's number so that the
    keys of different bands never meet (one sort or one shuffle can hold every band)."""
    nb, r = params.bands()
    keys = np.empty((len(sigs), nb), dtype=np.uint64)
    for band in range(nb):
        cols = np.ascontiguousarray(sigs[:, band * r:(band + 1) * r]).astype(np.uint64)
        key = np.full(len(sigs), band + 1, dtype=np.uint64)
        for c in range(r):
            key = _mix64(key * _GOLDEN + cols[:, c])
        keys[:, band] = key
    return keys


def pairs_sharing_keys(keys: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (left < right) of ``positions`` whose ``keys`` are equal, by one sort."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    same_next = ks[1:] == ks[:-1]
    empty = np.zeros(0, dtype=np.int64)
    if not same_next.any():
        return empty, empty
    # members of buckets with 2+ texts, then each member against the next `gap`-th member of its bucket
    in_bucket = np.zeros(len(keys), dtype=bool)
    in_bucket[1:] |= same_next
    in_bucket[:-1] |= same_next
    members = positions[order[in_bucket]]
    mkeys = ks[in_bucket]
    lefts, rights = [empty], [empty]
    gap = 1
    while gap < len(members):
        ok = mkeys[gap:] == mkeys[:-gap]
        if not ok.any():
            break
        li, rj = members[:-gap][ok], members[gap:][ok]
        lefts.append(np.minimum(li, rj))
        rights.append(np.maximum(li, rj))
        gap += 1
    return np.concatenate(lefts), np.concatenate(rights)


def verified_candidates(sigs: np.ndarray, params: MinHashParams, left: np.ndarray, right: np.ndarray,
                        query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs that are equal on every value of at least one band (MinHashLSH's rule) and touch a
    ``query`` row (all rows when None), sorted."""
    n = len(sigs)
    if len(left) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    nb, r = params.bands()
    left, right = _unique_pairs(left, right, n)
    eq = np.zeros(len(left), dtype=bool)
    for s in range(0, len(left), 65_536):  # in chunks: memory
        a, b = sigs[left[s:s + 65_536], :nb * r], sigs[right[s:s + 65_536], :nb * r]
        eq[s:s + 65_536] = (a == b).reshape(len(a), nb, r).all(axis=2).any(axis=1)
    left, right = left[eq], right[eq]
    if query is not None:
        in_query = np.zeros(n, dtype=bool)
        in_query[np.asarray(query)] = True
        hit = in_query[left] | in_query[right]
        left, right = left[hit], right[hit]
    return left, right


def _unique_pairs(left: np.ndarray, right: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    code = sorted_unique(left.astype(np.int64) * n + right.astype(np.int64))
    return code // n, code % n


# -- verification ------------------------------------------------------------------------------------

def shingle_sets(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each text's hashes and drop repeats: (hashes, offsets) of true shingle *sets*."""
    n = len(offsets) - 1
    doc = np.repeat(np.arange(n, dtype=np.uint64), np.diff(offsets))
    code = sorted_unique((doc << np.uint64(32)) | hashes.astype(np.uint64))
    counts = np.bincount((code >> np.uint64(32)).astype(np.int64), minlength=n)
    out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return (code & np.uint64(0xFFFFFFFF)).astype(_U32), out


def text_shingle_sets(texts: pl.Series, params: MinHashParams, chunk: int = 16_384,
                      normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Shingle sets of many texts, a chunk at a time (the intermediate arrays are 8 bytes per byte of text)."""
    hashes, offsets = [], [np.zeros(1, dtype=np.int64)]
    base = 0
    for start in range(0, len(texts), chunk):
        h, off = shingle_sets(*shingle_hashes(texts.slice(start, chunk), params, normalized=normalized))
        hashes.append(h)
        offsets.append(off[1:] + base)
        base += int(off[-1])
    if not hashes:
        return np.zeros(0, dtype=_U32), np.zeros(1, dtype=np.int64)
    return np.concatenate(hashes), np.concatenate(offsets)


def _ranges(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts, lens = offsets[rows], offsets[rows + 1] - offsets[rows]
    cum = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=cum[1:])
    idx = np.repeat(starts - cum[:-1], lens) + np.arange(cum[-1])
    return idx, lens


def jaccard_pairs(sets: tuple[np.ndarray, np.ndarray], left: np.ndarray, right: np.ndarray,
                  chunk: int = 65_536) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair (vectorised over all pairs)."""
    hashes, offsets = sets
    out = np.zeros(len(left), dtype=np.float64)
    for s in range(0, len(left), chunk):
        li, rj = left[s:s + chunk], right[s:s + chunk]
        m = len(li)
        ia, la = _ranges(offsets, li)
        ib, lb = _ranges(offsets, rj)
        pa = np.repeat(np.arange(m, dtype=np.uint64), la)
        pb = np.repeat(np.arange(m, dtype=np.uint64), lb)
        # (pair, hash) codes: each side is already sorted (pairs ascending, each set sorted), so a
        # binary search of one side in the other finds the shared shingles without sorting anything
        ca = (pa << np.uint64(32)) | hashes[ia]
        cb = (pb << np.uint64(32)) | hashes[ib]
        at = np.minimum(np.searchsorted(ca, cb), max(len(ca) - 1, 0))
        shared = ca[at] == cb if len(ca) else np.zeros(len(cb), dtype=bool)
        inter = np.bincount(pb[shared].astype(np.int64), minlength=m)
        union = la + lb - inter
        out[s:s + chunk] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out
