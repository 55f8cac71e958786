"""``factory dedup FILE…``: exact, near and semantic dedup of plain JSONL / CSV / Parquet files.

No warehouse and no pipeline: rows in, ``kept.parquet`` and ``dropped.parquet`` out (the dropped rows
with ``duplicate_of``, ``kind`` and ``similarity``), as people use text-dedup or datatrove. Every input
row ends up in exactly one of the two files, or, when it cannot be read at all (bad JSON, bytes that
are not UTF-8), in ``unreadable.parquet`` with its file, line, reason and raw text: nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from factory.dedup import DedupResult, DedupSettings, check_drop_fraction, dedup
from factory.dedup.semantic import load_embedder
from factory.input_files import InputFileError, expand, read_rows
from factory.warehouse import atomic_write_parquet

SOURCE_COLUMNS = ("source_file", "source_line")


@dataclass
class FileDedup:
    rows: pl.DataFrame  # every readable row: its own columns + source_file, source_line, _id, _text
    result: DedupResult
    unreadable: pl.DataFrame

    @property
    def kept(self) -> pl.DataFrame:
        return self.rows.filter(~pl.col("_id").is_in(self.result.drops["id"].implode())).drop("_id", "_text")

    @property
    def dropped(self) -> pl.DataFrame:
        drops = self.result.drops.rename({"id": "_id"})
        return self.rows.join(drops, on="_id", how="inner").drop("_id", "_text")

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write kept.parquet, dropped.parquet (and unreadable.parquet when some rows were) into out_dir."""
        files = {"kept": out_dir / "kept.parquet", "dropped": out_dir / "dropped.parquet"}
        if self.unreadable.height:
            files["unreadable"] = out_dir / "unreadable.parquet"
        try:
            for name, path in files.items():
                atomic_write_parquet(getattr(self, name), path)
        except OSError as exc:
            raise InputFileError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
        return files


def load_rows(paths: Sequence[Path], text_columns: Sequence[str], id_column: str | None = None
              ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, unreadable) of every file: rows keep their own columns and gain ``source_file``,
    ``source_line``, ``_id`` (the id column, else ``file:line``) and ``_text`` (the text columns joined
    by newlines). A missing column or a non-unique id is an :class:`InputFileError` naming the file."""
    frames, bad = [], []
    for path in expand(list(paths)):
        good = []
        for line, row, raw, error in read_rows(path):
            if error is None and row is not None:
                good.append({**row, "source_file": str(path), "source_line": line})
            else:
                reason, _, detail = (error or "unreadable: ").partition(": ")
                bad.append({"source_file": str(path), "source_line": line, "reason": reason, "detail": detail,
                            "raw": raw})
        if not good:
            continue
        try:
            df = pl.from_dicts(good, infer_schema_length=None)
        except Exception as exc:  # mixed types in one column across rows
            raise InputFileError(f"{path}: rows do not share one type per column ({exc})") from None
        needed = [*text_columns, *([id_column] if id_column else [])]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            has = ", ".join(c for c in df.columns if c not in SOURCE_COLUMNS)
            raise InputFileError(f"{path}: no column {missing[0]!r} (it has: {has}); choose the text with "
                                 "--text-column NAME (repeatable) and the id with --id-column")
        frames.append(df)
    unreadable = pl.DataFrame(bad, schema={"source_file": pl.String, "source_line": pl.Int64, "reason": pl.String,
                                           "detail": pl.String, "raw": pl.String})
    if not frames:
        return pl.DataFrame(), unreadable
    try:
        rows = pl.concat(frames, how="diagonal_relaxed")
    except Exception as exc:
        raise InputFileError(f"the files' columns have incompatible types ({exc})") from None
    text = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in text_columns], separator="\n")
    ident = (pl.col(id_column).cast(pl.String) if id_column
             else pl.col("source_file") + ":" + pl.col("source_line").cast(pl.String))
    rows = rows.with_columns(ident.alias("_id"), text.alias("_text"))
    dupes = rows.filter(pl.col("_id").is_duplicated() | pl.col("_id").is_null())
    if dupes.height:
        r = dupes.row(0, named=True)
        raise InputFileError(f"{r['source_file']}:{r['source_line']}: id column {id_column!r} value {r['_id']!r} "
                             "is empty or not unique; drop --id-column to use file:line ids")
    return rows, unreadable


def dedup_files(paths: Sequence[Path], settings: DedupSettings, text_columns: Sequence[str] = ("text",),
                id_column: str | None = None, max_drop_fraction: float = 1.0, embedder: str = "minilm") -> FileDedup:
    """Dedup the rows of ``paths``; the earliest row (file order, then line) of a duplicate group is kept.

    ``embedder`` (for semantic dedup): minilm, minilm-static, or minilm-two-step (the static model
    flags, MiniLM decides)."""
    rows, unreadable = load_rows(paths, text_columns, id_column)
    if rows.is_empty():
        return FileDedup(rows, DedupResult(), unreadable)
    records = rows.select(pl.col("_id").alias("id"), pl.col("_text").alias("text"),
                          pl.int_range(pl.len(), dtype=pl.Int64).alias("order"))
    vectors_for = accurate_for = None
    if settings.semantic:
        two_step = embedder == "minilm-two-step"
        vectors_for = _encoder("minilm-static" if two_step else embedder)
        accurate_for = _encoder("minilm") if two_step else None
    result = dedup(records, settings, vectors_for=vectors_for, accurate_for=accurate_for)
    check_drop_fraction(result, records, max_drop_fraction, "--max-drop-fraction",
                        f"--near-threshold {settings.minhash.threshold}, "
                        f"--semantic-threshold {settings.semantic_threshold}")
    return FileDedup(rows, result, unreadable)


def _encoder(name: str) -> Callable[[pl.DataFrame], np.ndarray]:
    model = load_embedder(name)
    return lambda frame: model.encode(frame["text"].to_list())
