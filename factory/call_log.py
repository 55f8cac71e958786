"""Every model call a stage makes, as a row of the ``calls`` table (schemas/call.schema.json).

The SQLite call cache (factory/cache.py) stays the cache: it holds one answer per request, across runs.
This log is the other view, per run: which stage (and shard) asked what, what came back, whether the
cache answered it, how long the backend took, and what failed. ``StageContext.generate`` appends one
row per request; the runner (a global stage) or the shard writer (a map stage, on whichever worker ran
it) takes them and commits them with the stage's or shard's other files, so the rows become visible
together with the records they produced, and a shard re-run after a crash replaces its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from factory.backends.base import ChatRequest, Completion, params_json
from factory.records import canonical_json, frame

#: the warehouse table the rows go to
CALLS_TABLE = "calls"


@dataclass
class CallLog:
    """Rows of one stage (or one shard of it) not yet committed."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, ctx: Any, model_id: str, request: ChatRequest, completion: Completion,
            latency_s: float | None) -> None:
        """One row: ``latency_s`` is the wall time of the backend batch that answered (None: cache hit)."""
        self.rows.append({
            "run_id": ctx.run_id, "stage": ctx.stage_name, "shard": "", "call_index": len(self.rows),
            "request_hash": request.cache_key(model_id), "model": model_id,
            "messages": canonical_json(request.message_dicts()), "params": params_json(request.params),
            "seed": request.params.seed, "response": completion.text, "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "latency_s": None if latency_s is None else round(latency_s, 6), "error": completion.error,
            "cache_hit": completion.cached,
        })

    def take(self, shard: str = "") -> pl.DataFrame:
        """The rows so far as a ``calls`` frame (stamped with ``shard``), and forget them."""
        rows, self.rows = self.rows, []
        for row in rows:
            row["shard"] = shard
        return frame("call", rows)
