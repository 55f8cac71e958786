"""Seed tasks from JSONL, CSV, Parquet or a folder of them, validated against the task schema.

Bad rows (missing instruction, wrong types, undecodable bytes, empty lines, duplicates, a field over
``max_chars``, control characters, a CSV row with the wrong number of fields) become rejects naming file,
line and reason, and the run goes on; a file that cannot be read at all stops the run. An empty file, and
a stage that ends with no task at all, print a warning.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import Field

import schemas
from factory.context import StageContext
from factory.input_files import MAX_CHARS, InputFileError, expand, read_rows, text_problem
from factory.records import frame, lineage, reject, task_id
from factory.stage import StageConfig, StageOutput, register


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
    max_chars: int = Field(MAX_CHARS, gt=0, description="longest text field accepted; longer rows are rejects")

    produces = ("tasks",)


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
        problem = text_problem(cfg.fields.get(field, field), value, cfg.max_chars) if value else None
        if problem:
            return None, problem
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
    try:
        files = [(path, read_rows(path)) for path in expand(cfg.paths)]
    except InputFileError as exc:
        raise SeedError(str(exc)) from None
    warnings = [f"{path} is empty: no rows read" for path, rows in files if not rows]
    for path, rows in files:
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
    if not tasks:
        warnings.append(f"0 tasks from {rows_in} rows in {len(files)} file(s)"
                        + (f" ({len(rejects)} rejected: see the rejects table)" if rejects else "")
                        + "; later stages have nothing to work on")
    for message in warnings:
        ctx.warn(message)
    metrics = {"categories": dict(sorted(Counter(t["category"] for t in tasks.values()).items()))}
    if warnings:
        metrics["warnings"] = warnings
    return StageOutput(tables={"tasks": frame("task", tasks.values())}, rejects=rejects, records_in=rows_in,
                       metrics=metrics)
