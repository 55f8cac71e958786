"""The SQL front: every table and record in the warehouse, queried read-only with DuckDB.

The connection handed to user SQL is sandboxed with DuckDB's own switches, set after the views are
created and then locked (``lock_configuration``) so the query itself cannot undo them:

- ``enable_external_access=false`` with ``allowed_directories=[<warehouse root>]``: table functions
  (``read_csv``, ``read_parquet``, ``glob``…), ``COPY``, ``ATTACH`` and ``EXPORT`` cannot touch any path
  outside the warehouse, and no extension can be installed or loaded (autoinstall/autoload are off too);
- ``memory_limit`` and ``max_temp_directory_size=0`` cap memory and forbid spilling to disk;
- only ``SELECT``-type statements (``SELECT``, ``WITH``, ``FROM``, ``DESCRIBE``, ``SUMMARIZE``, ``SHOW``,
  ``VALUES``) and ``EXPLAIN [ANALYZE]`` of those are run, one statement at a time: a statement-type check
  before execution refuses ``COPY``, ``CREATE``, ``INSERT``, ``SET``, ``PRAGMA``, ``CALL``… even inside
  the warehouse;
- a timer thread calls ``con.interrupt()`` when the time limit passes; the result is fetched in Arrow
  batches under the same deadline (:func:`stream`), so fetching, formatting and writing it are limited too
  (``factory/sql_output.py``), and :func:`query` refuses a result larger than the memory limit.

Every failure comes back as a :class:`QueryError` whose message is one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from factory.integrity import usable
from factory.releases.views import add_sql_views as add_release_views
from factory.training.registry import add_sql_views as add_model_views
from factory.warehouse import ID_COLUMNS, RECORD_TABLES, Warehouse, fetch_polars, kept_sql, select_files

CATALOG_TABLES = ("runs", "stages", "files")
#: defaults for user queries; override per call or with these environment variables
DEFAULT_TIMEOUT_S = float(os.environ.get("FACTORY_SQL_TIMEOUT_S", "60"))
DEFAULT_MEMORY_LIMIT = os.environ.get("FACTORY_SQL_MEMORY_LIMIT", "4GB")
ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class QueryError(RuntimeError):
    """A query that failed or was refused; the message is one line a user can act on."""


def _lock_down(con: duckdb.DuckDBPyConnection, root: str, memory_limit: str) -> None:
    """Confine the connection to the warehouse's files and freeze its settings."""
    root = root.rstrip("/") + "/"
    con.execute("SET allowed_directories = ?", [[root]])
    for stmt in ("SET enable_external_access = false",
                 "SET autoinstall_known_extensions = false",
                 "SET autoload_known_extensions = false",
                 "SET max_temp_directory_size = '0GB'"):
        con.execute(stmt)
    con.execute("SET memory_limit = ?", [memory_limit])
    con.execute("SET lock_configuration = true")


def open_readonly(wh: Warehouse, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views over the warehouse's catalog tables and record files, sandboxed."""
    con = duckdb.connect(":memory:")
    with wh.connect(read_only=True) as cat:
        files = cat.execute("SELECT table_name, path, bytes FROM files ORDER BY created_at").fetchall()
        catalog = {t: fetch_polars(cat, f"SELECT * FROM {t}") for t in CATALOG_TABLES}
    for name, df in catalog.items():
        con.register(f"_{name}", df)
        con.execute(f'CREATE TEMP VIEW "{name}" AS SELECT * FROM "_{name}"')
    by_table: dict[str, list[str]] = {t: [] for t in RECORD_TABLES}
    for table, path in usable(wh, files):  # a damaged or missing file is left out, with a warning
        by_table.setdefault(table, []).append(str(wh.root / path))
    for table, paths in by_table.items():
        con.execute(f'CREATE TEMP VIEW "{table}" AS {select_files(table, paths)}')
    for table, id_col in ID_COLUMNS.items():
        con.execute(f'CREATE TEMP VIEW "{table}_kept" AS {kept_sql(table, id_col)}')
    add_release_views(con, wh)  # releases, release_sft, release_preference (before lockdown)
    add_model_views(con, wh)  # models (trained by `factory train`)
    _lock_down(con, str(wh.root), memory_limit or DEFAULT_MEMORY_LIMIT)
    return con


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one read-only statement (defence in depth behind the locked settings)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_one_line(exc)) from None
    if not statements:
        raise QueryError("empty query: write one SELECT statement")
    if len(statements) > 1:
        raise QueryError(f"{len(statements)} statements given: run one SELECT statement at a time")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE runs its statement: that must be a SELECT too
        kind = _explained_type(con, sql)
    if kind not in ALLOWED_STATEMENTS or kind == duckdb.StatementType.EXPLAIN:
        name = getattr(kind, "name", str(kind))
        raise QueryError(f"refused: {name} statements are not allowed; the warehouse is read-only "
                         "(use SELECT, WITH, DESCRIBE, SUMMARIZE or EXPLAIN SELECT)")


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\([^)]*\)\s*)?", re.I)


def _explained_type(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The type of the statement inside ``EXPLAIN [ANALYZE] …`` (anything unclear counts as not allowed)."""
    bare = _COMMENTS.sub(" ", sql)
    match = _EXPLAIN.match(bare)
    if not match:
        return duckdb.StatementType.EXPLAIN
    try:
        inner = con.extract_statements(bare[match.end():])
    except duckdb.Error:
        return duckdb.StatementType.EXPLAIN
    return inner[0].type if len(inner) == 1 else duckdb.StatementType.EXPLAIN


def _interrupt(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # already closed: the query finished as the timer fired
        con.interrupt()


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def query(wh: Warehouse, sql: str, params: list[Any] | None = None, *, timeout_s: float | None = None,
          memory_limit: str | None = None) -> pl.DataFrame:
    """Run one read-only statement over the warehouse, within a time and memory limit; returns polars.

    The limits cover fetching too: the result arrives in Arrow batches under the same timer, and one
    larger than ``memory_limit`` is refused instead of being gathered (DuckDB's own limit stops at its
    operators, not at the copy handed to Python)."""
    cap = parse_bytes(memory_limit or DEFAULT_MEMORY_LIMIT)
    with stream(wh, sql, params, timeout_s=timeout_s, memory_limit=memory_limit) as result:
        batches: list[pa.RecordBatch] = []
        held = 0
        for batch in result.batches:
            held += batch.nbytes
            if held > cap:
                raise QueryError(f"the result is larger than the {memory_limit or DEFAULT_MEMORY_LIMIT} memory limit: "
                                 "add a LIMIT or aggregate (set FACTORY_SQL_MEMORY_LIMIT to allow more)")
            batches.append(batch)
        return pl.from_arrow(pa.Table.from_batches(batches, schema=result.schema), rechunk=False)


#: rows per Arrow batch fetched: small enough to format and write one at a time, big enough to be fast
BATCH_ROWS = 10_000
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(size: str) -> int:
    """``"4GB"`` → 4,000,000,000 (DuckDB's reading: GB = 1000³, GiB = 1024³)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", size)
    if not m or m[2].upper() not in _UNITS:
        raise QueryError(f"memory or size limit {size!r} is not a size like 4GB, 512MB or 2GiB")
    return int(float(m[1]) * _UNITS[m[2].upper()])


@dataclass
class Result:
    """A running query's result: its schema and its batches, fetched lazily under the query's deadline."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    deadline: float | None  # time.monotonic() value after which formatting and writing stop too
    limit_s: float

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise QueryError(_time_message(self.limit_s))


def _time_message(limit: float) -> str:
    return f"query stopped after the {limit:g}s time limit (set FACTORY_SQL_TIMEOUT_S to allow more)"


@contextlib.contextmanager
def stream(wh: Warehouse, sql: str, params: list[Any] | None = None, *, timeout_s: float | None = None,
           memory_limit: str | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[Result]:
    """Run one read-only statement and hand its result over batch by batch, all of it under the time limit.

    The timer interrupts DuckDB while it computes or fetches, and ``Result.check_time`` (called on every
    batch, and by writers as they format) stops the work done on the batches in Python.
    """
    limit = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    con = open_readonly(wh, memory_limit)
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        _interrupt(con)

    timer = threading.Timer(limit, interrupt) if limit and limit > 0 else None
    deadline = time.monotonic() + limit if timer else None

    def batches(reader: pa.RecordBatchReader | None) -> Iterator[pa.RecordBatch]:
        try:
            for batch in reader or ():
                if deadline is not None and time.monotonic() > deadline:
                    raise QueryError(_time_message(limit))
                yield batch
        except (duckdb.Error, pa.ArrowException, OSError) as exc:  # an interrupt mid-stream comes as OSError
            if fired.is_set() or isinstance(exc, duckdb.InterruptException):
                raise QueryError(_time_message(limit)) from None
            raise QueryError(_one_line(exc)) from None

    try:
        check_statement(con, sql)
        if timer:
            timer.start()
        try:
            relation = con.sql(sql, params=params or None)
            reader = relation.to_arrow_reader(batch_rows) if relation is not None else None
        except duckdb.InterruptException:
            raise QueryError(_time_message(limit)) from None
        except duckdb.Error as exc:
            raise QueryError(_one_line(exc)) from None
        schema = reader.schema if reader is not None else pa.schema([])
        yield Result(schema, batches(reader), deadline, limit)
    finally:
        if timer:
            timer.cancel()
        con.close()
