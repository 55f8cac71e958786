"""The ``models`` table: every trained model, where it is and what it came from.

A row per registered name: ``id`` (content hash of the weights), ``name``, ``path`` (the model folder),
``method``, ``base_model``, ``release`` (NAME@VERSION), ``release_hash``, ``parents`` (= [base model id,
release]) and ``created_at``. It lives in the warehouse catalog beside ``releases``, so ``factory sql``
sees it, and it is how a pipeline's ``backend.model: NAME`` finds a trained model.

Names are immutable like release versions: the same name again with the same weights is a no-op,
other weights under a taken name are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from factory.warehouse import Warehouse, now

MODELS_DDL = """
CREATE TABLE IF NOT EXISTS models (
    name VARCHAR PRIMARY KEY, id VARCHAR, path VARCHAR, method VARCHAR, base_model VARCHAR, release VARCHAR,
    release_hash VARCHAR, parents VARCHAR[], created_at TIMESTAMP);
"""
MODELS_SCHEMA = {"name": pl.String, "id": pl.String, "path": pl.String, "method": pl.String,
                 "base_model": pl.String, "release": pl.String, "release_hash": pl.String,
                 "parents": pl.List(pl.String), "created_at": pl.Datetime}
#: where ``factory train`` puts a model by default, and where a bare name is looked for first
MODELS_DIR = "models"


class ModelNameTaken(RuntimeError):
    """The name is registered for other weights: names are immutable."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    id: str
    path: Path
    method: str
    base_model: str
    release: str
    release_hash: str

    @property
    def parents(self) -> list[str]:
        return [self.base_model, self.release]


def default_warehouse(warehouse: str | os.PathLike[str] | Warehouse | None = None) -> Warehouse:
    if isinstance(warehouse, Warehouse):
        return warehouse
    return Warehouse(warehouse or os.environ.get("FACTORY_WAREHOUSE") or "warehouse")


def _has_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'models'")
                .fetchall()[0][0])


def lookup(name: str, warehouse: str | os.PathLike[str] | Warehouse | None = None) -> ModelEntry | None:
    """The registered model called ``name`` (``None`` when the warehouse or the name does not exist)."""
    wh = default_warehouse(warehouse)
    if not wh.catalog_path.exists():
        return None
    with wh.connect(read_only=True) as con:
        if not _has_table(con):
            return None
        row = con.execute("SELECT name, id, path, method, base_model, release, release_hash FROM models "
                          "WHERE name = ?", [name]).fetchone()
    return ModelEntry(row[0], row[1], Path(row[2]), *row[3:]) if row else None


def check_name_free(entry: ModelEntry, warehouse: Warehouse) -> None:
    """Refuse, before any training, a name already registered for other weights or another folder."""
    old = lookup(entry.name, warehouse)
    if old is not None and old.path.resolve() != entry.path.resolve():
        raise ModelNameTaken(f"model name {entry.name!r} is already registered for {old.path} (id {old.id}); "
                             "pick another --name")


def register(entry: ModelEntry, warehouse: Warehouse) -> bool:
    """Add the model to the catalog; ``False`` when the same name and weights were already there."""
    with warehouse.connect() as con:
        con.execute(MODELS_DDL)
        old = con.execute("SELECT id, path FROM models WHERE name = ?", [entry.name]).fetchone()
        if old is not None:
            if old[0] == entry.id and Path(old[1]).resolve() == entry.path.resolve():
                return False
            raise ModelNameTaken(f"model name {entry.name!r} is already registered for {old[1]} (id {old[0]}); "
                                 "pick another --name")
        con.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            entry.name, entry.id, str(entry.path.resolve()), entry.method, entry.base_model, entry.release,
            entry.release_hash, entry.parents, now()])
    return True


def find_model_folder(name: str, warehouse: str | os.PathLike[str] | Warehouse | None = None) -> Path | None:
    """A model by its registered name: ``WAREHOUSE/models/NAME/``, else the ``models`` table's path.

    The warehouse is the argument, else ``$FACTORY_WAREHOUSE``, else ``./warehouse``.
    """
    if not name or "/" in name or name.startswith("."):
        return None
    wh = default_warehouse(warehouse)
    folder = wh.root / MODELS_DIR / name
    if (folder / "config.json").is_file():
        return folder
    entry = lookup(name, wh)
    return entry.path if entry is not None and (entry.path / "config.json").is_file() else None


def models_frame(wh: Warehouse) -> pl.DataFrame:
    """The catalog's ``models`` table (empty with the right columns when nothing is registered)."""
    df = None
    if wh.catalog_path.exists():
        from factory.warehouse import fetch_polars

        with wh.connect(read_only=True) as con:
            if _has_table(con):
                df = fetch_polars(con, "SELECT * FROM models ORDER BY created_at, name")
    return df if df is not None else pl.DataFrame(schema=MODELS_SCHEMA)


def add_sql_views(con: duckdb.DuckDBPyConnection, wh: Warehouse) -> None:
    """The ``models`` view for ``factory sql`` (registered before the connection is locked down)."""
    con.register("_models", models_frame(wh))
    con.execute('CREATE TEMP VIEW "models" AS SELECT * FROM "_models"')
