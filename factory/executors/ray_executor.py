"""Map stages on a Ray cluster, through Ray Data: one actor per model copy, shards written by workers.

The driver turns the shards still to do into a small dataset of shard descriptions
(``ray.data.from_items``, one block each) and maps it with ``map_batches`` over an actor class,
:class:`ShardWorker`, that loads the stage and the backend once per actor (``concurrency`` actors,
``num_gpus`` each where the model needs a GPU). Each actor reads its shard's rows straight from the
warehouse folder (which must be on storage every node sees), runs the stage's ``process``, writes the
shard's Parquet files and returns only their paths and counts; the driver registers each shard as it
streams back, so a killed driver or worker loses at most the shards in flight. Ray Data restarts a
dead actor and retries its task (``max_restarts=-1``, ``max_task_retries=-1`` by default for actor
pools), and a shard rewritten by a retry has the same content, path and ids.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field

from factory.cache import CallCache, WarehouseCalls
from factory.executors.base import ExecutorConfig, map_reduce_here, register_executor
from factory.map_stage import MapJob, ShardResult, ShardSpec, make_context, registered_maps, run_shard


class RayExecutorConfig(ExecutorConfig):
    kind: Literal["ray"] = "ray"
    address: str | None = Field("auto", description="'auto': the running cluster (`ray start`, RAY_ADDRESS); "
                                "an address 'host:port' or 'ray://…'; null: start a local one in this process")
    concurrency: int = Field(2, ge=1, description="actors, i.e. model copies working at once")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per actor")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (set it for GPU backends such as vllm)")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env for the actors (pip, env_vars…)")
    cache: Literal["sqlite", "warehouse"] = Field(
        "sqlite", description="where workers look up model calls: sqlite (cache/calls.sqlite; one machine, or shared "
        "storage with working locks) or warehouse (the `calls` table's Parquet files; any shared storage, a "
        "killed shard pays its calls again)")


class ShardWorker:
    """A Ray Data actor: the stage and its backend, loaded once, then one shard per call."""

    def __init__(self, job: MapJob, calls_files: list[str] | None = None):
        from factory.backends import load_backend
        from factory.models import registered_in

        if os.path.isdir(job.cwd):
            os.chdir(job.cwd)  # the stage config's relative paths (eval sets…) mean what they meant there
        self.job = job
        backend = None

        def load():
            nonlocal backend
            if backend is None:
                with registered_in(job.root):
                    backend = load_backend(job.backend_config)
            return backend

        self.cache_path = Path(job.root) / "cache" / "calls.sqlite"  # shared: every worker's calls
        self.stage = registered_maps()[job.kind].fn()
        self.ctx = make_context(job, load if job.backend_config is not None else None, None)
        self.stage.setup(self.ctx, job.stage_config, job.shared)
        self.cache_thread: int | None = None
        if calls_files is not None:  # the warehouse's calls table: files, no connection, any thread
            self.ctx.cache = WarehouseCalls([Path(job.root) / f for f in calls_files])

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        # Ray Data calls from a pool thread, and a SQLite connection belongs to the thread that made it
        if not isinstance(self.ctx.cache, WarehouseCalls) and self.cache_thread != threading.get_ident():
            self.ctx.cache = CallCache(self.cache_path)
            self.cache_thread = threading.get_ident()
        results = [run_shard(self.stage, self.job, self.ctx, ShardSpec.from_json(str(text))).to_json()
                   for text in batch["spec"]]
        return {"result": results}


@register_executor(RayExecutorConfig)
class RayExecutor:
    remote = True

    def __init__(self, config: RayExecutorConfig):
        self.config = config

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("executor kind 'ray' needs Ray: pip install 'dataset-factory[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.config.address, include_dashboard=False, log_to_driver=False,
                     runtime_env=self.config.runtime_env)

    def run_shards(self, job: MapJob, specs: Sequence[ShardSpec], on_result: Callable[[ShardResult], None],
                   local_backend: Callable[[], Any] | None = None, cache: Any = None,
                   show_progress: bool = True) -> None:
        if not specs:
            return
        self._connect()
        import ray

        context = ray.data.DataContext.get_current()  # the runner shows one bar over shards
        context.enable_progress_bars = context.print_on_execution_start = False
        cfg = self.config
        ds = ray.data.from_items([{"spec": s.to_json()} for s in specs], override_num_blocks=len(specs))
        pool = ray.data.ActorPoolStrategy(size=cfg.concurrency, max_tasks_in_flight_per_actor=1)
        calls_files = None
        if cfg.cache == "warehouse":  # resolved here: only the driver opens the catalog
            from factory.warehouse import Warehouse

            wh = Warehouse(job.root)
            calls_files = [str(p.relative_to(wh.root)) for p in wh.files("calls")]
        ds = ds.map_batches(ShardWorker, fn_constructor_kwargs={"job": job, "calls_files": calls_files},
                            batch_size=1, compute=pool, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
        for row in ds.iter_rows():  # streams: each shard is registered as soon as it is back
            on_result(ShardResult.from_json(row["result"]))

    def map_reduce(self, frame: pl.DataFrame, map_fn: Callable[[pl.DataFrame], pl.DataFrame],
                   reduce_fn: Callable[[pl.DataFrame], pl.DataFrame] | None = None, by: str | None = None,
                   chunk_rows: int = 50_000) -> pl.DataFrame:
        """Ray Data: one block per chunk, ``map_batches`` (a task per block), then ``groupby(by).map_groups``
        (a shuffle by ``by``) for the reduce; only the outputs come back to the driver."""
        if frame.is_empty():
            return map_reduce_here(frame, map_fn, reduce_fn, by, chunk_rows)
        self._connect()
        import ray

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = context.print_on_execution_start = False
        blocks = [chunk.to_arrow(compat_level=pl.CompatLevel.oldest()) for chunk in frame.iter_slices(chunk_rows)]
        ds = ray.data.from_arrow(blocks).map_batches(
            partial(_on_polars, fn=map_fn), batch_format="pyarrow", batch_size=None, num_cpus=self.config.num_cpus)
        if reduce_fn is not None:
            ds = ds.groupby(by).map_groups(partial(_on_polars, fn=reduce_fn), batch_format="pyarrow",
                                           num_cpus=self.config.num_cpus)
        tables = [t for t in (pl.from_arrow(ray.get(ref)) for ref in ds.to_arrow_refs()) if t.height]
        if not tables:  # nothing came back (no blocks at all when no group had a row): the empty result's columns
            return map_reduce_here(frame.head(0), map_fn, reduce_fn, by, chunk_rows)
        return pl.concat(tables, how="vertical_relaxed")


def _on_polars(batch: Any, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> Any:
    """A Ray Data UDF around a polars function: Arrow in, Arrow out."""
    return fn(pl.from_arrow(batch)).to_arrow(compat_level=pl.CompatLevel.oldest())
