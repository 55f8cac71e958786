"""``factory sql``'s views of releases: ``releases`` and ``release_<config>`` (rows with name and version)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import duckdb

from factory.releases.catalog import catalog_frame, with_unregistered
from factory.releases.manifest import Release, load_manifest
from factory.releases.spec import ReleaseError
from factory.warehouse import Warehouse

_WARNED: set[tuple[str, str]] = set()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def verified_files(name: str, version: str, folder: Path) -> dict[str, list[str]]:
    """A release's data files per config, from its manifest, after checking each against its sha256
    (remembered while a file is unchanged); raises ReleaseError naming what differs."""
    manifest = load_manifest(folder)
    Release(name, version, folder, manifest).verify(memo=True)
    return {c: info["files"] for c, info in manifest.get("configs", {}).items()}


def add_sql_views(con: duckdb.DuckDBPyConnection, wh: Warehouse) -> None:
    """Create the release views on ``con``.

    A release whose files differ from its manifest is left out of ``release_<config>`` with a warning,
    as ``open()`` refuses it: tampered rows are never served."""
    df = with_unregistered(wh, catalog_frame(wh))
    con.register("_releases", df)
    con.execute('CREATE TEMP VIEW "releases" AS SELECT * FROM "_releases"')
    per_config: dict[str, list[str]] = {"sft": [], "preference": []}
    for row in df.iter_rows(named=True):
        try:
            files = verified_files(row["name"], row["version"], wh.root / row["path"])
        except ReleaseError as exc:
            _warn_release(wh, f"{row['name']}@{row['version']}", str(exc))
            continue
        for config, paths in files.items():
            if not paths:
                continue
            full = ", ".join(_quote(str(wh.root / row["path"] / p)) for p in paths)
            per_config.setdefault(config, []).append(
                f"SELECT {_quote(row['name'])} AS name, {_quote(row['version'])} AS version, * "
                f"FROM read_parquet([{full}])")
    for config, selects in per_config.items():
        if not re.fullmatch(r"[a-z0-9_]+", config):
            continue
        sql = " UNION ALL BY NAME ".join(selects) if selects else \
            "SELECT NULL::VARCHAR AS name, NULL::VARCHAR AS version WHERE false"
        con.execute(f'CREATE TEMP VIEW "release_{config}" AS {sql}')


def _warn_release(wh: Warehouse, ref: str, problem: str) -> None:
    if (str(wh.root), ref) not in _WARNED:
        _WARNED.add((str(wh.root), ref))
        sys.stderr.write(f"warning: release {ref} is damaged ({problem}); left out of the release_* views; "
                         f"run `factory repair -w {wh.root}`\n")
