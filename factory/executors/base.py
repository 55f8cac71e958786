"""The executor interface: where a map stage's shards run. Stages never know which one it is.

An executor takes a :class:`~factory.map_stage.MapJob` (the stage, its config, the input files) and
the shards still to do, runs each shard's ``process`` somewhere, and hands every finished shard's
result back to the driver (``on_result``), which registers it in the catalog. Workers write the shard
files; only the driver writes the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.map_stage import MapJob, ShardResult, ShardSpec
from factory.registry import Registry

DEFAULT_BATCH_ROWS = 10_000


class ExecutorConfig(BaseModel):
    """Base of each executor's options; subclasses set ``kind: Literal[...]``.

    Not part of a run's identity (left out of the config hash): the same run may be resumed on another
    executor, and every executor cuts the same shards for the same ``batch_rows``.
    """

    model_config = ConfigDict(extra="forbid")
    kind: str
    batch_rows: int = Field(DEFAULT_BATCH_ROWS, ge=1, description="rows of a map stage's input per shard")


class Executor(Protocol):
    config: ExecutorConfig
    #: whether work leaves this process: global stages then hand their heavy parts to ``map_reduce``
    #: (dedup's signatures, band-key shuffle and embeddings: factory/dedup/distributed.py)
    remote: bool

    def run_shards(self, job: MapJob, specs: Sequence[ShardSpec], on_result: Callable[[ShardResult], None],
                   local_backend: Callable[[], Any] | None = None, cache: Any = None,
                   show_progress: bool = True) -> None:
        """Run every shard of ``specs``; call ``on_result`` on the driver as each one finishes.

        ``local_backend`` / ``cache`` are the driver's own (an in-process executor reuses them, so a
        pipeline loads its model once); remote workers load their own.
        """
        ...

    def map_reduce(self, frame: pl.DataFrame, map_fn: Callable[[pl.DataFrame], pl.DataFrame],
                   reduce_fn: Callable[[pl.DataFrame], pl.DataFrame] | None = None, by: str | None = None,
                   chunk_rows: int = 50_000) -> pl.DataFrame:
        """``map_fn`` on chunks of ``frame`` (≤ ``chunk_rows`` rows); then, with ``reduce_fn``, the mapped
        rows grouped by column ``by`` and ``reduce_fn`` on each group. All outputs concatenated, in no
        particular order. The functions must pickle (module-level functions or partials of them)."""
        ...


def map_reduce_here(frame: pl.DataFrame, map_fn: Callable[[pl.DataFrame], pl.DataFrame],
                    reduce_fn: Callable[[pl.DataFrame], pl.DataFrame] | None = None, by: str | None = None,
                    chunk_rows: int = 50_000) -> pl.DataFrame:
    """``Executor.map_reduce`` in this process."""
    mapped = pl.concat([map_fn(chunk) for chunk in frame.iter_slices(chunk_rows)]) if frame.height else map_fn(frame)
    if reduce_fn is None:
        return mapped
    assert by is not None, "map_reduce: a reduce needs the column to group by"
    groups = mapped.partition_by(by, maintain_order=True) if mapped.height else [mapped]
    return pl.concat([reduce_fn(group) for group in groups])


ExecutorFactory = Callable[[Any], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor")
#: ``@register_executor(Config)`` on a class or function ``(config) -> Executor`` makes it an executor
register_executor = EXECUTORS.register
