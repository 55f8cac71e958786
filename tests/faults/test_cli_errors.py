"""Issue 11, item 4: the CLI's one error boundary. A busy or damaged catalog, a damaged call cache, a full
disk and names the file system refuses each give one line and a distinct exit code (``factory.faults``),
never a traceback, and leave the warehouse as it was; ``factory --debug …`` shows the traceback.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory import faults
from factory.warehouse import Warehouse
from tests.faults.cli import error_line, factory, labelled_warehouse, seeds_pipeline, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Path, str]:
    return labelled_warehouse(tmp_path)


def count(wh: Path, sql: str) -> int:
    return Warehouse(wh).query(sql).item()


# -- busy ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A warehouse the busy tests share (they change nothing in it)."""
    return labelled_warehouse(tmp_path_factory.mktemp("busy"))


@pytest.fixture
def held_catalog(untouched) -> Iterator[tuple[Path, str, subprocess.Popen]]:
    """Another process holding the catalog's write lock (as a long `factory run` commit would)."""
    wh, run_id = untouched
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(300)", str(wh / "catalog.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield wh, run_id, holder
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("command", [["status"], ["sql", "SELECT count(*) FROM samples"],
                                     ["publish", "{run}", "--name", "busy"], ["dedup"]])
def test_a_busy_catalog_is_one_line_and_exit_75(held_catalog, command: list[str]):
    wh, run_id, holder = held_catalog
    args = [a.replace("{run}", run_id) for a in command]
    res = factory(*args, "-w", wh, env={"FACTORY_CATALOG_WAIT_S": "0.5"})
    assert res.exit_code == faults.EXIT_BUSY == 75
    line = error_line(res)
    assert line.startswith(f"error: catalog {wh / 'catalog.duckdb'} is busy: ")
    assert f"(PID {holder.pid})" in line and line.endswith("wait for it to finish (or stop it)")
    holder.kill()
    holder.wait()
    assert not (wh / "releases" / "busy").exists()
    assert count(wh, "SELECT count(*) FROM samples") == 2  # nothing lost, and usable again at once


# -- a damaged catalog --------------------------------------------------------------------------------


def damage(path: Path, offset: int, size: int = 4088) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = random.Random(offset).randbytes(size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["header", "truncated"])
def test_a_damaged_catalog_is_one_line_and_exit_74_everywhere(labelled, how: str):
    wh, run_id = labelled
    cat = wh / "catalog.duckdb"
    backup = cat.read_bytes()
    if how == "header":
        damage(cat, 8)
    else:
        cat.write_bytes(backup[:len(backup) // 3])
    for args in (["status"], ["sql", "SELECT 1"], ["publish", run_id, "--name", "broken"], ["dedup"],
                 ["run", wh.parent / "labelled.yaml", "-q"]):
        res = factory(*args, "-w", wh)
        assert res.exit_code == faults.EXIT_IO == 74, (args, res.output)
        line = error_line(res)
        assert line.startswith(f"error: the catalog {cat} is damaged ("), line
        assert line.endswith("restore catalog.duckdb from a backup (the data files under runs/ and releases/ are "
                             "separate files; `factory doctor` checks them)")
    assert not (wh / "releases" / "broken").exists()
    cat.write_bytes(backup)  # restored from the backup: nothing else was touched
    assert factory("status", "-w", wh).exit_code == 0
    assert count(wh, "SELECT count(*) FROM samples") == 2


def test_a_damaged_block_inside_the_catalog_stops_publish_before_it_writes(labelled):
    wh, run_id = labelled
    cat = wh / "catalog.duckdb"
    backup = cat.read_bytes()
    for offset in range(1 << 18, len(backup), 1 << 18):  # DuckDB's 256 KiB blocks: find one that is in use
        damage(cat, offset + 8)
        res = factory("status", "-w", wh)
        if res.exit_code:
            break
        cat.write_bytes(backup)
    else:
        pytest.fail("no block of the catalog is read by `factory status`")
    assert res.exit_code == 74 and "is damaged (Corrupt database file" in error_line(res)
    res = factory("publish", run_id, "--name", "afterdamage", "-w", wh)
    assert res.exit_code == 74 and "is damaged (Corrupt database file" in error_line(res)
    assert not (wh / "releases" / "afterdamage").exists()


# -- a damaged call cache -----------------------------------------------------------------------------


def test_a_damaged_call_cache_names_the_file_and_the_fix(labelled):
    wh, _ = labelled
    cache = wh / "cache" / "calls.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{cache}{extra}").unlink(missing_ok=True)
    cache.write_bytes(random.Random(0).randbytes(20_000))
    pipeline = wh.parent / "labelled.yaml"
    res = factory("run", pipeline, "-q")
    assert res.exit_code == 74
    assert error_line(res) == (f"error: the call cache {cache} is damaged (file is not a database): delete it "
                               "(finished calls will be made again) or run `factory repair --cache`")
    assert count(wh, "SELECT count(*) FROM samples") == 2  # the records do not depend on the cache
    res = factory("repair", "--cache", "-w", wh)
    assert res.exit_code == 0 and "was damaged (file is not a database); moved to" in res.output
    assert not cache.exists() and (wh / "quarantine" / "cache" / "calls.sqlite").exists()
    assert factory("run", pipeline, "-q").exit_code == 0
    res = factory("repair", "--cache", "-w", wh)
    assert res.exit_code == 0 and res.output.strip() == f"call cache {cache}: ok"


# -- a full disk --------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (needs root, or CAP_SYS_ADMIN, as in this project's containers)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no `mount` command on this machine: cannot make a small file system")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a 4 MB tmpfs here (mount -t tmpfs: {done.stderr.strip() or done.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def incompressible_seeds(path: Path, rows: int) -> Path:
    r = random.Random(0)
    return write_jsonl(path, [{"instruction": "".join(r.choices(string.ascii_letters, k=10_000))}
                              for _ in range(rows)])


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_run_that_fills_the_disk_says_where_and_leaves_nothing_half_written(tmp_path: Path, small_disk: Path):
    seeds = incompressible_seeds(tmp_path / "big.jsonl", 800)  # ~8 MB of text for a 4 MB disk
    pipeline = seeds_pipeline(tmp_path, seeds, name="full")
    pipeline.write_text(pipeline.read_text().replace(str(tmp_path / "wh"), str(small_disk / "wh")))
    res = factory("run", pipeline, "-q")
    assert res.exit_code == faults.EXIT_IO == 74
    line = error_line(res)
    run_dir = small_disk / "wh" / "runs"
    assert re.fullmatch(rf"error: disk full writing {re.escape(str(run_dir))}/full-[0-9a-f]{{10}}/seeds/tasks\.parquet "
                        r"\(about [0-9.]+ MB needed, [0-9.]+ [KM]?B free\): free some space \(or move the warehouse "
                        r"with --warehouse\) and run the command again", line), line
    assert not [f for f in files_under(small_disk / "wh") if f.endswith(".parquet") or ".tmp-" in f]

    # read-only commands still work on a disk with not one byte free
    with open(small_disk / "filler", "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    assert shutil.disk_usage(small_disk).free < 65536
    status = factory("status", "-w", small_disk / "wh")
    assert status.exit_code == 0, status.output
    assert re.search(r"full-[0-9a-f]{10} .* failed", status.stdout)
    error = Warehouse(small_disk / "wh").query("SELECT error FROM runs").item()
    assert error.startswith("DiskFull: disk full writing ")


def test_an_export_that_fills_the_disk_leaves_no_file(labelled, small_disk: Path):
    wh, _ = labelled
    out = small_disk / "export.csv"
    res = factory("sql", "SELECT range, repeat('x', 200) AS pad FROM range(200000)", "-f", "csv", "-o", out, "-w", wh)
    assert res.exit_code == 74
    assert error_line(res).startswith(f"error: disk full writing {out} (")
    assert files_under(small_disk) == []


# -- names the file system refuses, and --debug -------------------------------------------------------


def test_a_file_name_too_long_is_one_line(labelled, tmp_path: Path):
    wh, _ = labelled
    res = factory("sql", "SELECT 1 AS one", "-f", "csv", "-o", tmp_path / ("x" * 300 + ".csv"), "-w", wh)
    assert res.exit_code == 1
    assert re.fullmatch(r"error: file name too long \('\.x{39}…' \(\d+ characters\)\): use a shorter name",
                        error_line(res))
    for run_id in ("r" * 300, "../../escape", "Run1"):  # a run id names a folder: the rule of names
        res = factory("run", wh.parent / "labelled.yaml", "--run-id", run_id, "-q")
        assert res.exit_code == 1
        assert "must be 1-100 characters of a-z, 0-9, '.', '_' or '-', starting with a letter" in error_line(res)
    assert count(wh, "SELECT count(*) FROM runs") == 1
    assert not (wh.parent / "escape").exists()


def test_debug_shows_the_traceback(labelled):
    wh, _ = labelled
    damage(wh / "catalog.duckdb", 8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FACTORY_DEBUG", None)
    plain = subprocess.run([sys.executable, "-m", "factory.cli", "status", "-w", str(wh)], capture_output=True,
                           text=True, env=env, cwd=ROOT)
    assert plain.returncode == 74 and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "factory.cli", "--debug", "status", "-w", str(wh)],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("factory.faults.CatalogDamaged: the catalog ")
    # in-process too, and --debug does not outlive its invocation
    res = factory("--debug", "sql", "SELECT 1", "-w", wh)
    assert isinstance(res.exception, faults.CatalogDamaged)
    assert "FACTORY_DEBUG" not in os.environ
    assert factory("sql", "SELECT 1", "-w", wh).exit_code == 74


def test_unexpected_errors_say_they_are_bugs():
    message, code = faults.describe(KeyError("stage"))
    assert code == faults.EXIT_BUG == 70
    assert message == ("unexpected error KeyError: 'stage' (this is a bug: `factory --debug …` shows the traceback; "
                       "please report it)")
    assert faults.describe(RecursionError("maximum recursion depth exceeded"))[1] == faults.EXIT_ERROR
