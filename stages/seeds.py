"""Seed tasks from JSONL, CSV, Parquet or a folder of them, validated against the task schema.

Bad rows (missing instruction, wrong types, undecodable bytes, empty lines, duplicates) become rejects
naming file, line and reason, and the run goes on; a file that cannot be read at all stops the run.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import polars as pl
from pydantic import Field

import schemas
from factory.context import StageContext
from factory.records import frame, lineage, reject, task_id
from factory.stage import StageConfig, StageOutput, register

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class SeedError(RuntimeError):
    """A seed file that cannot be read at all."""


class SeedsConfig(StageConfig):
    kind: Literal["seeds"] = "seeds"
    paths: list[Path] = Field(min_length=1, description="files or folders of .jsonl/.csv/.parquet")
    fields: dict[str, str] = Field(
        default_factory=lambda: {"instruction": "instruction", "input": "input", "output": "output",
                                 "category": "category"},
        description="task field → column name in the seed files")
    default_category: str = "general"

    produces = ("tasks",)


def expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise SeedError(f"{path}: folder holds no .jsonl, .csv or .parquet seed files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise SeedError(f"{path}: unknown seed format {path.suffix!r} (use .jsonl, .csv or .parquet)")
            files.append(path)
        else:
            raise SeedError(f"{path}: no such seed file or folder")
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
        raise SeedError(f"{path}: CSV file has no header row")
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
        raise SeedError(f"{path}: cannot read Parquet: {exc}") from None
    for i, row in enumerate(df.iter_rows(named=True), start=1):
        yield i, row, json.dumps(row, ensure_ascii=False, default=str), None


READERS = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet}


def to_task(row: dict[str, Any], cfg: SeedsConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Map a raw row onto task fields; (task fields, None) or (None, 'reason: detail')."""
    get = {field: row.get(col) for field, col in cfg.fields.items()}
    instruction = get.get("instruction")
    if instruction is None or (isinstance(instruction, str) and not instruction.strip()):
        return None, f"missing_field: field '{cfg.fields['instruction']}' (instruction) is missing or empty"
    for field in ("instruction", "input", "output", "category"):
        value = get.get(field)
        if value is not None and not isinstance(value, str):
            return None, (f"wrong_type: field '{cfg.fields.get(field, field)}' ({field}) must be a string, "
                          f"got {type(value).__name__}")
    return {"instruction": instruction.strip(), "input": (get.get("input") or "").strip(),
            "gold_answer": (get.get("output") or "").strip() or None,
            "category": (get.get("category") or "").strip() or cfg.default_category}, None


@register(SeedsConfig)
def run(ctx: StageContext, cfg: SeedsConfig) -> StageOutput:
    validator = jsonschema.Draft202012Validator(schemas.load("task"))
    tasks: dict[str, dict[str, Any]] = {}
    rejects: list[dict[str, Any]] = []
    seen_at: dict[str, str] = {}
    rows_in = 0
    for path in expand(cfg.paths):
        try:
            rows = list(READERS[SUFFIXES[path.suffix.lower()]](path))
        except OSError as exc:
            raise SeedError(f"{path}: cannot read: {exc.strerror or exc}") from None
        for line, row, raw, error in rows:
            rows_in += 1
            where = {"source_file": str(path), "source_line": line, "raw": raw}
            if error is None and row is not None:
                fields, error = to_task(row, cfg)
            if error is not None:
                reason, detail = error.split(": ", 1)
                rejects.append(reject(ctx, record_kind="seed_row", reason=reason,
                                      detail=f"{path}:{line}: {detail}", **where))
                continue
            tid = task_id(fields["instruction"], fields["input"])
            if tid in tasks:
                rejects.append(reject(ctx, record_kind="seed_row", reason="duplicate", record_id=tid,
                                      related_id=tid, similarity=1.0,
                                      detail=f"{path}:{line}: same task as {seen_at[tid]}", **where))
                continue
            task = {"task_id": tid, **fields, "source": "seed", "op": "seed",
                    **lineage(ctx, producer="human")}
            problems = [f"{'.'.join(map(str, e.path)) or '(row)'}: {e.message}"
                        for e in validator.iter_errors(task)]
            if problems:
                rejects.append(reject(ctx, record_kind="seed_row", reason="schema",
                                      detail=f"{path}:{line}: {'; '.join(problems)}", **where))
                continue
            tasks[tid] = task
            seen_at[tid] = f"{path}:{line}"
    ctx.log(f"{len(tasks)} seed tasks from {rows_in} rows, {len(rejects)} rejected")
    return StageOutput(tables={"tasks": frame("task", tasks.values())}, rejects=rejects, records_in=rows_in,
                       metrics={"categories": dict(sorted(Counter(t["category"] for t in tasks.values()).items()))})
