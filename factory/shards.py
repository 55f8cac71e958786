"""The catalog side of sharded stages: pending shards, resume at the shard, and the stage's commit.

A map stage's shards are registered one by one in ``pending_shards`` as workers finish them (so a
killed run resumes at the shard), and move into ``files`` (keyed by run, stage, table *and shard*)
together with the stage's completion row in one transaction: like any stage, a sharded stage's files
are visible to queries and later stages only once all of them are there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb

from factory.warehouse import StageStats, Warehouse, now

_PENDING_DDL = """
CREATE TABLE IF NOT EXISTS pending_shards (
    run_id VARCHAR, stage VARCHAR, shard VARCHAR, files JSON, stats JSON, created_at TIMESTAMP,
    PRIMARY KEY (run_id, stage, shard))
"""


def _prepare(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_PENDING_DDL)


def input_files(wh: Warehouse, run_id: str, stages: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """(relative path, rows) of every file earlier ``stages`` of the run registered, per table, in a fixed
    order (stage position, then path, which carries the shard key), so shard cuts are reproducible."""
    if not stages:
        return {}
    with wh.connect() as con:
        rows = con.execute(
            "SELECT f.table_name, f.path, f.rows FROM files f JOIN stages s USING (run_id, stage) "
            f"WHERE f.run_id = ? AND s.status = 'done' AND f.stage IN ({','.join('?' * len(stages))}) "
            "ORDER BY s.position, f.path", [run_id, *stages]).fetchall()
    out: dict[str, list[tuple[str, int]]] = {}
    for table, path, n in rows:
        out.setdefault(table, []).append((path, int(n)))
    return out


def pending(wh: Warehouse, run_id: str, stage: str) -> dict[str, dict[str, Any]]:
    """Shards of an unfinished stage already registered: shard key → {files, stats}."""
    with wh.connect() as con:
        _prepare(con)
        rows = con.execute("SELECT shard, files, stats FROM pending_shards WHERE run_id=? AND stage=?",
                           [run_id, stage]).fetchall()
    return {k: {"files": json.loads(f), "stats": json.loads(s)} for k, f, s in rows}


def forget_stale(wh: Warehouse, run_id: str, stage: str, keep: Sequence[str]) -> int:
    """Drop pending shards that the current plan no longer has (``batch_rows`` changed)."""
    with wh.connect() as con:
        _prepare(con)
        stale = [r[0] for r in con.execute("SELECT shard FROM pending_shards WHERE run_id=? AND stage=?",
                                           [run_id, stage]).fetchall() if r[0] not in set(keep)]
        for key in stale:
            con.execute("DELETE FROM pending_shards WHERE run_id=? AND stage=? AND shard=?", [run_id, stage, key])
    return len(stale)


def register_shard(wh: Warehouse, run_id: str, stage: str, key: str, files: list[dict[str, Any]],
                   stats: dict[str, Any]) -> None:
    """Record a finished shard (its files are already in place). Registering it twice keeps one row."""
    with wh.connect() as con:
        _prepare(con)
        con.execute("INSERT OR REPLACE INTO pending_shards VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, stage, key, json.dumps(files), json.dumps(stats, default=str), now()])


def commit_sharded_stage(wh: Warehouse, run_id: str, stage: str, stats: StageStats) -> None:
    """Move the stage's shards into ``files`` and mark it done, in one transaction."""
    with wh.connect() as con:
        _prepare(con)
        shards = con.execute("SELECT shard, files FROM pending_shards WHERE run_id=? AND stage=? ORDER BY shard",
                             [run_id, stage]).fetchall()
        created = now()
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM files WHERE run_id=? AND stage=?", [run_id, stage])
        for key, files in shards:
            for f in json.loads(files):
                con.execute("INSERT INTO files (run_id, stage, table_name, path, rows, bytes, sha256, created_at, "
                            "shard) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [run_id, stage, f["table"], f["path"], f["rows"], f["bytes"], f["sha256"], created, key])
        con.execute("DELETE FROM pending_shards WHERE run_id=? AND stage=?", [run_id, stage])
        wh.record_stage_done(con, run_id, stage, stats)
        wh._refresh_views(con)
        con.execute("COMMIT")
