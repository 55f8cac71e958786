"""Storage faults (issue 11, items 1, 2, 4 (manifest), 6, 10): damaged, missing and tampered files, two
runs of one run id, kills between writes. Each test runs the real ``factory`` CLI on a real warehouse
and asserts the exit code, the one line printed, what the warehouse holds afterwards and that no record
was lost. The model's words do not matter to these faults, so most use the scripted backend; the last
test runs two real processes on the real embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from factory import integrity, releases
from factory.cli import app
from factory.config import load_pipeline
from factory.records import content_id
from factory.run_lock import run_lock
from factory.runner import default_run_id
from factory.warehouse import Warehouse
from tests.conftest import DEMO_SEEDS, ROOT

N_SEEDS = 6


def factory(*args: Any) -> Result:
    """``factory ARGS…`` through the real app, as a fresh process would see it (warnings not yet given)."""
    integrity._WARNED.clear()
    releases.views._WARNED.clear()
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def pipeline(tmp: Path, name: str = "store", backend: dict[str, Any] | None = None, seeds: int = N_SEEDS) -> Path:
    rows = [json.loads(ln) for ln in DEMO_SEEDS.read_text().splitlines() if ln.strip()][:seeds]
    seed_file = tmp / "seeds.jsonl"
    seed_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "warehouse": str(tmp / "wh"),
        "backend": backend or {"kind": "fake", "replies": ["Here is a careful, complete answer to the task."]},
        "stages": [{"kind": "seeds", "paths": [str(seed_file)]}, {"kind": "self_label"},
                   {"kind": "publish", "dataset": name}]}))
    return path


def finished_run(tmp: Path) -> tuple[Warehouse, str, Path]:
    """A warehouse with one finished run (seeds → self_label → publish ``store@1.0.0``)."""
    p = pipeline(tmp)
    res = factory("run", p, "-q")
    assert res.exit_code == 0, res.output
    wh = Warehouse(tmp / "wh")
    run_id = wh.query("SELECT run_id FROM runs").item()
    return wh, run_id, p


def registered(wh: Warehouse, run_id: str, stage: str, table: str) -> Path:
    with wh.connect(read_only=True) as con:
        (rel,) = con.execute("SELECT path FROM files WHERE run_id=? AND stage=? AND table_name=?",
                             [run_id, stage, table]).fetchone()
    return wh.root / rel


def sample_ids(wh: Warehouse) -> list[str]:
    return sorted(pl.read_parquet(wh.files("samples"))["sample_id"].to_list())


def sql(wh: Warehouse, query: str) -> tuple[Result, Any]:
    res = factory("sql", query, "-f", "json", "-w", wh.root)
    return res, (json.loads(res.stdout) if res.exit_code == 0 else None)


# -- 1. a damaged or missing run file --------------------------------------------------------------------


def test_a_truncated_run_file_is_left_out_then_repaired(tmp_path: Path):
    wh, run_id, _ = finished_run(tmp_path)
    before = sample_ids(wh)
    assert len(before) > 0
    damaged = registered(wh, run_id, "self_label", "samples")
    rel = damaged.relative_to(wh.root)
    size = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated

    warning = (f"warning: {rel} is damaged (truncated or rewritten: 100 bytes, {size} registered); left out of "
               f"the views; run `factory repair -w {wh.root}`")
    res = factory("status", "-w", wh.root)
    assert res.exit_code == 0 and run_id in res.stdout
    assert lines(res.stderr) == [warning]
    res, rows = sql(wh, "SELECT count(*) AS n FROM tasks")  # other tables are whole
    assert res.exit_code == 0 and rows == [{"n": N_SEEDS}] and lines(res.stderr) == [warning]
    res, rows = sql(wh, "SELECT count(*) AS n FROM samples")
    assert res.exit_code == 0 and rows == [{"n": 0}]

    res = factory("publish", run_id, "--name", "other", "-w", wh.root)
    assert res.exit_code == 1
    assert lines(res.stderr)[-1] == (
        f"error: run {run_id} has a damaged file {rel} (truncated or rewritten: 100 bytes, {size} registered): "
        f"not publishing from a damaged run; run `factory repair -w {wh.root}` first")
    assert releases.versions(wh, "other") == []

    res = factory("doctor", "-w", wh.root)
    assert res.exit_code == 1
    assert f"damaged: {rel} (run {run_id}, stage self_label): truncated or rewritten" in res.stdout
    assert lines(res.stdout)[-1].endswith(f"1 damaged; run `factory repair -w {wh.root}`")

    with run_lock(wh, run_id):  # the run is running: repair leaves it alone
        res = factory("repair", "-w", wh.root)
    assert res.exit_code == 1 and damaged.exists()
    assert lines(res.stderr) == [f"error: run {run_id} is already running (pid {os.getpid()} on host "
                                 f"{os.uname().nodename}): run `factory repair` again once it has ended"]

    res = factory("repair", "-w", wh.root)
    assert res.exit_code == 0, res.output
    assert (wh.root / "quarantine" / rel).stat().st_size == 100  # the damaged bytes are kept, out of the way
    assert lines(res.stdout)[-1].startswith(f"repaired: run {run_id} (self_label);")
    assert sample_ids(wh) == before  # nothing lost: the stage was made again, answers from the cache
    calls, cached = wh.query("SELECT calls, cached_calls FROM stages WHERE run_id=? AND stage='self_label'",
                             [run_id]).row(0)
    assert calls == 0 and cached > 0
    assert factory("doctor", "-w", wh.root).exit_code == 0
    res, rows = sql(wh, "SELECT count(*) AS n FROM samples")
    assert rows == [{"n": len(before)}] and res.stderr == ""


@pytest.mark.parametrize("damage", ["delete", "flip a byte"])
def test_a_resumed_run_makes_a_damaged_stage_again(tmp_path: Path, damage: str):
    wh, run_id, p = finished_run(tmp_path)
    before = sample_ids(wh)
    path = registered(wh, run_id, "self_label", "samples")
    rel = path.relative_to(wh.root)
    if damage == "delete":
        path.unlink()
        problem = "missing"
    else:  # same size, footer intact: only the sha256 sees it
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        problem = "contents changed"
    res = factory("run", p, "-q")
    assert res.exit_code == 0, res.output
    said = [ln for ln in lines(res.stderr) if ln.startswith("warning:")]
    assert len(said) == 1 and said[0].startswith(f"warning: stage self_label: {rel} is damaged ({problem}")
    assert said[0].endswith("making the stage again")
    assert sample_ids(wh) == before
    assert (wh.root / "quarantine" / rel).exists() == (damage != "delete")
    assert factory("doctor", "-w", wh.root).exit_code == 0
    assert wh.query("SELECT status FROM runs").item() == "done"


# -- 6 (and 1): a tampered or truncated release -------------------------------------------------------


def test_a_tampered_release_is_not_served_through_sql_and_repair_restores_it(tmp_path: Path):
    wh, run_id, _ = finished_run(tmp_path)
    rel = releases.open("store@1.0.0", wh)
    good = rel.to_polars("sft")
    shard = rel.files("sft")[0]
    good.with_columns(pl.lit("tampered").alias("output")).write_parquet(shard)  # a valid file, other rows

    with pytest.raises(releases.ChecksumError, match="was modified"):
        releases.open("store@1.0.0", wh)
    res, rows = sql(wh, "SELECT count(*) AS n FROM release_sft")  # no tampered row served
    assert res.exit_code == 0 and rows == [{"n": 0}]
    (line,) = lines(res.stderr)
    assert line.startswith("warning: release store@1.0.0 is damaged (release store@1.0.0: file "
                           "data/sft/train-00000-of-00001.parquet was modified")
    assert line.endswith(f"left out of the release_* views; run `factory repair -w {wh.root}`")
    res, rows = sql(wh, "SELECT name, version FROM releases")
    assert rows == [{"name": "store", "version": "1.0.0"}]  # still listed in the index

    res = factory("doctor", "-w", wh.root)
    assert res.exit_code == 1
    assert "damaged: releases/store/1.0.0/data/sft/train-00000-of-00001.parquet (release store@1.0.0): contents " \
           "changed" in res.stdout

    res = factory("repair", "-w", wh.root)
    assert res.exit_code == 0, res.output
    assert "restored releases/store/1.0.0/data/sft/train-00000-of-00001.parquet" in res.stdout
    assert releases.open("store@1.0.0", wh).to_polars("sft").equals(good)  # the very bytes: verify passed
    res, rows = sql(wh, "SELECT count(*) AS n FROM release_sft")
    assert rows == [{"n": good.height}] and res.stderr == ""


def test_a_truncated_release_file_leaves_status_and_sql_working(tmp_path: Path):
    wh, run_id, _ = finished_run(tmp_path)
    shard = releases.open("store@1.0.0", wh).files("sft")[0]
    shard.write_bytes(shard.read_bytes()[:50])
    res = factory("status", "-w", wh.root)
    assert res.exit_code == 0 and run_id in res.stdout
    res, rows = sql(wh, "SELECT count(*) AS n FROM release_sft")
    assert res.exit_code == 0 and rows == [{"n": 0}]
    assert lines(res.stderr)[0].startswith("warning: release store@1.0.0 is damaged")
    res, rows = sql(wh, "SELECT count(*) AS n FROM samples")  # the run's own files are untouched
    assert rows[0]["n"] > 0


# -- 4 (manifest): a corrupted manifest.json ------------------------------------------------------------


def test_a_corrupted_manifest_is_one_line_naming_the_file(tmp_path: Path):
    wh, _, _ = finished_run(tmp_path)
    manifest = wh.root / "releases" / "store" / "1.0.0" / "manifest.json"
    corrupted = manifest.read_text()[:40]
    manifest.write_text(corrupted)
    with pytest.raises(releases.ReleaseError) as caught:
        releases.open("store@1.0.0", wh)
    assert str(caught.value).startswith(f"{manifest}: corrupted, not valid JSON (")
    res = factory("dedup", "--release", "store@1.0.0", "-w", wh.root)
    assert res.exit_code == 1
    assert lines(res.stderr) == [f"error: {caught.value}"]
    res, rows = sql(wh, "SELECT count(*) AS n FROM tasks")  # everything else still answers
    assert res.exit_code == 0 and rows == [{"n": N_SEEDS}]
    assert lines(res.stderr)[0].startswith("warning: release store@1.0.0 is damaged")
    res = factory("doctor", "-w", wh.root)
    assert res.exit_code == 1 and "damaged: releases/store/1.0.0/manifest.json (release store@1.0.0): corrupted" \
        in res.stdout
    res = factory("repair", "-w", wh.root)  # a manifest cannot be re-made: say what to do, change nothing
    assert res.exit_code == 1
    assert lines(res.stderr) == ["error: release store@1.0.0: manifest.json is damaged: restore releases/store/1.0.0 "
                                 "from a copy (the Hub: `factory push` uploaded it) or publish the runs again as a "
                                 "new version"]
    assert manifest.read_text() == corrupted


def test_a_manifest_that_breaks_its_schema_is_refused_everywhere_naming_the_file(tmp_path: Path):
    """Valid JSON without ``files``: every reader (open, training, doctor) refuses it the same way, since
    ``load_manifest`` validates; none trusts a manifest that cannot list the checksums it promises."""
    from factory.training.data import TrainingError, resolve_release

    wh, _, _ = finished_run(tmp_path)
    manifest = wh.root / "releases" / "store" / "1.0.0" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["files"]
    manifest.write_text(json.dumps(data))
    message = f"{manifest}: manifest is invalid at (top): 'files' is a required property; run `factory doctor`"
    with pytest.raises(releases.ReleaseError) as caught:
        releases.open("store@1.0.0", wh)
    assert str(caught.value) == message
    with pytest.raises(TrainingError) as caught:
        resolve_release(str(manifest.parent), wh)
    assert str(caught.value) == message
    res = factory("doctor", "-w", wh.root)
    assert res.exit_code == 1 and ("damaged: releases/store/1.0.0/manifest.json (release store@1.0.0): manifest is "
                                   "invalid at (top): 'files' is a required property") in res.stdout


# -- 2. two runs of one run id -----------------------------------------------------------------------------


def test_a_second_run_of_the_same_run_refuses_or_waits(tmp_path: Path):
    p = pipeline(tmp_path)
    wh = Warehouse(tmp_path / "wh")
    run_id = default_run_id(load_pipeline(p))
    host = os.uname().nodename
    with run_lock(wh, run_id):  # another process, as far as the lock is concerned (flock is per open file)
        res = factory("run", p, "-q")
        assert res.exit_code == 1
        assert lines(res.stderr) == [f"error: run {run_id} is already running (pid {os.getpid()} on host {host}); "
                                     "wait for it with `factory run --wait`, or stop it"]
        assert not (wh.root / "runs").exists() and wh.query("SELECT count(*) FROM runs").item() == 0

    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with run_lock(wh, run_id):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    threading.Timer(1.5, release.set).start()
    began = time.monotonic()
    res = factory("run", p, "-q", "--wait")
    holder.join()
    assert res.exit_code == 0, res.output
    assert time.monotonic() - began >= 1.4  # it waited for the holder
    assert lines(res.stderr)[0] == f"run {run_id} is already running (pid {os.getpid()} on host {host}); " \
                                   "waiting for it to finish"
    assert wh.query("SELECT status FROM runs").item() == "done"


@pytest.mark.slow
def test_two_processes_of_one_pipeline_on_the_real_model(tmp_path: Path):
    """Started together on the embedded model: one runs, the next refuses, a third waits and reuses it all."""
    p = pipeline(tmp_path, backend={"kind": "transformers", "batch_size": 4}, seeds=4)
    cfg = yaml.safe_load(p.read_text())
    cfg["stages"][1]["params"] = {"max_tokens": 16}  # short answers are mostly rejects: the seeds' gold answers
    cfg["stages"][2]["include_gold"] = True            # make sure there is something to publish
    p.write_text(yaml.safe_dump(cfg))
    wh = Warehouse(tmp_path / "wh")
    holder_note = wh.root / "locks"

    def start(*extra: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as fh:
            return subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(p), "-q", *extra], cwd=ROOT,
                                    stdout=fh, stderr=subprocess.STDOUT)

    first = start(log="first.log")
    deadline = time.monotonic() + 300
    while not list(holder_note.glob("*.holder.json")):
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = start(log="second.log")
    third = start("--wait", log="third.log")
    assert second.wait(timeout=300) == 1
    out2 = (tmp_path / "second.log").read_text()
    run_id = default_run_id(load_pipeline(p))
    assert lines(out2)[-1] == (f"error: run {run_id} is already running (pid {first.pid} on host "
                               f"{os.uname().nodename}); wait for it with `factory run --wait`, or stop it")
    assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()
    assert third.wait(timeout=600) == 0, (tmp_path / "third.log").read_text()
    assert "waiting for it to finish" in (tmp_path / "third.log").read_text()

    stages = wh.query("SELECT stage, calls, cached_calls FROM stages ORDER BY position").rows()
    assert [s[0] for s in stages] == ["seeds", "self_label", "publish"]
    label_calls = stages[1][1]
    assert label_calls == 4  # every call paid once, by the first process; the third found the stage done
    on_disk = sorted(str(f.relative_to(wh.root)) for f in (wh.root / "runs").rglob("*.parquet"))
    assert on_disk == sorted(wh.query("SELECT path FROM files")["path"].to_list())  # one copy of each stage's files
    assert releases.versions(wh, "store") == ["1.0.0"]  # one version for one run
    sft = releases.open("store@1.0.0", wh).to_polars("sft")
    gold = {content_id("gold", t) for t in wh.query("SELECT task_id FROM tasks_kept")["task_id"].to_list()}
    kept = set(wh.query("SELECT sample_id FROM samples_kept")["sample_id"].to_list())
    assert sft.height and set(sft["sample_id"].to_list()) <= kept | gold  # it points only at records that exist
    assert factory("doctor", "-w", wh.root).exit_code == 0


# -- 10. leftovers of a kill ------------------------------------------------------------------------------


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path):
    wh, run_id, p = finished_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage_dir = wh.root / "runs" / run_id / "self_label"
    left = stage_dir / f".samples.parquet.tmp-{dead.pid}"
    left.write_bytes(b"PAR1 half written")
    live = stage_dir / f".samples.parquet.tmp-{os.getpid()}"  # a writer still at work
    live.write_bytes(b"PAR1 being written")
    orphan = stage_dir / "samples-0123456789abcdef.parquet"  # moved into place, killed before its commit
    orphan.write_bytes(b"PAR1 never registered PAR1")
    before = sample_ids(wh)
    res = factory("doctor", "-w", wh.root)  # doctor names them and changes nothing
    assert res.exit_code == 0 and f"note: {left.relative_to(wh.root)}: temporary file" in res.stdout
    assert left.exists()
    res = factory("run", p, "-q")
    assert res.exit_code == 0, res.output
    assert not left.exists() and not orphan.exists() and live.exists()
    assert sample_ids(wh) == before


def test_a_kill_between_the_release_rename_and_its_registration_heals(tmp_path: Path):
    wh, run_id, p = finished_run(tmp_path)
    script = (
        "import os, signal, sys\n"
        "from factory import releases\n"
        "from factory.warehouse import Warehouse\n"
        "releases.publishing.register = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"releases.publish(Warehouse({str(wh.root)!r}), 'healed', [{run_id!r}])\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (wh.root / "releases" / "healed" / "1.0.0" / "manifest.json").is_file()  # moved into place
    with duckdb.connect(str(wh.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM releases WHERE name = 'healed'").fetchone()[0] == 0
    res, rows = sql(wh, "SELECT name, version FROM releases ORDER BY name")  # read-only: shown, not written
    assert res.exit_code == 0 and rows == [{"name": "healed", "version": "1.0.0"},
                                           {"name": "store", "version": "1.0.0"}]
    res, rows = sql(wh, "SELECT count(*) AS n FROM release_sft WHERE name = 'healed'")
    assert rows == [{"n": len(releases.open("healed@1.0.0", wh).to_polars("sft"))}]
    assert factory("run", p, "-q").exit_code == 0  # the next start registers it (and its run is unchanged)
    with duckdb.connect(str(wh.catalog_path), read_only=True) as con:
        assert con.execute("SELECT version FROM releases WHERE name = 'healed'").fetchall() == [("1.0.0",)]
