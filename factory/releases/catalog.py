"""The catalog's ``releases`` table: an index of the release folders, which stay the source of truth."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from factory.releases.manifest import load_manifest
from factory.releases.naming import release_names, releases_root, versions
from factory.releases.spec import ReleaseError
from factory.warehouse import Warehouse, fetch_polars

_RELEASES_DDL = """
CREATE TABLE IF NOT EXISTS releases (
    name VARCHAR, version VARCHAR, path VARCHAR, created_at TIMESTAMP, content_hash VARCHAR,
    config_hash VARCHAR, rows JSON, files JSON, run_ids VARCHAR[], parents VARCHAR[],
    PRIMARY KEY (name, version));
"""

_SCHEMA = {"name": pl.String, "version": pl.String, "path": pl.String, "created_at": pl.Datetime,
           "content_hash": pl.String, "config_hash": pl.String, "rows": pl.String, "files": pl.String,
           "run_ids": pl.List(pl.String), "parents": pl.List(pl.String)}


def _row(wh: Warehouse, folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    configs = manifest.get("configs", {})
    return {"name": manifest["name"], "version": manifest["version"], "path": str(folder.relative_to(wh.root)),
            "created_at": datetime.fromisoformat(manifest["created_at"].rstrip("Z")),
            "content_hash": manifest["content_hash"], "config_hash": manifest["config_hash"],
            "rows": json.dumps({c: info["rows"] for c, info in configs.items()}),
            "files": json.dumps({c: info["files"] for c, info in configs.items()}),
            "run_ids": manifest.get("run_ids", []), "parents": manifest["parents"]}


def register(wh: Warehouse, folder: Path, manifest: dict[str, Any]) -> None:
    """Index a release in the catalog's ``releases`` table (idempotent)."""
    row = _row(wh, folder, manifest)
    with wh.connect() as con:
        con.execute(_RELEASES_DDL)
        con.execute("DELETE FROM releases WHERE name = ? AND version = ?", [row["name"], row["version"]])
        con.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", list(row.values()))


def _manifests_not_in(wh: Warehouse, known: set[tuple[str, str]]) -> list[tuple[Path, dict[str, Any] | None, str]]:
    """Release folders on disk the catalog does not list: (folder, valid manifest or None, problem)."""
    found = []
    for n in release_names(wh):
        for v in versions(wh, n):
            if (n, v) in known:
                continue
            folder = releases_root(wh) / n / v
            try:
                manifest = load_manifest(folder)
            except ReleaseError as exc:
                found.append((folder, None, str(exc)))
                continue
            found.append((folder, manifest, ""))
    return found


def sync_catalog(wh: Warehouse) -> None:
    """Register release folders the catalog does not know (a crash between move and register)."""
    if not any(versions(wh, n) for n in release_names(wh)):
        return  # nothing published: no catalog write
    with wh.connect() as con:
        con.execute(_RELEASES_DDL)
        known = set(con.execute("SELECT name, version FROM releases").fetchall())
    for folder, manifest, problem in _manifests_not_in(wh, known):
        if manifest is None:  # not registrable: say so, register the rest
            sys.stderr.write(f"warning: release {folder.parent.name}@{folder.name} not registered: {problem}\n")
            continue
        register(wh, folder, manifest)


def catalog_frame(wh: Warehouse, con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    """The catalog's ``releases`` table (empty with the right columns when nothing is published)."""

    def read(c: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
        has = c.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'releases'").fetchall()
        return fetch_polars(c, "SELECT * FROM releases ORDER BY name, created_at") if has[0][0] else None

    if con is not None:
        df = read(con)
    elif wh.catalog_path.exists():
        with wh.connect(read_only=True) as c:
            df = read(c)
    else:
        df = None
    return pl.DataFrame(schema=_SCHEMA) if df is None else df


def with_unregistered(wh: Warehouse, df: pl.DataFrame) -> pl.DataFrame:
    """Catalog rows plus release folders the catalog does not know yet (a kill between the move and
    ``register``): SQL shows them without writing; the next run or publish registers them."""
    known = set(zip(df["name"].to_list(), df["version"].to_list(), strict=True))
    rows = [_row(wh, folder, m) for folder, m, _ in _manifests_not_in(wh, known) if m is not None]
    return pl.concat([df, pl.DataFrame(rows, schema=df.schema)]) if rows else df
