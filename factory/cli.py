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
if not out.is_terminal:  # piped or captured: don't fold tables to 80 columns
    out = Console(width=220)
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
    wh.mark_dead_runs()
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


@app.command()
def publish(run_ids: Annotated[list[str], typer.Argument(help="run id(s) whose kept records to publish")],
            name: Annotated[str, typer.Option("--name", "-n", help="release name")],
            version: Annotated[str | None, typer.Option(help="X.Y.Z (default: bump the last version)")] = None,
            bump: Annotated[str, typer.Option(help="patch, minor or major")] = "patch",
            license: Annotated[str, typer.Option(help="Hub license id")] = "other",
            tag: Annotated[list[str] | None, typer.Option("--tag", help="card tag (repeatable)")] = None,
            min_score: Annotated[float | None, typer.Option(help="keep samples scoring at least this")] = None,
            warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Publish runs' kept records as an immutable, versioned release (a no-op if unchanged)."""
    from pydantic import ValidationError

    from factory.releases import ReleaseError, ReleaseSpec
    from factory.releases import publish as publish_release

    wh = Warehouse(warehouse)
    try:
        spec = ReleaseSpec(version=version, bump=bump, license=license, tags=tag or [], min_score=min_score)
        result = publish_release(wh, name, run_ids, spec)
    except ValidationError as exc:
        raise fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    except ReleaseError as exc:
        raise fail(str(exc)) from None
    rows = ", ".join(f"{c}: {n} rows" for c, n in result.rows.items())
    verb = "published" if result.created else "unchanged (same content already published as)"
    out.print(f"{verb} [bold]{result.ref}[/] ({rows})\n{result.path}")


@app.command()
def push(ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@latest")],
         repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo ORG/NAME")],
         endpoint: Annotated[str | None, typer.Option(help="Hub URL (private deployments)", envvar="HF_ENDPOINT")]
         = None,
         private: Annotated[bool, typer.Option("--private", help="create the repo private")] = False,
         warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Push a release to the Hugging Face Hub as one commit tagged with its version."""
    from factory.hub import PushError, describe
    from factory.hub import push as push_release
    from factory.releases import ReleaseError

    try:
        result = push_release(ref, repo, warehouse=warehouse, endpoint=endpoint, private=private)
    except (PushError, ReleaseError) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # HTTP errors from the Hub: one line, never the request headers
        if os.environ.get("FACTORY_DEBUG"):
            raise
        raise fail(f"push to {repo} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")\
            from None
    out.print(describe(result))


@app.command()
def schedule(pipeline: Path,
             cron: Annotated[str, typer.Option(help='cron expression in UTC, e.g. "0 3 * * *"')],
             push: Annotated[str | None, typer.Option("--push", help="also push each release to ORG/NAME")] = None,
             endpoint: Annotated[str | None, typer.Option(help="Hub URL for --push", envvar="HF_ENDPOINT")] = None,
             private: Annotated[bool, typer.Option("--private")] = False,
             once_at: Annotated[str | None, typer.Option(help="run only the tick scheduled at this ISO time")] = None,
             once: Annotated[bool, typer.Option("--once", help="run only the latest due tick (cron jobs)")] = False,
             warehouse: Annotated[Path | None, typer.Option("--warehouse", "-w", envvar="FACTORY_WAREHOUSE",
                                                           help="override the pipeline's warehouse")] = None) -> None:
    """Run PIPELINE.yaml at every cron tick (publishing, optionally pushing); one tick at a time."""
    import logging
    from datetime import UTC, datetime

    from factory import schedule as sched

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sched.check_cron(cron)
        load_pipeline(pipeline)
    except (ValueError, ConfigError) as exc:
        raise fail(str(exc)) from None
    if once_at or once:
        try:
            at = datetime.fromisoformat(once_at) if once_at else sched.latest_tick(cron, datetime.now(UTC))
        except ValueError:
            raise fail(f"--once-at {once_at!r} is not an ISO time (e.g. 2026-01-02T03:00)") from None
        result = sched.run_tick(pipeline, at, warehouse=warehouse, push_repo=push, endpoint=endpoint,
                                private=private)
        out.print(f"{result.run_id}: {result.status}" + (f" — {result.release}" if result.release else "")
                  + (f" — {result.error}" if result.error else ""))
        if result.status == "failed":
            raise typer.Exit(1)
        return
    try:
        sched.serve(pipeline, cron, warehouse=warehouse, push_repo=push, endpoint=endpoint, private=private)
    except KeyboardInterrupt:
        err.print("scheduler stopped")


class DedupTable(StrEnum):
    samples = "samples"
    tasks = "tasks"


@app.command()
def dedup(table: Annotated[DedupTable, typer.Argument(help="samples or tasks")] = DedupTable.samples,
          run_id: Annotated[str | None, typer.Option("--run", help="dedup this run's records against the rest "
                                                    "(default: all kept records against each other)")] = None,
          methods: Annotated[str, typer.Option(help="comma-separated: exact,near,semantic")] = "exact,near",
          near_threshold: Annotated[float, typer.Option(help="Jaccard similarity of shingle sets")] = 0.45,
          semantic_threshold: Annotated[float, typer.Option(help="cosine similarity of embeddings")] = 0.8,
          embedder: Annotated[str, typer.Option(help="minilm or minilm-static")] = "minilm",
          release: Annotated[str | None, typer.Option(help="dedup a published release's sft records instead "
                                                      "(NAME@VERSION or NAME@latest)")] = None,
          limit: Annotated[int, typer.Option(help="clusters to show")] = 20,
          warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Report exact, near and semantic duplicates in a warehouse table or a release (read-only)."""
    from pydantic import ValidationError

    from stages.dedup import DedupConfig, dedup_table

    wh = Warehouse(warehouse)
    if not wh.catalog_path.exists():
        raise fail(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    try:
        cfg = DedupConfig(table=table.value, methods=[m.strip() for m in methods.split(",") if m.strip()],
                          near_threshold=near_threshold, semantic_threshold=semantic_threshold, embedder=embedder)
    except ValidationError as exc:
        raise fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    if release is not None:
        from factory import releases
        from stages.dedup import find_duplicates

        if table is not DedupTable.samples or run_id:
            raise fail("--release dedups the release's sft rows (samples); drop --run and the table argument")
        try:
            rows = releases.open(release, wh).to_polars("sft")
        except releases.ReleaseError as exc:
            raise fail(str(exc)) from None
        outcome = find_duplicates(wh, rows, rows.clear(), cfg)  # stored signatures/embeddings are reused
        scope = f"release {release}"
    else:
        outcome = dedup_table(wh, cfg, run_id)
        scope = f"run {run_id} against the rest" if run_id else "all kept records"
    res = outcome.result
    texts = outcome.records.select(pl.col("id").alias("record_id"), "text", "run_id")
    out.print(f"{table.value}: {scope}: {outcome.records.filter(~pl.col('fixed')).height} records, "
              f"{res.drops.height} duplicates {res.counts()}")
    if res.clusters.height:
        shown = res.clusters.join(texts, on="record_id", how="left").sort("cluster_id", pl.col("kept").not_())
        first = shown["cluster_id"].unique(maintain_order=True).head(limit)
        print_frame(shown.filter(pl.col("cluster_id").is_in(first.implode()))
                    .select("cluster_id", "kind", "kept", "similarity", "record_id", "run_id", "text"), "clusters")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
