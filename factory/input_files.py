"""Reading rows from JSONL, CSV and Parquet files (or folders of them), row by row with line numbers.

Shared by the seeds stage and ``factory dedup FILE``: a row that cannot be decoded or parsed comes back
with its raw text and a reason instead of stopping the read, so callers can reject it by file and line;
only a file that cannot be read at all raises :class:`InputFileError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl


class InputFileError(RuntimeError):
    """A file that cannot be read at all (the message names it)."""


SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise InputFileError(f"{path}: folder holds no .jsonl, .csv or .parquet files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise InputFileError(f"{path}: unknown format {path.suffix!r} (use .jsonl, .csv or .parquet)")
            files.append(path)
        else:
            raise InputFileError(f"{path}: no such file or folder")
    return files


Row = tuple[int, dict[str, Any] | None, str, str | None]  # (line, row or None, raw text, error)


def read_jsonl(path: Path) -> Iterator[Row]:
    for line_no, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, None, raw.decode("utf-8", "replace"), f"bad_encoding: not UTF-8 at byte {exc.start}"
            continue
        if not text.strip():
            yield line_no, None, text, "empty_line: blank line"
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line_no, None, text, f"bad_json: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(row, dict):
            yield line_no, None, text, f"bad_json: expected an object, got {type(row).__name__}"
            continue
        yield line_no, row, text, None


def read_csv(path: Path) -> Iterator[Row]:
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise InputFileError(f"{path}: CSV file has no header row")
    prev = reader.line_num
    for row in reader:
        line_no = prev + 1
        prev = reader.line_num
        raw = json.dumps(row, ensure_ascii=False, default=str)
        values = [v for v in row.values() if isinstance(v, str)]
        if any(_has_surrogates(v) for v in values):
            yield line_no, None, raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), \
                "bad_encoding: not UTF-8"
        elif not any(v.strip() for v in values):
            yield line_no, None, raw, "empty_line: blank row"
        else:
            yield line_no, row, raw, None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_parquet(path: Path) -> Iterator[Row]:
    try:
        df = pl.read_parquet(path)
    except Exception as exc:
        raise InputFileError(f"{path}: cannot read Parquet: {exc}") from None
    for i, row in enumerate(df.iter_rows(named=True), start=1):
        yield i, row, json.dumps(row, ensure_ascii=False, default=str), None


READERS = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet}




def read_rows(path: Path) -> list[Row]:
    """Every row of one file, by its suffix."""
    try:
        return list(READERS[SUFFIXES[path.suffix.lower()]](path))
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
