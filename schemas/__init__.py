"""Data contracts: one JSON Schema per record kind, shared by the factory and its consumers."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).parent
KINDS = ("task", "sample", "judgment", "pair", "reject", "release_manifest")
#: warehouse-only tables (never released, so not in release manifests' schema_versions)
WAREHOUSE_KINDS = ("call",)


@cache
def load(kind: str) -> dict:
    """The JSON Schema for a record kind (e.g. ``"task"``)."""
    if kind not in KINDS + WAREHOUSE_KINDS:
        raise KeyError(f"unknown record kind {kind!r}; known: {', '.join(KINDS + WAREHOUSE_KINDS)}")
    return json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())


def versions() -> dict[str, str]:
    """Schema version of every record kind, for release manifests."""
    return {kind: load(kind)["version"] for kind in KINDS}
