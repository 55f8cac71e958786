"""Exact duplicates: records whose *normalised* text is identical.

Normalisation folds what a reader would not call a difference: Unicode compatibility forms, case,
punctuation and runs of whitespace (each is a switch). Grouping is on the normalised string itself,
not on a hash of it, so two different texts can never be merged by a hash collision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from factory.dedup.keep import Groups, resolve_groups

#: punctuation and symbols (Unicode classes P and S); replaced by a space, so "a,b" == "a b"
_PUNCT = r"[\p{P}\p{S}]+"


@dataclass(frozen=True)
class Normalization:
    """Which differences exact dedup (and shingling) ignores."""

    unicode: bool = True  # NFKC: full-width letters, ligatures… fold to their plain forms
    case: bool = True
    punctuation: bool = True
    whitespace: bool = True

    def expr(self, col: pl.Expr) -> pl.Expr:
        """The normalisation as a polars expression (vectorised over a column)."""
        e = col.fill_null("")
        if self.unicode:
            e = e.str.normalize("NFKC")
        if self.case:
            e = e.str.to_lowercase()
        if self.punctuation:
            e = e.str.replace_all(_PUNCT, " ")
        if self.whitespace:
            e = e.str.replace_all(r"\s+", " ").str.strip_chars()
        return e

    def apply(self, texts: pl.Series | list[str]) -> pl.Series:
        s = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
        return s.to_frame("t").select(self.expr(pl.col("t")))["t"]


def text_hash(texts: pl.Series) -> pl.Series:
    """A stable 16-hex digest per text (blake2b; unlike polars' ``hash`` it never changes across
    versions), used as the cache key of stored embeddings."""
    return pl.Series("text_hash", [hashlib.blake2b(t.encode(), digest_size=8).hexdigest() for t in texts],
                     dtype=pl.String)


def exact_duplicates(df: pl.DataFrame, norm: Normalization = Normalization()) -> Groups:
    """Group ``df`` (columns ``id``, ``text``, ``_rank``, ``fixed``) by normalised text.

    Returns every group of two or more records with its keeper (lowest ``_rank``); similarity is 1.0.
    """
    key = pl.col("_norm") if "_norm" in df.columns else norm.expr(pl.col("text"))  # already normalised
    keyed = df.select("id", "_rank", "fixed", key.alias("_key"))
    groups = (keyed.group_by("_key").agg(pl.col("id"), pl.col("_rank"), pl.len().alias("_n"))
              .filter(pl.col("_n") > 1))
    members = groups.select(pl.int_range(pl.len()).alias("group"), "id", "_rank").explode("id", "_rank")
    return resolve_groups(members, similarity=None)
