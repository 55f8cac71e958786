"""The ``factory`` command: a thin layer over the Python API (runner, warehouse, SQL front)."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import polars as pl
import typer
from rich.markup import escape
from typer.core import TyperGroup

from factory import faults
from factory.backends.base import BackendUnavailable
from factory.config import ConfigError, load_pipeline
from factory.sql import QueryError
from factory.terminal import err, fail, out, print_frame
from factory.warehouse import Warehouse


class FactoryGroup(TyperGroup):
    """The CLI's one error boundary: an exception that no command handled becomes one line and an exit code
    (``factory.faults``); with ``factory --debug …`` (or FACTORY_DEBUG=1) it propagates with its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        saved = os.environ.get("FACTORY_DEBUG")
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.Abort, BrokenPipeError):
            raise  # click's and typer's own, and a closed pipe (`| head`), which typer ends quietly
        except Exception as exc:
            if os.environ.get("FACTORY_DEBUG"):
                raise
            message, code = faults.describe(exc)
            raise fail(message, code) from None
        finally:  # --debug holds for this invocation only (tests invoke the app many times in one process)
            if saved is None:
                os.environ.pop("FACTORY_DEBUG", None)
            else:
                os.environ["FACTORY_DEBUG"] = saved


app = typer.Typer(help="The dataset factory: self-evolving LLM training data.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=FactoryGroup)

WarehouseOpt = Annotated[Path, typer.Option("--warehouse", "-w", envvar="FACTORY_WAREHOUSE",
                                            help="warehouse folder")]


@app.callback()
def _global_options(debug: Annotated[bool, typer.Option(
        "--debug", help="show the Python traceback behind an error (before the command: factory --debug run …)")]
        = False) -> None:
    if debug:
        os.environ["FACTORY_DEBUG"] = "1"


def command_error(exc: Exception) -> Exception:
    """What a command raises for an exception it caught: the exception itself under --debug; else one line,
    an expected fault's (busy, damaged, disk full: ``factory.faults``) or the exception's type and message."""
    if os.environ.get("FACTORY_DEBUG"):
        return exc
    message, code = faults.describe(exc)
    return fail(f"{type(exc).__name__}: {exc}") if code == faults.EXIT_BUG else fail(message, code)


def pipeline_of(path: Path, warehouse: Path | None = None):
    """The validated pipeline (its warehouse overridden when given), or one clean error line."""
    try:
        cfg = load_pipeline(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if warehouse is not None:
        cfg.warehouse = warehouse
    return cfg


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
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
        retry_errors: Annotated[bool, typer.Option("--retry-errors", help="ask again the model calls that failed "
                                                   "(model_error rejects) in finished stages, re-running them and "
                                                   "the stages after them")] = False,
        wait: Annotated[bool, typer.Option("--wait", help="if this run is already running in another process, "
                                           "wait for it to finish instead of refusing")] = False) -> None:
    """Run (or resume) the pipeline described in PIPELINE.yaml."""
    from factory.call_errors import ModelErrors
    from factory.run_lock import RunBusy
    from factory.runner import run_pipeline
    from factory.summary import print_summary

    cfg = pipeline_of(pipeline, warehouse)
    if run_id is not None:  # it names a folder: the rule of names (no '/', '..', capitals or 300 characters)
        from factory.names import NAME_RULE, is_name, shown

        if not is_name(run_id):
            raise fail(f"--run-id {shown(run_id)} must be {NAME_RULE}")
    try:
        result = run_pipeline(cfg, run_id=run_id, show_progress=not quiet, retry_errors=retry_errors, wait=wait)
    except RunBusy as exc:  # "run X is already running (pid P on host H)…"
        raise fail(str(exc)) from None
    except ModelErrors as exc:  # already one line naming the stage, the count and the first error
        if os.environ.get("FACTORY_DEBUG"):
            raise
        raise fail(str(exc)) from None
    except (BackendUnavailable, ValueError, RuntimeError) as exc:
        raise command_error(exc) from None
    print_summary(result.warehouse, result.run_id, out)


@app.command()
def status(run_id: Annotated[str | None, typer.Argument(help="a run id; default: list all runs")] = None,
           warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Runs, their stages, counts in/out/rejected, tokens and time."""
    wh = Warehouse(warehouse)
    if not wh.catalog_path.exists():
        raise fail(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    from factory.summary import shown_status, stage_table

    # read-only throughout (no `mark_dead_runs`): status must work on a full disk and beside a running job
    if run_id is None:
        df = wh.query("""SELECT r.run_id, r.pipeline, r.status, r.round, r.started_at, r.finished_at,
                    count(s.stage) AS stages, sum(s.prompt_tokens + s.completion_tokens) AS tokens,
                    round(sum(s.seconds), 1) AS seconds, r.host, r.pid
                    FROM runs r LEFT JOIN stages s USING (run_id) GROUP BY ALL ORDER BY r.started_at""")
        print_frame(shown_status(df), "runs")
        return
    runs = shown_status(wh.query("SELECT * FROM runs WHERE run_id = ?", [run_id]))
    if runs.is_empty():
        raise fail(f"no run {run_id!r} in {wh.root} (see `factory status`)")

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
        format: Annotated[Format, typer.Option("--format", "-f", help="csv: nested columns as JSON text")]
        = Format.table,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="write to a file")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, help="table: rows shown (the rest are counted)")]
        = 1000,
        warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Query everything in the warehouse (tasks, samples, rejects, runs, stages…) read-only.

    The time and memory limits (FACTORY_SQL_TIMEOUT_S, FACTORY_SQL_MEMORY_LIMIT) cover fetching and
    writing the result too; files are capped at FACTORY_SQL_MAX_OUTPUT (default 10GB)."""
    from factory.sql import stream
    from factory.sql_output import export, table_rows

    if format is Format.parquet and output is None:
        raise fail("--format parquet needs --output FILE")
    if format is Format.table and output:
        raise fail("--format table prints to the terminal; use csv, json or parquet with --output")
    wh = Warehouse(warehouse)
    if not wh.catalog_path.is_file():  # never create one: a mistyped -w is an error, not a new warehouse
        raise fail(f"no warehouse at {wh.root} (no catalog.duckdb there; check --warehouse / FACTORY_WAREHOUSE)")
    try:
        with stream(wh, query) as result:
            if format is Format.table:
                shown = table_rows(result, limit)  # at most `limit` rows: drawing them is bounded too
                print_frame(shown.frame)
                if shown.note():
                    err.print(shown.note(), highlight=False)
                return
            rows = export(result, format.value, output, sys.stdout)
    except QueryError as exc:
        raise fail(str(exc)) from None
    if output:
        err.print(f"wrote {rows} rows to {output}", highlight=False)


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
        faults.check_catalog(wh)  # a damaged catalog stops here, before anything is written
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


TABLES = ("samples", "tasks")


@app.command()
def dedup(targets: Annotated[list[str] | None, typer.Argument(
              help="samples or tasks (a warehouse table), or JSONL / CSV / Parquet files or folders")] = None,
          run_id: Annotated[str | None, typer.Option("--run", help="dedup this run's records against the rest "
                                                    "(default: all kept records against each other)")] = None,
          methods: Annotated[str, typer.Option(help="comma-separated: exact,near,semantic")] = "exact,near",
          near_threshold: Annotated[float, typer.Option(help="Jaccard similarity of character 4-gram sets")] = 0.82,
          semantic_threshold: Annotated[float, typer.Option(help="cosine similarity of embeddings")] = 0.8,
          embedder: Annotated[str, typer.Option(help="minilm, minilm-static or minilm-two-step")] = "minilm",
          release: Annotated[str | None, typer.Option(help="dedup a published release's sft records instead "
                                                      "(NAME@VERSION or NAME@latest)")] = None,
          text_column: Annotated[list[str] | None, typer.Option(
              "--text-column", help="files: the column(s) compared, joined by newlines (repeatable; default: "
              "text, else the pipeline's fields)")] = None,
          id_column: Annotated[str | None, typer.Option(help="files: a unique id column (default: file:line)")] = None,
          pipeline: Annotated[Path | None, typer.Option(help="files: take fields and thresholds from this pipeline's "
                                                        "dedup stage")] = None,
          output: Annotated[Path | None, typer.Option("--output", "-o", help="files: where kept.parquet and "
                                                      "dropped.parquet go (default: FILE.dedup/ next to the first)")]
          = None,
          max_drop_fraction: Annotated[float, typer.Option(help="files: refuse, writing nothing, above this share "
                                                           "of dropped rows")] = 0.5,
          limit: Annotated[int, typer.Option(help="clusters to show")] = 20,
          warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Exact, near and semantic duplicates: a report on a warehouse table or a release (read-only), or
    kept.parquet + dropped.parquet for plain files."""
    from pydantic import ValidationError

    from stages.dedup import DedupConfig, dedup_table

    targets = targets or ["samples"]
    is_table = len(targets) == 1 and targets[0] in TABLES and not Path(targets[0]).exists()
    try:
        cfg = DedupConfig(table=targets[0] if is_table else "samples",
                          methods=[m.strip() for m in methods.split(",") if m.strip()],
                          near_threshold=near_threshold, semantic_threshold=semantic_threshold, embedder=embedder,
                          max_drop_fraction=max_drop_fraction)
    except ValidationError as exc:
        raise fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    if not is_table:
        if release or run_id:
            raise fail("--release and --run dedup warehouse records; drop them to dedup files")
        _dedup_files([Path(t) for t in targets], cfg, text_column, id_column, pipeline, output, limit)
        return
    wh = Warehouse(warehouse)
    if not wh.catalog_path.exists():
        raise fail(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    table = targets[0]
    if release is not None:
        from factory import releases
        from stages.dedup import find_duplicates

        if table != "samples" or run_id:
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
    total = outcome.records.filter(~pl.col("fixed")).height
    share = res.drops.height / total if total else 0.0
    guard = (f" (over max_drop_fraction {cfg.max_drop_fraction}: the stage would stop)"
             if share > cfg.max_drop_fraction else "")
    out.print(f"{table}: {scope}: {total} records, {res.drops.height} duplicates {res.counts()}, "
              f"{share:.1%} of the records{guard}")
    _show_clusters(res, outcome.records.select(pl.col("id").alias("record_id"), "text", "run_id"), limit)


def _show_clusters(res, texts: pl.DataFrame, limit: int) -> None:
    if res.clusters.height:
        shown = res.clusters.join(texts, on="record_id", how="left").sort("cluster_id", pl.col("kept").not_())
        first = shown["cluster_id"].unique(maintain_order=True).head(limit)
        cols = [c for c in ("cluster_id", "kind", "kept", "similarity", "record_id", "run_id", "text")
                if c in shown.columns]
        print_frame(shown.filter(pl.col("cluster_id").is_in(first.implode())).select(cols), "clusters")


def _dedup_files(paths: list[Path], cfg, text_column: list[str] | None, id_column: str | None,
                 pipeline: Path | None, output: Path | None, limit: int) -> None:
    """`factory dedup FILE…`: kept.parquet and dropped.parquet (+ unreadable.parquet) in one folder."""
    from factory.dedup import TooManyDrops
    from factory.dedup.files import dedup_files
    from factory.input_files import InputFileError
    from stages.dedup import DedupConfig

    if pipeline is not None:
        try:
            stages = [s for s in load_pipeline(pipeline).stages if isinstance(s, DedupConfig)]
        except ConfigError as exc:
            raise fail(str(exc)) from None
        if not stages:
            raise fail(f"{pipeline}: the pipeline has no dedup stage to take fields and thresholds from")
        cfg = stages[0].model_copy(update={"max_drop_fraction": cfg.max_drop_fraction})
        text_column = text_column or cfg.text_fields()
    try:
        found = dedup_files(paths, cfg.settings(), text_column or ["text"], id_column, cfg.max_drop_fraction,
                            cfg.embedder)
        written = found.write(output or paths[0].with_name(paths[0].name + ".dedup"))
    except (InputFileError, TooManyDrops) as exc:
        raise fail(str(exc)) from None
    res = found.result
    total = found.rows.height
    out.print(f"{total} rows from {len(paths)} input(s), {res.drops.height} duplicates {res.counts()} "
              f"({res.drops.height / max(total, 1):.1%}); kept {total - res.drops.height}"
              + (f"; {found.unreadable.height} unreadable row(s)" if found.unreadable.height else ""))
    for name, path in written.items():
        out.print(f"  {name}: {path}")
    _show_clusters(res, found.rows.select(pl.col("_id").alias("record_id"), pl.col("_text").alias("text")), limit)


@app.command("eval")
def eval_model(
        model: Annotated[str, typer.Argument(help="embedded name, .gguf file, model folder, or a served model's name")],
        against: Annotated[str | None, typer.Option(help="also evaluate this model (A) and compare MODEL (B) "
                                                    "with it, paired, on the same items")] = None,
        suites: Annotated[str, typer.Option(help="comma-separated: arithmetic,ifeval,nll")] = "arithmetic,ifeval,nll",
        n: Annotated[str | None, typer.Option(help="items per suite: N for all, or e.g. arithmetic=300,ifeval=70 "
                                              "(default: 100 arithmetic, 70 ifeval, 52 nll)")] = None,
        seed: Annotated[int, typer.Option(help="which eval items (the suites are made from it)")] = 0,
        max_tokens: Annotated[int | None, typer.Option(help="answer budget (default: 96 arithmetic, 192 ifeval)")]
        = None,
        temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
        backend: Annotated[str | None, typer.Option(help="backend kind: transformers, openai, vllm")] = None,
        backend_config: Annotated[Path | None, typer.Option(help="YAML with backend options (or a pipeline "
                                                            "file: its backend: section)")] = None,
        batch_size: Annotated[int | None, typer.Option(help="override the backend's batch size")] = None,
        threads: Annotated[int | None, typer.Option(help="transformers: torch CPU threads (1 is faster on a "
                                                    "machine busy with other work)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
        warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Evaluate MODEL on held-out suites (accuracy with 95% CIs); --against A adds a paired comparison."""
    from pydantic import ValidationError

    from factory.evaluation import EvalConfig, EvalError, compare_runs, evaluate, record_comparison, report
    from factory.evaluation import backend_config as make_backend
    from factory.evaluation.run import parse_sizes

    try:
        cfg = EvalConfig(suites=[s.strip() for s in suites.split(",") if s.strip()], seed=seed,
                         max_tokens=max_tokens, temperature=temperature, **parse_sizes(n))
        overrides = {"batch_size": batch_size, "threads": threads}
        b_cfg = make_backend(model, backend, backend_config, overrides)
        a_cfg = make_backend(against, backend, backend_config, overrides) if against else None
        wh = Warehouse(warehouse)
        a_res = evaluate(a_cfg, cfg, wh, show_progress=not quiet) if a_cfg else None
        b_res = evaluate(b_cfg, cfg, wh, show_progress=not quiet)
        comparison = compare_runs(wh, a_res.run_id, b_res.run_id, cfg.n_boot) if a_res else None
        if comparison is not None:
            record_comparison(wh, comparison)
    except ValidationError as exc:
        raise fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    except (EvalError, BackendUnavailable, ValueError, RuntimeError) as exc:
        raise command_error(exc) from None
    if as_json:
        sys.stdout.write(report.as_json(b_res, a_res, comparison) + "\n")
    else:
        report.show(out, b_res, a_res, comparison)


@app.command()
def decontam(source: Annotated[str, typer.Argument(help="a release NAME@VERSION, or a .jsonl / .parquet file")],
             ngram: Annotated[int, typer.Option(help="n-gram length in words")] = 8,
             warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Check training data against the eval suites; exits 1 naming the overlapping rows if any."""
    from factory.evaluation.decontam import ContaminationError, assert_decontaminated, check_release
    from factory.releases import ReleaseError

    try:
        if source.endswith((".jsonl", ".parquet")):
            path = Path(source)
            if not path.is_file():
                raise fail(f"{path}: no such file")
            try:
                rows = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
                raise fail(f"{path}: cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
            assert_decontaminated(rows, str(path), ngram)
            checked = rows.height
        else:
            checked = check_release(source, Warehouse(warehouse), ngram)
    except (ContaminationError, ReleaseError) as exc:
        raise fail(str(exc)) from None
    out.print(f"{source}: {checked} rows, no overlap with the eval suites")


@app.command()
def doctor(warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """Check every registered file and release against its sha256 (read-only); exit 1 if any is damaged."""
    from factory.doctor import diagnose

    wh = Warehouse(warehouse)
    if not wh.catalog_path.exists():
        raise fail(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    d = diagnose(wh)
    for damage in d.damaged:
        out.print(f"damaged: {damage.line()}", markup=False, highlight=False, soft_wrap=True)
    for note in d.notes:
        out.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    checked = f"checked {d.files_checked} registered file(s) and {d.releases_checked} release(s)"
    if d.ok:
        out.print(f"{checked}: all match their checksums", markup=False, highlight=False, soft_wrap=True)
        return
    out.print(f"{checked}: {len(d.damaged)} damaged; run `factory repair -w {wh.root}`", markup=False,
              highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def repair(warehouse: WarehouseOpt = Path("warehouse"),
           cache: Annotated[bool, typer.Option("--cache", help="only check the call cache; a damaged one is moved "
                                                "to quarantine/ and its calls are made again")] = False) -> None:
    """Quarantine damaged files (to quarantine/), re-make the stages that produced them, restore release files."""
    from factory.doctor import diagnose, repair_cache
    from factory.doctor import repair as run_repair

    wh = Warehouse(warehouse)
    if not wh.catalog_path.exists():
        raise fail(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    if cache:
        out.print(repair_cache(wh), markup=False, highlight=False, soft_wrap=True)
        return
    result = run_repair(wh, log=lambda m: out.print(m, markup=False, highlight=False, soft_wrap=True))
    for line in result.unresolved:
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False)
    left = diagnose(wh)
    if result.unresolved or not left.ok:
        raise typer.Exit(1)
    out.print("repaired: " + (", ".join(f"run {r} ({', '.join(s)})" for r, s in result.rerun.items())
                              or "nothing to re-make") + f"; {len(result.restored)} release file(s) restored; "
              f"checked {left.files_checked} file(s) and {left.releases_checked} release(s): all match",
              markup=False, highlight=False, soft_wrap=True)


from factory.training.command import train as _train  # noqa: E402 - imports nothing heavy; TRL loads on use

app.command("train")(_train)



@app.command()
def evolve(pipeline: Path,
           rounds: Annotated[int | None, typer.Option(help="rounds to run (default: the evolve: section's)")] = None,
           warehouse: Annotated[Path | None, typer.Option("--warehouse", "-w", envvar="FACTORY_WAREHOUSE",
                                                         help="override the pipeline's warehouse")] = None,
           quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False) -> None:
    """Self-evolution: each round generates with model_r, publishes, trains model_r+1 and evaluates it
    against model_r (paired), until the gain is no longer significant; resumes after a kill."""
    from factory.evolve import EvolveError
    from factory.evolve import evolve as run_evolve

    cfg = pipeline_of(pipeline, warehouse)
    try:
        rows = run_evolve(cfg, rounds, show_progress=not quiet, log=lambda m: err.print(f"[bold]evolve:[/] {m}"))
    except (EvolveError, BackendUnavailable, ValueError, RuntimeError) as exc:
        raise command_error(exc) from None
    if not rows.is_empty():
        print_frame(rows.select("round", "model_in", "model_out", "release", "sft_rows", "preference_rows",
                                "gain_significant", "generate_s", "train_s", "eval_s", "wall_s"), "rounds")
        wh = Warehouse(cfg.warehouse)
        print_frame(wh.query("SELECT round, suite, metric, model_in_value, model_out_value, diff, diff_ci_low, "
                             "diff_ci_high, p_mcnemar, significant FROM round_evals WHERE evolve_id = ? "
                             "ORDER BY round, suite", [rows["evolve_id"][0]]), "paired: model_out − model_in")


@app.command()
def report(run_id: Annotated[str | None, typer.Argument(help="a run id (default: the latest run)")] = None,
           evolve: Annotated[str | None, typer.Option(help="an evolve run: its pipeline's name or evolve id")] = None,
           release: Annotated[str | None, typer.Option(help="the runs behind a release, NAME@VERSION")] = None,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="the HTML file (default: "
                                                       "WAREHOUSE/reports/NAME.html)")] = None,
           usd_per_mtok: Annotated[float | None, typer.Option(help="price per 1M tokens, for a cost per kept "
                                                              "sample in dollars")] = None,
           png: Annotated[Path | None, typer.Option(help="also save a screenshot of the page's top (headless "
                                                    "chromium)")] = None,
           warehouse: WarehouseOpt = Path("warehouse")) -> None:
    """One self-contained HTML page (works offline) about a run, an evolve run or a release."""
    from factory.report import ReportError, chromium, write_report

    try:
        path = write_report(Warehouse(warehouse), output, run_id=run_id, evolve=evolve, release=release,
                            usd_per_mtok=usd_per_mtok)
        out.print(f"report: {path}", markup=False, highlight=False, soft_wrap=True)
        if png is not None:
            out.print(f"screenshot: {chromium.screenshot(path, png)}", markup=False, highlight=False, soft_wrap=True)
    except (ReportError, chromium.ChromiumMissing, RuntimeError) as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
