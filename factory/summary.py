"""The end-of-run report: where the results are, the funnel per stage, and a sample of records."""

from __future__ import annotations

import socket

import polars as pl
from rich.console import Console

from factory.host import pid_alive
from factory.terminal import print_frame
from factory.warehouse import Warehouse


def shown_status(runs: pl.DataFrame) -> pl.DataFrame:
    """Runs still marked 'running' whose process on this host is gone show as 'interrupted'.

    Computed, not written back: ``factory status`` only reads, so it works on a full disk, a read-only
    copy, or while another process holds the catalog (the next ``factory run`` records the state)."""
    host = socket.gethostname()

    def shown(row: dict) -> tuple[str, str | None]:
        if row["status"] == "running" and row["host"] == host and row["pid"] is not None and not pid_alive(row["pid"]):
            return "interrupted", f"process {row['pid']} ended without finishing; run it again to resume"
        return row["status"], row.get("error")

    pairs = [shown(r) for r in runs.iter_rows(named=True)]
    columns = [pl.Series("status", [p[0] for p in pairs], dtype=pl.String)]
    if "error" in runs.columns:
        columns.append(pl.Series("error", [p[1] for p in pairs], dtype=pl.String))
    return runs.with_columns(columns).drop("host", "pid")


def stage_table(wh: Warehouse, run_id: str) -> pl.DataFrame:
    return wh.query("""
        SELECT stage, kind, status, records_in AS "in", records_out AS "out", records_rejected AS rejected,
               calls, cached_calls AS cached, prompt_tokens + completion_tokens AS tokens,
               round(seconds, 1) AS seconds,
               json_extract(metrics, '$.tokens_per_second')::DOUBLE AS "tok/s"
        FROM stages WHERE run_id = ? ORDER BY position""", [run_id])


def print_summary(wh: Warehouse, run_id: str, console: Console) -> None:

    console.print(f"\n[bold green]run {run_id} done[/] — warehouse: {wh.root}")
    print_frame(stage_table(wh, run_id), "funnel")
    reasons = wh.query("""SELECT stage, reason, count(*) AS n FROM rejects WHERE run_id = ?
                          GROUP BY ALL ORDER BY stage, n DESC""", [run_id])
    if not reasons.is_empty():
        print_frame(reasons, "rejects by reason")
        failed = int(reasons.filter(reasons["reason"] == "model_error")["n"].sum())
        if failed:
            console.print(f"[yellow]{failed} model call(s) failed (model_error rejects): `factory run … "
                          "--retry-errors` asks them again[/]", highlight=False)
    sample = wh.query("""SELECT category, instruction, output FROM samples_kept s
                         WHERE run_id = ? ORDER BY (SELECT source FROM tasks t WHERE t.task_id = s.task_id
                         AND t.run_id = s.run_id LIMIT 1) = 'seed', sample_id LIMIT 3""", [run_id])
    if not sample.is_empty():
        print_frame(sample, "a sample of the results")
    print_quality(wh, run_id, console)
    console.print(f'query it: factory sql "SELECT * FROM samples_kept WHERE run_id = \'{run_id}\'" '
                  f"-w {wh.root}")
    releases = wh.query("""SELECT json_extract_string(metrics, '$.release') AS ref,
                                  json_extract_string(metrics, '$.path') AS path
                           FROM stages WHERE run_id = ? AND kind = 'publish' ORDER BY position""", [run_id])
    for ref, path in releases.iter_rows():
        console.print(f"release {ref}: {path}\n  load it: datasets.load_dataset({path!r}, 'sft')  "
                      f"or factory.releases.open({ref!r})")
    print_report(wh, run_id, console)


def print_report(wh: Warehouse, run_id: str, console: Console) -> None:
    """Write the run's HTML report next to its data and say where; a failure here never fails the run."""
    from factory.report import write_report

    try:
        path = write_report(wh, run_id=run_id)
    except Exception as exc:  # noqa: BLE001 - the run is done; the report is a view of it
        console.print(f"[yellow]report not written: {type(exc).__name__}: {exc}[/]", highlight=False)
        return
    console.print(f"report: {path} (open it in a browser; offline, one file)", markup=False, highlight=False,
                  soft_wrap=True)


def print_quality(wh: Warehouse, run_id: str, console: Console) -> None:
    """The judge's calibration accuracy and parse-failure rate, and the composite score distribution."""

    judge = wh.query("""SELECT stage,
            json_extract(metrics, '$.calibration_accuracy')::DOUBLE AS calibration_accuracy,
            json_extract(metrics, '$.calibration_passed')::BOOLEAN AS passed,
            json_extract(metrics, '$.trusted')::BOOLEAN AS trusted,
            json_extract(metrics, '$.parse_failure_rate')::DOUBLE AS parse_failure_rate,
            json_extract(metrics, '$.judge_mean')::DOUBLE AS judge_mean,
            json_extract(metrics, '$.judgments')::BIGINT AS judgments
        FROM stages WHERE run_id = ? AND kind = 'judge' ORDER BY position""", [run_id])
    if not judge.is_empty():
        print_frame(judge, "judge reliability")
        for row in judge.iter_rows(named=True):
            if row["passed"] is False:
                console.print(f"[bold red]judge {row['stage']!r} is near chance on its calibration set "
                              f"(accuracy {row['calibration_accuracy']:.2f}); "
                              + ("its scores were ignored: composite = heuristics only[/]" if not row["trusted"]
                                 else "its scores were used anyway (fallback_to_heuristics: false)[/]"))
    if "scores" not in wh.table_names():
        return
    dist = wh.query("""SELECT stage, count(*) AS samples, sum(keep::INT) AS kept,
            round(avg(composite), 3) AS mean, round(quantile_cont(composite, 0.1), 3) AS p10,
            round(median(composite), 3) AS p50, round(quantile_cont(composite, 0.9), 3) AS p90,
            bool_or(judge_used) AS judge_used
        FROM scores WHERE run_id = ? GROUP BY stage ORDER BY stage""", [run_id])
    if not dist.is_empty():
        print_frame(dist, "composite score distribution")
        hist = wh.query("""SELECT printf('%.1f-%.1f', b / 5.0, (b + 1) / 5.0) AS composite, count(*) AS n,
                repeat('#', count(*)::INT * 40 // max(count(*)) OVER ()) AS bar
            FROM (SELECT least(floor(composite * 5), 4)::INT AS b FROM scores WHERE run_id = ?)
            GROUP BY b ORDER BY b""", [run_id])
        print_frame(hist, "composite histogram")
        reasons = wh.query("""SELECT reason, count(*) AS n FROM (SELECT unnest(drop_reasons) AS reason FROM scores
            WHERE run_id = ?) GROUP BY reason ORDER BY n DESC""", [run_id])
        if not reasons.is_empty():
            print_frame(reasons, "score drop reasons")
