"""Map stages: a stage that processes one batch of its input table at a time, knowing nothing of where.

A global stage (``run(ctx, cfg) -> StageOutput``, factory/stage.py) sees whole tables: the
self-instruct pool, dedup's index, publish. A map stage handles each record on its own (score,
self_label, gold_samples…), so the runner can cut its input into shards of ``batch_rows`` rows, run
them anywhere (an executor: in-process, or Ray actors on a cluster), write one Parquet file per shard
and table, and resume at the shard. Peak memory is bounded by the batch, not the table.

A map stage is a class registered with ``@register_map(Config)`` beside the stage's ``run`` function::

    @register_map(ScoreConfig)
    class ScoreMap(MapStage):
        input_table = "samples"
        def process(self, batch, ctx, cfg) -> StageOutput: ...

Shards are cut over the raw rows of the input files (in catalog order), so their boundaries depend
only on what earlier stages registered and on ``batch_rows``: every executor, and every resumed run,
cuts the same shards and so produces the same files, with the same content-derived record ids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from factory.call_log import CALLS_TABLE
from factory.context import StageContext
from factory.host import sha256_file
from factory.records import conform, frame
from factory.registry import Entry, Registry
from factory.stage import StageOutput
from factory.warehouse import ID_COLUMNS, RECORD_KIND_OF_TABLE, RECORD_TABLES, atomic_write_parquet


@dataclass(frozen=True)
class Piece:
    """``rows`` rows of one registered file, from ``offset``."""

    path: str  # relative to the warehouse root
    offset: int
    rows: int


@dataclass(frozen=True)
class ShardSpec:
    """One batch of a map stage's input: rows [start, end) of the concatenated input files."""

    key: str
    pieces: tuple[Piece, ...]

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "pieces": [asdict(p) for p in self.pieces]})

    @staticmethod
    def from_json(text: str) -> ShardSpec:
        data = json.loads(text)
        return ShardSpec(data["key"], tuple(Piece(**p) for p in data["pieces"]))


@dataclass
class ShardResult:
    """What a worker reports for a finished shard: the files it wrote and its counts (JSON-able)."""

    key: str
    files: list[dict[str, Any]]  # {table, path (relative), rows, bytes, sha256}
    stats: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @staticmethod
    def from_json(text: str) -> ShardResult:
        return ShardResult(**json.loads(text))


@dataclass
class MapJob:
    """Everything a worker needs to run shards of one map stage, picklable (no connections, no models).

    ``sources`` lists, per table, the files earlier stages of the run registered (relative paths), so
    workers read inputs and side tables straight from the (shared) warehouse folder and never open the
    catalog, which only the driver writes.
    """

    root: str
    run_id: str
    stage_name: str
    position: int
    round: int
    seed: int
    earlier_stages: list[str]
    stage_config: Any  # the stage's pydantic config
    backend_config: Any | None
    sources: dict[str, list[str]]
    shared: dict[str, Any] = field(default_factory=dict)  # MapStage.plan's result
    cwd: str = "."  # the driver's working directory: relative paths in stage configs resolve from it
    max_error_fraction: float | None = None  # backend.max_error_fraction (factory/call_errors.py)

    @property
    def kind(self) -> str:
        return self.stage_config.kind


class MapContext(StageContext):
    """A StageContext whose inputs come from the job's file lists instead of the catalog."""

    sources: dict[str, list[str]]

    def _paths(self, table: str) -> list[Path]:
        return [self.warehouse.root / p for p in self.sources.get(table, [])]

    def scan(self, table: str) -> pl.LazyFrame | None:
        """A lazy scan over every earlier file of ``table`` in this run (None when there is none)."""
        paths = self._paths(table)
        return pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore") if paths else None

    def rejected_ids(self, table: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that an earlier stage of this run rejected as records of ``table``."""
        kind = RECORD_KIND_OF_TABLE.get(table)
        paths = self._paths("rejects")
        if kind is None or not paths or not ids:
            return set()
        hit = (pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore")
               .filter((pl.col("record_kind") == kind) & pl.col("record_id").is_in(list(ids)))
               .select("record_id").collect())
        return set(hit["record_id"].to_list())

    def kept_only(self, table: str, df: pl.DataFrame) -> pl.DataFrame:
        id_col = ID_COLUMNS.get(table)
        if id_col is None or df.is_empty():
            return df
        dropped = self.rejected_ids(table, df[id_col].to_list())
        return df.filter(~pl.col(id_col).is_in(list(dropped))) if dropped else df

    def inputs(self, table: str) -> pl.DataFrame:
        """The whole kept table (for small side tables; map over the batch instead of this)."""
        lazy = self.scan(table)
        if lazy is None:
            kind = RECORD_TABLES.get(table)
            return frame(kind) if kind else pl.DataFrame()
        return self.kept_only(table, lazy.collect())

    def lookup(self, table: str, column: str, values: Sequence[Any]) -> pl.DataFrame:
        """Kept rows of a side table whose ``column`` is one of ``values`` (e.g. the batch's ids)."""
        lazy = self.scan(table)
        if lazy is None or not values:
            return pl.DataFrame()
        return self.kept_only(table, lazy.filter(pl.col(column).is_in(list(values))).collect())


class MapStage:
    """Base of map stages. Subclasses set ``input_table`` and implement ``process``; instances live in one
    worker (or the driver), so ``setup`` may keep loaded things (eval sets…) on ``self``."""

    #: the table whose kept records are cut into batches
    input_table: ClassVar[str]

    @classmethod
    def applies(cls, cfg: Any) -> bool:
        """Whether this config can run batch by batch (else the stage's global ``run`` runs it)."""
        return True

    def plan(self, ctx: MapContext, cfg: Any) -> dict[str, Any]:
        """Once per stage, on the driver: facts every batch needs (JSON-able), e.g. a seeded choice."""
        return {}

    def prelude(self, ctx: MapContext, cfg: Any) -> StageOutput | None:
        """Once per stage, on the driver, after ``plan``: records that belong to no batch (the judge's
        calibration judgments). They are written as the stage's ``prelude`` shard, and made only once:
        a resumed stage whose prelude shard is registered does not call this again."""
        return None

    def setup(self, ctx: MapContext, cfg: Any, shared: dict[str, Any]) -> None:
        """Once per worker, before its first batch."""
        self.shared = shared

    def select(self, batch: pl.DataFrame, ctx: MapContext, cfg: Any) -> pl.DataFrame:
        """Rows of the batch this stage works on (default: all kept records)."""
        return batch

    def process(self, batch: pl.DataFrame, ctx: MapContext, cfg: Any) -> StageOutput:
        raise NotImplementedError

    def summarize(self, outputs: Mapping[str, list[Path]], shard_metrics: list[dict[str, Any]],
                  cfg: Any) -> dict[str, Any]:
        """The stage's metrics from its shards' files and per-shard metrics (default: sums of numbers)."""
        total: dict[str, Any] = {}
        for metrics in shard_metrics:
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total


MapStageFactory = Callable[[], MapStage]
MAP_STAGES: Registry[MapStageFactory] = Registry("map stage")
#: ``@register_map(Config)`` on a MapStage subclass makes the stage of that kind run batch by batch
register_map = MAP_STAGES.register


def registered_maps() -> Mapping[str, Entry[MapStageFactory]]:
    from factory.stage import registered

    registered()  # importing the stages registers their map classes too
    return MAP_STAGES.entries


# -- planning ------------------------------------------------------------------------------------------


#: the shard key of a stage's prelude (batch keys are row ranges: "000000000000-000000010000")
PRELUDE_KEY = "prelude"


def plan_shards(files: Sequence[tuple[str, int]], batch_rows: int) -> list[ShardSpec]:
    """Cut the concatenation of ``files`` ((path, rows), in order) into shards of ``batch_rows`` rows."""
    specs: list[ShardSpec] = []
    pieces: list[Piece] = []
    start = filled = 0
    for path, rows in files:
        offset = 0
        while offset < rows:
            take = min(rows - offset, batch_rows - filled)
            pieces.append(Piece(path, offset, take))
            offset += take
            filled += take
            if filled == batch_rows:
                specs.append(ShardSpec(f"{start:012d}-{start + filled:012d}", tuple(pieces)))
                start, filled, pieces = start + filled, 0, []
    if pieces:
        specs.append(ShardSpec(f"{start:012d}-{start + filled:012d}", tuple(pieces)))
    return specs


# -- running one shard (the same code in every executor) ------------------------------------------------


def make_context(job: MapJob, backend_loader: Callable[[], Any] | None, cache: Any,
                 show_progress: bool = False) -> MapContext:
    from factory.warehouse import Warehouse

    extra = {"max_error_fraction": job.max_error_fraction} if job.max_error_fraction is not None else {}
    ctx = MapContext(run_id=job.run_id, stage_name=job.stage_name, position=job.position, round=job.round,
                     seed=job.seed, warehouse=Warehouse(job.root), earlier_stages=job.earlier_stages,
                     backend_loader=backend_loader, cache=cache, show_progress=show_progress, **extra)
    ctx.sources = job.sources
    return ctx


def read_shard(ctx: MapContext, table: str, spec: ShardSpec) -> pl.DataFrame:
    """The shard's rows, less records an earlier stage rejected."""
    frames = [pl.scan_parquet(ctx.warehouse.root / p.path).slice(p.offset, p.rows).collect() for p in spec.pieces]
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame()
    batch = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    return ctx.kept_only(table, batch)


def shard_path(job: MapJob, table: str, key: str) -> Path:
    return Path("runs") / job.run_id / job.stage_name / table / f"{key}.parquet"


def run_shard(stage: MapStage, job: MapJob, ctx: MapContext, spec: ShardSpec) -> ShardResult:
    """Read, select, process and write one shard; the caller registers the result."""
    began = time.perf_counter()
    before, errors_before = asdict(ctx.usage), ctx.errors.errors
    ctx.call_log.take()  # rows a failed earlier attempt left on this worker's context are not this shard's
    batch = stage.select(read_shard(ctx, stage.input_table, spec), ctx, job.stage_config)
    out = stage.process(batch, ctx, job.stage_config) if batch.height else StageOutput()
    return write_shard(job, ctx, spec.key, out, began, before, errors_before)


def write_shard(job: MapJob, ctx: MapContext, key: str, out: StageOutput, began: float, before: dict[str, Any],
                errors_before: int) -> ShardResult:
    """Write a shard's tables (its records, rejects and model calls) and count what it did since ``before``."""
    ctx.errors.check(final=True)  # a shard whose calls failed beyond the backend's limit stops the stage
    rejects = out.rejects if isinstance(out.rejects, pl.DataFrame) else frame("reject", out.rejects)
    tables = {**out.tables, "rejects": rejects, CALLS_TABLE: ctx.call_log.take(key)}  # its model calls
    files = []
    for table, df in tables.items():
        if df.is_empty():
            continue  # an empty shard registers no file for the table (the pending row marks it done)
        if table in RECORD_TABLES:
            df = conform(RECORD_TABLES[table], df)
        rel = shard_path(job, table, key)
        path = Path(job.root) / rel
        atomic_write_parquet(df, path)
        files.append({"table": table, "path": str(rel), "rows": df.height, "bytes": path.stat().st_size,
                      "sha256": sha256_file(path)})
    usage = {k: v - before[k] for k, v in asdict(ctx.usage).items()}
    stats = {"records_in": out.records_in, "records_out": out.records_out, "records_rejected": rejects.height,
             "seconds": round(time.perf_counter() - began, 3), "metrics": out.metrics,
             "model_errors": ctx.errors.errors - errors_before, **usage}
    return ShardResult(key, files, stats)
