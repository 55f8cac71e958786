"""The end-of-run report: where the results are, the funnel per stage, and a sample of records."""

from __future__ import annotations

import polars as pl
from rich.console import Console

from factory.warehouse import Warehouse


def stage_table(wh: Warehouse, run_id: str) -> pl.DataFrame:
    return wh.query("""
        SELECT stage, kind, status, records_in AS "in", records_out AS "out", records_rejected AS rejected,
               calls, cached_calls AS cached, prompt_tokens + completion_tokens AS tokens,
               round(seconds, 1) AS seconds,
               json_extract(metrics, '$.tokens_per_second')::DOUBLE AS "tok/s"
        FROM stages WHERE run_id = ? ORDER BY position""", [run_id])


def print_summary(wh: Warehouse, run_id: str, console: Console) -> None:
    from factory.cli import print_frame

    console.print(f"\n[bold green]run {run_id} done[/] — warehouse: {wh.root}")
    print_frame(stage_table(wh, run_id), "funnel")
    reasons = wh.query("""SELECT stage, reason, count(*) AS n FROM rejects WHERE run_id = ?
                          GROUP BY ALL ORDER BY stage, n DESC""", [run_id])
    if not reasons.is_empty():
        print_frame(reasons, "rejects by reason")
    sample = wh.query("""SELECT category, instruction, output FROM samples_kept s
                         WHERE run_id = ? ORDER BY (SELECT source FROM tasks t WHERE t.task_id = s.task_id
                         AND t.run_id = s.run_id LIMIT 1) = 'seed', sample_id LIMIT 3""", [run_id])
    if not sample.is_empty():
        print_frame(sample, "a sample of the results")
    console.print(f'query it: factory sql "SELECT * FROM samples_kept WHERE run_id = \'{run_id}\'" '
                  f"-w {wh.root}")
