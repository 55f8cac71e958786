"""Are the warehouse's files what the catalog says they are? Checks, warnings and quarantine.

One damaged or missing Parquet file used to take down every query (the views read every registered
file at once). Now each registered file is checked before it is put in a view: cheaply on every open
(it exists, has the registered size and ends in a Parquet footer) and by sha256 where it matters (a
resumed run, ``publish``, ``factory doctor``). A file that fails is left out with one warning line
naming it and the repair command; ``factory repair`` moves it to ``quarantine/`` and re-makes it.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from factory.host import pid_alive, sha256_file

if TYPE_CHECKING:
    from factory.warehouse import Warehouse

PARQUET_MAGIC = b"PAR1"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class RegisteredFile:
    """A row of the catalog's ``files`` table."""

    run_id: str
    stage: str
    table: str
    path: str  # relative to the warehouse root
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True)
class Damage:
    """One registered file (or release) that is not what the catalog (or manifest) says."""

    path: str  # relative to the warehouse root
    problem: str
    run_id: str | None = None
    stage: str | None = None
    table: str | None = None
    release: str | None = None  # NAME@VERSION for a release's file

    def line(self) -> str:
        where = f"release {self.release}" if self.release else f"run {self.run_id}, stage {self.stage}"
        return f"{self.path} ({where}): {self.problem}"


def quick_problem(path: Path, size: int | None) -> str | None:
    """What is wrong with ``path`` by the cheap test (exists, size, Parquet footer), or None."""
    try:
        got = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size is not None and got != size:
        return f"truncated or rewritten: {got} bytes, {size} registered"
    if path.suffix != ".parquet":
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if got < 12:
                return "not a Parquet file (too short)"
            fh.seek(got - 8)
            tail = fh.read(8)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    footer = int.from_bytes(tail[:4], "little")
    if head != PARQUET_MAGIC or tail[4:] != PARQUET_MAGIC or footer + 12 > got:
        return "not a Parquet file (bad header or footer)"
    return None


_VERIFIED: dict[str, str] = {}  # "path|size|mtime|ctime|inode" -> sha256
_MEMO_DDL = "CREATE TABLE IF NOT EXISTS checksums (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL)"


def memo_store(root: Path) -> Path:
    """Where checksums computed for views are remembered across processes (``cache/checksums.sqlite``)."""
    return root / "cache" / "checksums.sqlite"


def file_sha256(path: Path, store: Path | None = None) -> str:
    """sha256 of ``path``, remembered while the file's size, inode, mtime and ctime are unchanged.

    Any write to a file changes its ctime, which no ordinary user can set back, so a remembered checksum
    stands for the bytes. ``store``: also remember it in that SQLite file, so that ``factory sql`` and
    ``status`` do not read every release in full on each start (best effort: a read-only or full disk
    only costs the re-read)."""
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    if key in _VERIFIED:
        return _VERIFIED[key]
    con = None
    if store is not None:
        try:
            con = sqlite3.connect(store, timeout=2, isolation_level=None)
            con.execute(_MEMO_DDL)
            row = con.execute("SELECT sha256 FROM checksums WHERE key = ?", [key]).fetchone()
            if row:
                _VERIFIED[key] = row[0]
                con.close()
                return row[0]
        except sqlite3.Error:
            con = None
    digest = _VERIFIED[key] = sha256_file(path)
    if con is not None:
        with contextlib.suppress(sqlite3.Error):
            con.execute("INSERT OR REPLACE INTO checksums VALUES (?, ?)", [key, digest])
        con.close()
    return digest


def deep_problem(path: Path, size: int | None, sha256: str | None, memo: bool = True) -> str | None:
    """The cheap test, then the registered sha256 (``memo=False`` re-reads the file whatever happened)."""
    problem = quick_problem(path, size)
    if problem is None and sha256:
        try:
            got = file_sha256(path) if memo else sha256_file(path)
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        if got != sha256:
            problem = f"contents changed (sha256 {got[:12]}… != {sha256[:12]}… registered)"
    return problem


def registered_files(wh: Warehouse, run_ids: Sequence[str] | None = None) -> list[RegisteredFile]:
    if not wh.catalog_path.exists():
        return []
    sql = "SELECT run_id, stage, table_name, path, bytes, sha256 FROM files"
    args: list[str] = []
    if run_ids is not None:
        sql += f" WHERE run_id IN ({','.join('?' * len(run_ids))})" if run_ids else " WHERE false"
        args = list(run_ids)
    with wh.connect(read_only=True) as con:
        rows = con.execute(sql + " ORDER BY created_at, run_id, stage, table_name", args).fetchall()
    return [RegisteredFile(*r) for r in rows]


def check_files(wh: Warehouse, files: Iterable[RegisteredFile], deep: bool, memo: bool = True) -> list[Damage]:
    """The registered files that fail the cheap test (``deep``: or their sha256)."""
    out = []
    for f in files:
        path = wh.root / f.path
        problem = deep_problem(path, f.bytes, f.sha256, memo) if deep else quick_problem(path, f.bytes)
        if problem:
            out.append(Damage(f.path, problem, f.run_id, f.stage, f.table))
    return out


_WARNED: set[tuple[str, str]] = set()


def warn(root: Path, damage: Damage, left_out_of: str = "the views") -> None:
    """One line on stderr per damaged file and process: what, why, and the command that repairs it."""
    key = (str(root), damage.path)
    if key in _WARNED:
        return
    _WARNED.add(key)
    sys.stderr.write(f"warning: {damage.path} is damaged ({damage.problem}); left out of {left_out_of}; "
                     f"run `factory repair -w {root}`\n")
    sys.stderr.flush()


def usable(wh: Warehouse, rows: Iterable[tuple[str, str, int | None]],
           warn_about: bool = True) -> list[tuple[str, str]]:
    """``(table, path)`` of the rows ``(table, path, bytes)`` that pass the cheap test; warns about the rest."""
    ok = []
    for table, path, size in rows:
        problem = quick_problem(wh.root / path, size)
        if problem is None:
            ok.append((table, path))
        elif warn_about:
            warn(wh.root, Damage(path, problem, table=table))
    return ok


# -- quarantine --------------------------------------------------------------------------------------


def quarantine_path(wh: Warehouse, rel: str) -> Path:
    """Where a damaged file goes: ``quarantine/<its path>``, with a numeric suffix if taken."""
    target = wh.root / QUARANTINE / rel
    n = 1
    while target.exists():
        target = wh.root / QUARANTINE / f"{rel}.{n}"
        n += 1
    return target


def quarantine_files(wh: Warehouse, damaged: Sequence[Damage]) -> dict[str, Path | None]:
    """Move damaged run files to ``quarantine/`` and unregister them together with their stage's
    completion row, so the stage counts as not done and the next run of its pipeline re-makes it.
    Returns where each file went (None: it was missing)."""
    moved: dict[str, Path | None] = {}
    for d in damaged:
        src = wh.root / d.path
        if src.exists():
            target = quarantine_path(wh, d.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, target)
            moved[d.path] = target
        else:
            moved[d.path] = None
    stages = sorted({(d.run_id, d.stage) for d in damaged if d.run_id is not None})
    if stages:
        with wh.connect() as con:
            con.execute("BEGIN TRANSACTION")
            for run_id, stage in stages:
                con.execute("DELETE FROM files WHERE run_id=? AND stage=? AND path IN "
                            f"({','.join('?' * len(damaged))})", [run_id, stage, *[d.path for d in damaged]])
                con.execute("DELETE FROM stages WHERE run_id=? AND stage=?", [run_id, stage])
            wh._refresh_views(con)
            con.execute("COMMIT")
    return moved


# -- leftovers -----------------------------------------------------------------------------------------


def sweep_temporaries(root: Path, run_id: str | None = None) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` files under ``runs/`` (or one run's folder) whose writer (PID) is gone.

    A run's start sweeps only its own folder, which no live process writes while it holds the run's
    lock: on storage shared between hosts a PID says nothing about another host's writers."""
    removed = []
    runs = root / "runs" if run_id is None else root / "runs" / run_id
    if not runs.is_dir():
        return removed
    for p in runs.rglob(".*.tmp-*"):
        pid = p.name.rpartition(".tmp-")[2]
        if pid.isdigit() and p.is_file() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sweep_unregistered(wh: Warehouse, run_id: str) -> list[Path]:
    """Remove a run's Parquet files that no catalog row names: written by an attempt killed before its
    commit (call it only while holding the run's lock, so no live attempt of the run is writing)."""
    folder = wh.root / "runs" / run_id
    if not folder.is_dir():
        return []
    known = {wh.root / f.path for f in registered_files(wh, [run_id])}
    removed = []
    for p in folder.glob("*/*.parquet"):
        if p not in known:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# -- what a run does on start ------------------------------------------------------------------------


def redo_damaged_stages(wh: Warehouse, run_id: str, log: Callable[[str], None] | None = None) -> set[str]:
    """Stages of ``run_id`` whose registered files fail their sha256: their files are quarantined and
    unregistered, so the resumed run makes them again instead of saying "done"."""
    damaged = check_files(wh, registered_files(wh, [run_id]), deep=True, memo=False)
    if not damaged:
        return set()
    moved = quarantine_files(wh, damaged)
    for d in damaged:
        where = moved[d.path]
        if log is not None:
            log(f"stage {d.stage}: {d.path} is damaged ({d.problem}); "
                + (f"moved to {where.relative_to(wh.root)}; " if where else "") + "making the stage again")
    return {d.stage for d in damaged if d.stage is not None}
