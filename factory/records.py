"""Record helpers: content-derived ids, canonical JSON, and polars frames shaped by schemas/."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

import schemas

_SPACE = re.compile(r"\s+")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text (and hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(*parts: Any) -> str:
    """A 16-hex-digit id derived from content, so re-running a stage reproduces the same ids."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]


def derived_seed(*parts: Any) -> int:
    """A sampling seed derived from content (run seed, record id, repeat…): the same request always
    samples the same way, so its cache key, and a resumed run, reproduce."""
    return int(content_id(*parts)[:8], 16)


def task_prompt(record: Mapping[str, Any]) -> str:
    """What a model is asked for a task (or a sample of one): the instruction, then its input if any."""
    instruction = record.get("instruction") or ""
    return f"{instruction}\n\n{record['input']}" if record.get("input") else instruction


def normalize_text(text: str) -> str:
    """Whitespace- and case-folded text, used where two spellings of one task must share an id."""
    return _SPACE.sub(" ", text).strip().lower()


def task_id(instruction: str, input_text: str = "") -> str:
    return content_id("task", normalize_text(instruction), normalize_text(input_text))


_JSON_TO_POLARS: dict[str, pl.DataType] = {
    "string": pl.String(),
    "integer": pl.Int64(),
    "number": pl.Float64(),
    "boolean": pl.Boolean(),
}


def _polars_type(prop: Mapping[str, Any]) -> pl.DataType:
    kinds = prop.get("type", "string")
    kinds = [kinds] if isinstance(kinds, str) else [k for k in kinds if k != "null"]
    kind = kinds[0] if kinds else "string"
    if kind == "array":
        return pl.List(_polars_type(prop.get("items", {})))
    if kind == "object":
        return pl.String()  # nested objects are stored as canonical JSON text
    return _JSON_TO_POLARS[kind]


def polars_schema(kind: str) -> dict[str, pl.DataType]:
    """Column name → polars dtype for a record kind, in the schema's column order."""
    return {name: _polars_type(prop) for name, prop in schemas.load(kind)["properties"].items()}


def frame(kind: str, rows: Iterable[Mapping[str, Any]] = ()) -> pl.DataFrame:
    """A DataFrame of records of one kind: schema columns first (missing ones null), extras kept after."""
    rows = list(rows)
    schema = polars_schema(kind)
    extra: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in schema:
                extra[key] = None
    if not rows:
        return pl.DataFrame(schema=schema)
    data = {name: [row.get(name) for row in rows] for name in [*schema, *extra]}
    return pl.DataFrame(data, schema_overrides=schema, strict=False)


def conform(kind: str, df: pl.DataFrame) -> pl.DataFrame:
    """Cast a frame to a kind's schema: add missing columns as nulls, cast known ones, keep extras."""
    schema = polars_schema(kind)
    exprs = [
        (pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype=dtype)).alias(name)
        for name, dtype in schema.items()
    ]
    extras = [pl.col(c) for c in df.columns if c not in schema]
    return df.select(*exprs, *extras)


def lineage(ctx: Any, *, producer: str, parent_ids: list[str] | None = None,
            template_id: str | None = None, gen_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lineage columns every record carries, filled from the stage context."""
    return {
        "run_id": ctx.run_id,
        "stage": ctx.stage_name,
        "round": ctx.round,
        "producer": producer,
        "template_id": template_id,
        "gen_params": canonical_json(dict(gen_params)) if gen_params is not None else None,
        "parent_ids": list(parent_ids or []),
    }


def reject(ctx: Any, *, record_kind: str, reason: str, detail: str, raw: str | None = None,
           record_id: str | None = None, source_file: str | None = None, source_line: int | None = None,
           related_id: str | None = None, similarity: float | None = None) -> dict[str, Any]:
    """One reject row: what was dropped, where, why, and its raw text."""
    return {
        "reject_id": content_id("reject", ctx.run_id, ctx.stage_name, record_kind, record_id, reason,
                                raw, source_file, source_line),
        "run_id": ctx.run_id,
        "stage": ctx.stage_name,
        "round": ctx.round,
        "record_kind": record_kind,
        "record_id": record_id,
        "reason": reason,
        "detail": detail,
        "raw": raw,
        "source_file": source_file,
        "source_line": source_line,
        "related_id": related_id,
        "similarity": similarity,
    }
