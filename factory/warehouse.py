"""The warehouse: Parquet files under run folders, registered in a DuckDB catalog.

Layout::

    <root>/catalog.duckdb                      runs, stages, files (+ views over every record table)
    <root>/runs/<run_id>/<stage>/<table>-<sha256[:16]>.parquet   (named by content: never reused)
    <root>/cache/calls.sqlite                  content-addressed model-call cache (factory.cache)

A file is written under a temporary name and renamed into place, then registered in one catalog
transaction together with its stage's completion row, so a half-written file is never registered and
a stage is either done (all its files registered) or not done at all. Damaged files are left out of
reads and views (factory.integrity).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from factory.faults import CatalogBusy, CatalogDamaged, catalog_open_error, is_damage, writing
from factory.host import pid_alive, sha256_file
from factory.records import conform, polars_schema

#: record tables and the schema kind of their rows; other tables (features, scores…) are free-form
RECORD_TABLES: dict[str, str] = {
    "tasks": "task",
    "samples": "sample",
    "judgments": "judgment",
    "pairs": "pair",
    "rejects": "reject",
    "calls": "call",  # every model call of a stage (factory/call_log.py); its view exists before the first call
}
#: the id column of each record kind, used to drop rejected records from later stages' inputs
ID_COLUMNS: dict[str, str] = {"tasks": "task_id", "samples": "sample_id", "judgments": "judgment_id",
                              "pairs": "pair_id"}
RECORD_KIND_OF_TABLE: dict[str, str] = {"tasks": "task", "samples": "sample", "judgments": "judgment",
                                        "pairs": "pair"}

_CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, pipeline VARCHAR, config_hash VARCHAR, config JSON,
    status VARCHAR, round INTEGER, started_at TIMESTAMP, finished_at TIMESTAMP, error VARCHAR,
    host VARCHAR, pid INTEGER);
CREATE TABLE IF NOT EXISTS stages (
    run_id VARCHAR, stage VARCHAR, kind VARCHAR, position INTEGER, status VARCHAR,
    records_in BIGINT, records_out BIGINT, records_rejected BIGINT,
    calls BIGINT, cached_calls BIGINT, prompt_tokens BIGINT, completion_tokens BIGINT,
    seconds DOUBLE, metrics JSON, started_at TIMESTAMP, finished_at TIMESTAMP,
    PRIMARY KEY (run_id, stage));
CREATE TABLE IF NOT EXISTS files (
    run_id VARCHAR, stage VARCHAR, table_name VARCHAR, path VARCHAR, rows BIGINT, bytes BIGINT,
    sha256 VARCHAR, created_at TIMESTAMP, shard VARCHAR DEFAULT '',  -- shard: a map stage's batch (factory/shards.py)
    PRIMARY KEY (run_id, stage, table_name, shard));
-- append-only migrations for catalogs made by earlier versions
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
"""
_PREPARED: set[Path] = set()  # catalogs whose tables exist and are migrated (once per process)
_PREPARE_LOCK = threading.Lock()


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def fetch_polars(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """Run a statement and return its result as polars (works across duckdb 1.x and 2.x)."""
    relation = con.sql(sql, params=params or None)
    return relation.pl() if relation is not None else pl.DataFrame()


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` so that readers see either the old file, the new one, or none."""
    _write_then_move(df, path, lambda _tmp: path)


def _write_then_move(df: pl.DataFrame, path: Path, final: Callable[[Path], Path]) -> Path:
    """Write to ``.NAME.tmp-PID`` beside ``path``, fsync, move to ``final(tmp)``; a failure leaves no
    temporary behind (one left by ``kill -9`` is swept by the next run: ``integrity.sweep_temporaries``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path, df.estimated_size()):  # ENOSPC: one line naming the file and the size (factory.faults)
            df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        target = final(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_once_parquet(df: pl.DataFrame, folder: Path, stem: str) -> tuple[Path, str]:
    """Write ``df`` as ``folder/<stem>-<sha256[:16]>.parquet`` and return the path and its sha256.

    The name is derived from the bytes, so a path is never reused for other contents: a file that a
    reader (a view, a release's lineage) found is never replaced under it, and writing the same records
    again lands on the same name.
    """
    digests: list[str] = []

    def named_by_content(tmp: Path) -> Path:
        digests.append(sha256_file(tmp))
        return folder / f"{stem}-{digests[0][:16]}.parquet"  # same name, same bytes

    return _write_then_move(df, folder / f"{stem}.parquet", named_by_content), digests[0]


@dataclass(frozen=True)
class StageStats:
    kind: str
    position: int
    records_in: int
    records_out: int
    records_rejected: int
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    metrics: str = "{}"
    started_at: datetime | None = None


def migrate_files_table(con: duckdb.DuckDBPyConnection) -> None:
    """Give a catalog made before shards existed the ``shard`` column and the wider primary key.

    DuckDB cannot change a primary key in place, so the table is copied; old rows get shard ''.
    """
    has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'files' "
                      "AND column_name = 'shard'").fetchone()[0]
    if has:
        return
    con.execute("BEGIN TRANSACTION")
    con.execute("ALTER TABLE files RENAME TO files_before_shards")
    con.execute("CREATE TABLE files (run_id VARCHAR, stage VARCHAR, table_name VARCHAR, path VARCHAR, rows BIGINT, "
                "bytes BIGINT, sha256 VARCHAR, created_at TIMESTAMP, shard VARCHAR DEFAULT '', "
                "PRIMARY KEY (run_id, stage, table_name, shard))")
    con.execute("INSERT INTO files SELECT run_id, stage, table_name, path, rows, bytes, sha256, created_at, '' "
                "FROM files_before_shards")
    con.execute("DROP TABLE files_before_shards")
    con.execute("COMMIT")


class Warehouse:
    """A folder of Parquet files and the DuckDB catalog that indexes them."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.catalog_path = self.root / "catalog.duckdb"

    # -- connections -------------------------------------------------------------------------------

    @contextmanager
    def connect(self, read_only: bool = False, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived catalog connection; waits (``wait_s``, default $FACTORY_CATALOG_WAIT_S or 30 s)
        while another process holds the write lock, then raises :class:`CatalogBusy`."""
        if wait_s is None:
            wait_s = float(os.environ.get("FACTORY_CATALOG_WAIT_S", "30"))
        if read_only and not self.catalog_path.exists():
            self.init()
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                con = duckdb.connect(str(self.catalog_path), read_only=read_only)
                break
            except duckdb.Error as exc:
                if "could not set lock" not in str(exc).lower():  # not busy ("block" has "lock" in it): damaged…
                    raise catalog_open_error(self.catalog_path, exc) from exc
                if time.monotonic() > deadline:  # lock held by another process
                    raise CatalogBusy(f"catalog {self.catalog_path} is busy: {exc}") from exc
                time.sleep(0.1)
        try:
            if not read_only and self.catalog_path not in _PREPARED:
                with _PREPARE_LOCK:
                    if self.catalog_path not in _PREPARED:
                        con.execute(_CATALOG_DDL)
                        migrate_files_table(con)  # catalogs from before shards: add the shard key
                        _PREPARED.add(self.catalog_path)
            yield con
        except duckdb.Error as exc:  # a damaged block found while reading: name the file and what to do
            if is_damage(exc, self.catalog_path):
                raise CatalogDamaged(self.catalog_path, exc) from exc
            raise
        finally:
            con.close()

    def init(self) -> None:
        with self.connect():
            pass

    # -- runs and stages ---------------------------------------------------------------------------

    def begin_run(self, run_id: str, pipeline: str, config_json: str, config_hash: str, round_: int) -> None:
        with self.connect() as con:
            row = con.execute("SELECT config_hash FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row and row[0] != config_hash:
                raise ValueError(
                    f"run {run_id!r} already exists with a different configuration (hash {row[0][:12]} vs "
                    f"{config_hash[:12]}); choose another --run-id or remove the old run")
            if row:
                con.execute("UPDATE runs SET status='running', finished_at=NULL, error=NULL, host=?, pid=? "
                            "WHERE run_id=?", [socket.gethostname(), os.getpid(), run_id])
            else:
                con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, 'running', ?, ?, NULL, NULL, ?, ?)",
                            [run_id, pipeline, config_hash, config_json, round_, now(), socket.gethostname(),
                             os.getpid()])

    def mark_dead_runs(self) -> None:
        """Runs still 'running' whose process on this host is gone were killed: say so."""
        host = socket.gethostname()
        with self.connect() as con:
            rows = con.execute("SELECT run_id, pid FROM runs WHERE status='running' AND host=?", [host]).fetchall()
            for run_id, pid in rows:
                if pid is not None and not pid_alive(pid):
                    con.execute("UPDATE runs SET status='interrupted', error=? WHERE run_id=?",
                                [f"process {pid} ended without finishing; run it again to resume", run_id])

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        with self.connect() as con:
            con.execute("UPDATE runs SET status=?, finished_at=?, error=? WHERE run_id=?",
                        [status, now(), error, run_id])

    def done_stages(self, run_id: str) -> set[str]:
        with self.connect() as con:
            rows = con.execute("SELECT stage FROM stages WHERE run_id=? AND status='done'", [run_id]).fetchall()
        return {r[0] for r in rows}

    @staticmethod
    def record_stage_done(con: duckdb.DuckDBPyConnection, run_id: str, stage: str, stats: StageStats) -> None:
        """The stage's one ``done`` row (inside the caller's transaction, with its files)."""
        con.execute("DELETE FROM stages WHERE run_id=? AND stage=?", [run_id, stage])
        con.execute(
            "INSERT INTO stages (run_id, stage, kind, position, status, records_in, records_out, records_rejected, "
            "calls, cached_calls, prompt_tokens, completion_tokens, seconds, metrics, started_at, finished_at) "
            "VALUES (?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, stage, stats.kind, stats.position, stats.records_in, stats.records_out,
             stats.records_rejected, stats.calls, stats.cached_calls, stats.prompt_tokens,
             stats.completion_tokens, stats.seconds, stats.metrics, stats.started_at or now(), now()])

    def commit_stage(self, run_id: str, stage: str, tables: Mapping[str, pl.DataFrame],
                     stats: StageStats) -> dict[str, Path]:
        """Write a stage's tables atomically, then register them and mark the stage done in one transaction."""
        written: dict[str, tuple[Path, int, int, str]] = {}
        for table, df in tables.items():
            if table in RECORD_TABLES:
                df = conform(RECORD_TABLES[table], df)
            path, digest = write_once_parquet(df, self.root / "runs" / run_id / stage, table)
            written[table] = (path, df.height, path.stat().st_size, digest)
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            before = [r[0] for r in con.execute("SELECT path FROM files WHERE run_id=? AND stage=?",
                                                [run_id, stage]).fetchall()]
            con.execute("DELETE FROM files WHERE run_id=? AND stage=?", [run_id, stage])
            for table, (path, rows, size, digest) in written.items():
                con.execute("INSERT INTO files (run_id, stage, table_name, path, rows, bytes, sha256, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [run_id, stage, table, str(path.relative_to(self.root)), rows, size, digest, now()])
            self.record_stage_done(con, run_id, stage, stats)
            self._refresh_views(con)
            con.execute("COMMIT")
        kept = {w[0] for w in written.values()}
        for rel in before:  # a stage made again (repair, --retry-errors): the files it replaced go
            if self.root / rel not in kept:
                (self.root / rel).unlink(missing_ok=True)
        return {t: w[0] for t, w in written.items()}

    # -- reading -----------------------------------------------------------------------------------

    def files(self, table: str | None = None, run_id: str | None = None,
              stages: list[str] | None = None) -> list[Path]:
        """Registered files, oldest first, optionally for one table / run / set of stages; a damaged or
        missing file is left out with a warning (``factory.integrity``)."""
        from factory.integrity import usable

        if not self.catalog_path.exists():
            return []
        sql = "SELECT f.table_name, f.path, f.bytes FROM files f LEFT JOIN stages s USING (run_id, stage) WHERE true"
        args: list[Any] = []
        if table is not None:
            sql += " AND f.table_name = ?"
            args.append(table)
        if run_id is not None:
            sql += " AND f.run_id = ?"
            args.append(run_id)
        if stages is not None:
            sql += f" AND f.stage IN ({','.join('?' * len(stages))})" if stages else " AND false"
            args.extend(stages)
        sql += " ORDER BY f.created_at, s.position, f.path"  # path: a sharded stage's shards in order
        with self.connect(read_only=True) as con:
            rows = con.execute(sql, args).fetchall()
        return [self.root / path for _, path in usable(self, rows)]

    def read(self, table: str, run_id: str | None = None, stages: list[str] | None = None) -> pl.DataFrame:
        """All registered rows of ``table`` (across runs unless ``run_id`` is given) as one frame."""
        paths = self.files(table, run_id, stages)
        if not paths:
            kind = RECORD_TABLES.get(table)
            return pl.DataFrame(schema=polars_schema(kind)) if kind else pl.DataFrame()
        frames = [pl.read_parquet(p) for p in paths]
        return pl.concat(frames, how="diagonal_relaxed")

    def kept(self, table: str, run_id: str | None = None, stages: list[str] | None = None,
             ignore_reasons: Iterable[str] = ()) -> pl.DataFrame:
        """Records of ``table`` that no stage of their own run rejected (the ``*_kept`` views, in Python).

        ``run_id`` / ``stages`` narrow both the records and the rejects considered; rejects whose reason
        is in ``ignore_reasons`` do not count. Tables without record ids are returned as they are.
        """
        df = self.read(table, run_id, stages)
        if table not in ID_COLUMNS or df.is_empty():
            return df
        return without_rejected(df, table, self.read("rejects", run_id, stages), ignore_reasons)

    def table_names(self) -> list[str]:
        if not self.catalog_path.exists():
            return list(RECORD_TABLES)
        with self.connect(read_only=True) as con:
            found = [r[0] for r in con.execute("SELECT DISTINCT table_name FROM files").fetchall()]
        return sorted(set(RECORD_TABLES) | set(found))

    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run read-only SQL over every table and record in the warehouse; returns a polars frame."""
        from factory.sql import query

        return query(self, sql, params)

    # -- views -------------------------------------------------------------------------------------

    def _refresh_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """Persisted views, for people who open catalog.duckdb with the plain duckdb CLI."""
        from factory.integrity import usable

        tables = {r[0]: [] for r in con.execute("SELECT DISTINCT table_name FROM files").fetchall()}
        rows = con.execute("SELECT table_name, path, bytes FROM files ORDER BY created_at").fetchall()
        for table, path in usable(self, rows):  # a damaged file would make the whole view fail
            tables[table].append(str(self.root / path))
        for table in set(RECORD_TABLES) | set(tables):
            con.execute(f'CREATE OR REPLACE VIEW "{table}" AS {select_files(table, tables.get(table, []))}')
        for table, id_col in ID_COLUMNS.items():
            con.execute(f'CREATE OR REPLACE VIEW "{table}_kept" AS {kept_sql(table, id_col)}')


def _duck_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return f"{_duck_type(dtype.inner)}[]"
    return {pl.String: "VARCHAR", pl.Int64: "BIGINT", pl.Float64: "DOUBLE", pl.Boolean: "BOOLEAN"}[type(dtype)]


def empty_select(table: str) -> str:
    kind = RECORD_TABLES.get(table)
    if kind is None:
        return "SELECT NULL AS none WHERE false"
    cols = ", ".join(f'NULL::{_duck_type(t)} AS "{c}"' for c, t in polars_schema(kind).items())
    return f"SELECT {cols} WHERE false"


def select_files(table: str, paths: list[str]) -> str:
    if not paths:
        return empty_select(table)
    quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"SELECT * FROM read_parquet([{quoted}], union_by_name = true)"


def without_rejected(df: pl.DataFrame, table: str, rejects: pl.DataFrame,
                     ignore_reasons: Iterable[str] = ()) -> pl.DataFrame:
    """``df`` (rows of a record table) less the records that a reject of their own run names."""
    id_col = ID_COLUMNS.get(table)
    if id_col is None or df.is_empty() or rejects.is_empty():
        return df
    dropped = rejects.filter((pl.col("record_kind") == RECORD_KIND_OF_TABLE[table])
                             & pl.col("record_id").is_not_null()
                             & ~pl.col("reason").is_in(list(ignore_reasons)))
    return df.join(dropped.select("run_id", pl.col("record_id").alias(id_col)), on=["run_id", id_col],
                   how="anti") if dropped.height else df


def kept_sql(table: str, id_col: str) -> str:
    """Records of ``table`` that no stage of their own run rejected."""
    return (f'SELECT t.* FROM "{table}" t WHERE NOT EXISTS (SELECT 1 FROM rejects r '
            f"WHERE r.run_id = t.run_id AND r.record_id = t.{id_col} AND r.record_kind = "
            f"'{RECORD_KIND_OF_TABLE[table]}')")

