"""Reading rows from JSONL, CSV and Parquet files (or folders of them), row by row with line numbers.

Shared by the seeds stage and ``factory dedup FILE``: a row that cannot be decoded or parsed comes back
with its raw text and a reason instead of stopping the read, so callers can reject it by file and line;
only a file that cannot be read at all raises :class:`InputFileError`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
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
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):  # editors on Windows add one; it is not part of the first row
        data = data[len(codecs.BOM_UTF8):]
    for line_no, raw in enumerate(data.splitlines(), start=1):
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
    """Rows by header; a row with more or fewer fields than the header is a reject, never padded or cut.

    An empty file has no rows (the caller warns); blank lines are skipped, as CSV readers do.
    """
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    lines = io.StringIO(text, newline="").readlines()  # split exactly as the csv module counts lines
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InputFileError(f"{path}: cannot read the CSV header: {exc}") from None
    prev = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a NUL byte or an unclosed quote: the rest of the file is unreadable
            raise InputFileError(f"{path}: line {prev + 1}: {exc}") from None
        line_no, raw, prev = prev + 1, "".join(lines[prev:reader.line_num]).rstrip("\r\n"), reader.line_num
        if not fields:
            continue
        if _has_surrogates(raw):
            yield line_no, None, raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), \
                "bad_encoding: not UTF-8"
        elif not any(v.strip() for v in fields):
            yield line_no, None, raw, "empty_line: blank row"
        elif len(fields) != len(header):
            yield line_no, None, raw, (f"wrong_field_count: {len(fields)} fields where the header has "
                                       f"{len(header)}")
        else:
            yield line_no, dict(zip(header, fields, strict=True)), raw, None


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

#: characters no text field should hold: C0/C1 controls and DEL, except tab, newline and carriage return
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: default cap on one text field (a seed instruction or answer is a paragraph, not a book)
MAX_CHARS = 20_000


def text_problem(field: str, value: str, max_chars: int = MAX_CHARS) -> str | None:
    """Why a text field cannot be used (``reason: detail``), or None. Control characters are refused,
    not stripped: a NUL or escape code in a prompt is a sign of a broken export, and the raw row is kept."""
    if len(value) > max_chars:
        return f"too_long: field '{field}' has {len(value):,} characters (max_chars is {max_chars:,})"
    bad = CONTROL_CHARS.search(value)
    if bad:
        return (f"control_characters: field '{field}' holds U+{ord(bad.group()):04X} at character {bad.start() + 1} "
                "(of the control characters only tab, newline and CR are allowed)")
    return None


def read_rows(path: Path) -> list[Row]:
    """Every row of one file, by its suffix."""
    try:
        return list(READERS[SUFFIXES[path.suffix.lower()]](path))
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
