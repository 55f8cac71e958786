"""The SQL front: every table and record in the warehouse, queried read-only with DuckDB."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl

from factory.warehouse import ID_COLUMNS, RECORD_TABLES, Warehouse, kept_sql, select_files

CATALOG_TABLES = ("runs", "stages", "files")


def fetch_polars(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """Run a statement and return its result as polars (works across duckdb 1.x and 2.x)."""
    result = con.execute(sql, params or [])
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return pl.from_arrow(fetch())


class QueryError(RuntimeError):
    """A query that failed; the message is one line a user can act on."""


def open_readonly(wh: Warehouse) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views over the warehouse's catalog tables and record files."""
    con = duckdb.connect(":memory:")
    wh.init() if not wh.catalog_path.exists() else None
    with wh.connect(read_only=True) as cat:
        files = cat.execute("SELECT table_name, path FROM files ORDER BY created_at").fetchall()
        catalog = {t: fetch_polars(cat, f"SELECT * FROM {t}") for t in CATALOG_TABLES}
    for name, df in catalog.items():
        con.register(f"_{name}", df)
        con.execute(f'CREATE TEMP VIEW "{name}" AS SELECT * FROM "_{name}"')
    by_table: dict[str, list[str]] = {t: [] for t in RECORD_TABLES}
    for table, path in files:
        by_table.setdefault(table, []).append(str(wh.root / path))
    for table, paths in by_table.items():
        con.execute(f'CREATE TEMP VIEW "{table}" AS {select_files(table, paths)}')
    for table, id_col in ID_COLUMNS.items():
        con.execute(f'CREATE TEMP VIEW "{table}_kept" AS {kept_sql(table, id_col)}')
    return con


def query(wh: Warehouse, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    con = open_readonly(wh)
    try:
        return fetch_polars(con, sql, params)
    except duckdb.Error as exc:
        raise QueryError(str(exc).strip().splitlines()[0]) from None
    finally:
        con.close()
