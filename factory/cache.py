"""Content-addressed cache of model calls, keyed by model, messages and sampling parameters.

Two implementations of one interface (:class:`CallStore`):

- :class:`CallCache`, the default: ``cache/calls.sqlite``, the runner's per-batch checkpoint. Every
  finished batch is committed, so a run killed at any moment and started again pays only for the calls
  it had not finished. SQLite (WAL) because several processes on one machine may share it and a commit
  must survive ``kill -9``; WAL needs working locks and shared memory, which network filesystems lack.
- :class:`WarehouseCalls`, for clusters (``executor: {kind: ray, cache: warehouse}``): answers from
  the warehouse's ``calls`` table, the Parquet files every stage and shard already writes, so workers on
  any node share it through the storage they already share, with no database server and no locks. Its
  checkpoint is the shard: a worker killed mid-shard pays that shard's calls again.

The key does not mention the run or pipeline, so either cache is reused across runs and pipelines.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import polars as pl

from factory.backends.base import ChatRequest, Completion
from factory.faults import guarded_cache
from factory.records import canonical_json

_DDL = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL, text TEXT NOT NULL,
    finish_reason TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL)
"""


class CallStore(Protocol):
    """Where ``StageContext.generate`` looks up answers before calling the backend, and stores new ones."""

    def get_many(self, model_id: str, requests: Sequence[ChatRequest]) -> dict[str, Completion]: ...

    def put_many(self, model_id: str, items: Iterable[tuple[ChatRequest, Completion]]) -> None: ...

    def close(self) -> None: ...


class CallCache:
    @guarded_cache  # a damaged file or a full disk: one line naming the file (factory.faults)
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._con = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(_DDL)

    @guarded_cache
    def get_many(self, model_id: str, requests: Sequence[ChatRequest]) -> dict[str, Completion]:
        keys = [r.cache_key(model_id) for r in requests]
        found: dict[str, Completion] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._con.execute(
                f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM calls "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for key, text, finish, pt, ct in rows:
                found[key] = Completion(text, finish, pt, ct, cached=True)
        return found

    @guarded_cache
    def put_many(self, model_id: str, items: Iterable[tuple[ChatRequest, Completion]]) -> None:
        """Store a finished batch in one transaction. Failed calls are never stored (a rerun or
        ``--retry-errors`` must reach the backend again): neither ``finish_reason == "error"`` nor any
        completion carrying an error text, whatever its finish reason."""
        rows = [(req.cache_key(model_id), model_id,
                 canonical_json({"messages": req.messages, "params": req.params.model_dump()}),
                 c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, time.time())
                for req, c in items if c.finish_reason != "error" and c.error is None]
        with self._con:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._con.execute("SELECT count(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._con.close()


class WarehouseCalls:
    """Answers from the ``calls`` table's files (given by the driver, so a worker never opens the catalog).

    ``put_many`` stores nothing: a stage's or shard's calls reach the table with its other files, when
    it is committed (factory/call_log.py). Failed calls are never answers.
    """

    def __init__(self, files: Sequence[Path]):
        self.files = [Path(f) for f in files if Path(f).is_file()]

    def get_many(self, model_id: str, requests: Sequence[ChatRequest]) -> dict[str, Completion]:
        keys = sorted({r.cache_key(model_id) for r in requests})
        if not keys or not self.files:
            return {}
        rows = (pl.scan_parquet(self.files)
                .filter(pl.col("request_hash").is_in(keys) & pl.col("error").is_null()
                        & (pl.col("finish_reason") != "error"))
                .select("request_hash", "response", "finish_reason", "prompt_tokens", "completion_tokens")
                .unique("request_hash", keep="first").collect())
        return {key: Completion(text, finish, pt, ct, cached=True) for key, text, finish, pt, ct in rows.iter_rows()}

    def put_many(self, model_id: str, items: Iterable[tuple[ChatRequest, Completion]]) -> None:
        return None

    def close(self) -> None:
        return None
