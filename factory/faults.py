"""Expected faults as one line a user can act on, with exit codes a script can tell apart.

The CLI's error boundary (``factory.cli``) hands every exception a command did not handle itself to
:func:`describe`. A busy catalog, a damaged catalog or cache, a full disk, a name the file system refuses or
input nested too deeply are faults of the environment or the input, not bugs: they get one line naming the
file and what to do. Anything else is a bug and says so (``factory --debug …`` shows its traceback).
"""

from __future__ import annotations

import errno
import functools
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from factory.names import shown

if TYPE_CHECKING:
    from factory.warehouse import Warehouse

#: exit codes (sysexits.h): scripts can retry on EXIT_BUSY, alert on EXIT_IO, report EXIT_BUG
EXIT_ERROR = 1     # bad input, or a request that was refused
EXIT_BUG = 70      # EX_SOFTWARE: an unexpected error inside the factory
EXIT_IO = 74       # EX_IOERR: disk full, a damaged catalog, cache or data file
EXIT_BUSY = 75     # EX_TEMPFAIL: the catalog is locked by another process; try again later

CACHE_HINT = "delete it (finished calls will be made again) or run `factory repair --cache`"
CATALOG_HINT = ("restore catalog.duckdb from a backup (the data files under runs/ and releases/ are separate "
                "files; `factory doctor` checks them)")
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "database or disk is full", "Disk quota exceeded")
_CORRUPT_TEXT = ("Corrupt database file", "not a valid DuckDB database", "Could not read enough bytes",
                 "database disk image is malformed", "file is not a database")
_QUOTED_PATH = re.compile(r'file "([^"]+)"')
T = TypeVar("T")


class DiskFull(OSError):
    """No space left while writing ``path``; says how much was needed (when known) and how much is free."""

    def __init__(self, path: str | Path, needed: int | None = None, free: int | None = None):
        super().__init__(errno.ENOSPC, "No space left on device", str(path))
        self.path, self.needed, self.free = Path(path), needed, free

    def __str__(self) -> str:
        sizes = [f"about {human_bytes(self.needed)} needed"] if self.needed else []
        if self.free is not None:
            sizes.append(f"{human_bytes(self.free)} free")
        return (f"disk full writing {self.path}" + (f" ({', '.join(sizes)})" if sizes else "")
                + ": free some space (or move the warehouse with --warehouse) and run the command again")


class CatalogBusy(RuntimeError):
    """The catalog is held by another process longer than the wait allows."""


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: str | Path) -> int | None:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path)
    for candidate in (p, *p.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC as Python, polars, DuckDB and SQLite each report it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
        return True
    text = str(exc)
    return any(t in text for t in _DISK_FULL_TEXT)


@contextmanager
def writing(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a disk-full failure of the writes inside into :class:`DiskFull` naming ``path``."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(path, needed, free_bytes(path)) from exc
        raise


def is_damage(exc: BaseException, path: Path | None = None) -> bool:
    """A DuckDB or SQLite error that means a database file is damaged (not busy, not a bad query); with
    ``path``, only if the error names no other file (a truncated Parquet file read through it is not it)."""
    if not isinstance(exc, duckdb.Error | sqlite3.DatabaseError) or not any(t in str(exc) for t in _CORRUPT_TEXT):
        return False
    named = _QUOTED_PATH.search(str(exc))
    return path is None or named is None or Path(named.group(1)) == path


def one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code for an exception that reached the CLI's error boundary."""

    text = one_line(exc)
    if isinstance(exc, DiskFull):
        return str(exc), EXIT_IO
    if is_disk_full(exc):
        found = _QUOTED_PATH.search(str(exc))
        path = getattr(exc, "filename", None) or (found.group(1) if found else None)
        if path:
            return str(DiskFull(path, free=free_bytes(path))), EXIT_IO
        return f"disk full: {text}: free some space and run the command again", EXIT_IO
    if isinstance(exc, CatalogBusy):
        return f"{text}: another factory process is writing to it; wait for it to finish (or stop it)", EXIT_BUSY
    if type(exc).__name__ in ("CatalogDamaged", "CacheDamaged"):
        return text, EXIT_IO
    if isinstance(exc, sqlite3.DatabaseError) and any(t in str(exc) for t in _CORRUPT_TEXT):
        return f"the call cache (cache/calls.sqlite in the warehouse) is damaged ({text}): {CACHE_HINT}", EXIT_IO
    if isinstance(exc, duckdb.Error) and any(t in str(exc) for t in _CORRUPT_TEXT):
        found = _QUOTED_PATH.search(str(exc))
        if found and not found.group(1).endswith((".duckdb", ".wal")):
            return (f"{found.group(1)} is damaged ({text}): `factory doctor` lists damaged files and `factory repair` "
                    "re-makes them"), EXIT_IO
        where = found.group(1) if found else "the catalog (catalog.duckdb in the warehouse)"
        return f"{where} is damaged ({text}): {CATALOG_HINT}", EXIT_IO
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to process (RecursionError): flatten it", EXIT_ERROR
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        name = Path(exc.filename).name if exc.filename else ""
        return (f"file name too long ({shown(name)}): use a shorter name"
                if name else f"file name too long: {text}"), EXIT_ERROR
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else f"{exc.strerror}", EXIT_IO
    return (f"unexpected error {type(exc).__name__}: {text} (this is a bug: `factory --debug …` shows the "
            "traceback; please report it)"), EXIT_BUG


class CatalogDamaged(RuntimeError):
    """``catalog.duckdb`` cannot be opened as a DuckDB database (damaged, truncated, or another file)."""

    def __init__(self, path: Path, cause: BaseException):
        self.path = path
        super().__init__(f"the catalog {path} is damaged ({one_line(cause)}): {CATALOG_HINT}" if is_damage(cause)
                         else f"the catalog {path} cannot be opened ({one_line(cause)})")


def catalog_open_error(path: Path, cause: BaseException) -> Exception:
    """What to raise when ``duckdb.connect`` fails on the catalog for a reason other than its lock."""
    if is_disk_full(cause):
        return DiskFull(path, free=free_bytes(path))
    return CatalogDamaged(path, cause)


class CacheDamaged(RuntimeError):
    """``cache/calls.sqlite`` is not a readable SQLite database."""

    def __init__(self, path: Path, cause: BaseException):
        self.path = path
        super().__init__(f"the call cache {path} is damaged ({one_line(cause)}): {CACHE_HINT}")


def cache_error(path: Path, cause: sqlite3.DatabaseError) -> Exception:
    """The fault behind a SQLite error of the call cache: damaged, disk full, or (else) the error itself."""
    name = getattr(cause, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return CacheDamaged(path, cause)
    if name == "SQLITE_FULL" or is_disk_full(cause):
        return DiskFull(path, free=free_bytes(path))
    return cause


def guarded_cache(method: Callable[..., T]) -> Callable[..., T]:
    """Decorate a method of an object with a ``path`` so that SQLite faults become :func:`cache_error`'s."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            fault = cache_error(self.path, exc)
            if fault is exc:
                raise
            raise fault from exc

    return wrapper


def check_catalog(wh: Warehouse) -> None:
    """Read every table of the catalog once, so a damaged block stops a command that writes (``publish``)
    before it builds on the catalog, not after (the tables it happens to read may be intact)."""
    with wh.connect(read_only=True) as con:
        try:
            for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
                con.sql(f'SELECT * FROM "{table}"').to_arrow_table()
        except duckdb.Error as exc:
            raise CatalogDamaged(wh.catalog_path, exc) from exc
