"""The ``factory`` command: a thin layer over the Python API (runner, warehouse, SQL front)."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from factory.backends.base import BackendUnavailable
from factory.config import ConfigError, load_pipeline
from factory.sql import QueryError
from factory.warehouse import Warehouse

app = typer.Typer(help="The dataset factory: self-evolving LLM training data.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
out = Console()
err = Console(stderr=True)

WarehouseOpt = Annotated[Path, typer.Option("--warehouse", "-w", envvar="FACTORY_WAREHOUSE",
                                            help="warehouse folder")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def print_frame(df: pl.DataFrame, title: str | None = None, max_width: int = 60) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in df.columns:
        table.add_column(col, overflow="fold", max_width=max_width)
    for row in df.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


@app.command()
def validate(pipeline: Path) -> None:
    """Check a pipeline file without running it."""
    try:
        cfg = load_pipeline(pipeline)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    out.print(f"{pipeline}: ok ({len(cfg.stages)} stages: {', '.join(s.stage_name for s in cfg.stages)})")


@app.command()
def run(pipeline: Path,
        run_id: Annotated[str | None, typer.Option(help="run id (default: pipeline name + config hash)")] = None,
        warehouse: Annotated[Path | None, typer.Option("--warehouse", "-w", envvar="FACTORY_WAREHOUSE",
                                                      help="override the pipeline's warehouse")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False) -> None:
    """Run (or resume) the pipeline described in PIPELINE.yaml."""
    from factory.runner import run_pipeline
    from factory.summary import print_summary

    try:
        cfg = load_pipeline(pipeline)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if warehouse is not None:
        cfg.warehouse = warehouse
    try:
        result = run_pipeline(cfg, run_id=run_id, show_progress=not quiet)
    except (BackendUnavailable, ValueError, RuntimeError) as exc:
        if os.environ.get("FACTORY_DEBUG"):
            raise
        raise fail(f"{type(exc).__name__}: {exc}") from None
    print_summary(result.warehouse, result.run_id, out)


@app.command()
def status(run_id: Annotated[str | None, typer.Argument(help="a run id; default: list all runs")] = None,
           warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Runs, their stages, counts in/out/rejected, tokens and time."""
    wh = Warehouse(warehouse)
    if not wh.catalog_path.exists():
        raise fail(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    if run_id is None:
        df = wh.query("""SELECT r.run_id, r.pipeline, r.status, r.round, r.started_at, r.finished_at,
                    count(s.stage) AS stages, sum(s.prompt_tokens + s.completion_tokens) AS tokens,
                    round(sum(s.seconds), 1) AS seconds
                    FROM runs r LEFT JOIN stages s USING (run_id) GROUP BY ALL ORDER BY r.started_at""")
        print_frame(df, "runs")
        return
    runs = wh.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if runs.is_empty():
        raise fail(f"no run {run_id!r} in {wh.root} (see `factory status`)")
    from factory.summary import stage_table

    r = runs.row(0, named=True)
    out.print(f"[bold]{run_id}[/] ({r['pipeline']}): {r['status']}" + (f" — {r['error']}" if r["error"] else ""))
    print_frame(stage_table(wh, run_id), "stages")


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command()
def sql(query: str,
        format: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="write to a file")] = None,
        warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Query everything in the warehouse (tasks, samples, rejects, runs, stages…) read-only."""
    wh = Warehouse(warehouse)
    try:
        df = wh.query(query)
    except QueryError as exc:
        raise fail(str(exc)) from None
    if format is Format.parquet and output is None:
        raise fail("--format parquet needs --output FILE")
    if format is Format.table:
        if output:
            raise fail("--format table prints to the terminal; use csv, json or parquet with --output")
        print_frame(df)
        return
    if format is Format.parquet:
        df.write_parquet(output)
    elif format is Format.csv:
        text = df.write_csv()
        output.write_text(text) if output else sys.stdout.write(text)
    else:
        text = json.dumps(df.to_dicts(), default=str, ensure_ascii=False, indent=1) + "\n"
        output.write_text(text) if output else sys.stdout.write(text)
    if output:
        err.print(f"wrote {df.height} rows to {output}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
