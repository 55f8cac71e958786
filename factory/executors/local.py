"""The default executor: every shard in this process, one after another, with the driver's model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from factory.executors.base import ExecutorConfig, map_reduce_here, register_executor
from factory.map_stage import MapJob, ShardResult, ShardSpec, make_context, registered_maps, run_shard


class LocalExecutorConfig(ExecutorConfig):
    kind: Literal["local"] = "local"


@register_executor(LocalExecutorConfig)
class LocalExecutor:
    remote = False
    map_reduce = staticmethod(map_reduce_here)

    def __init__(self, config: LocalExecutorConfig):
        self.config = config

    def run_shards(self, job: MapJob, specs: Sequence[ShardSpec], on_result: Callable[[ShardResult], None],
                   local_backend: Callable[[], Any] | None = None, cache: Any = None,
                   show_progress: bool = True) -> None:
        stage = registered_maps()[job.kind].fn()
        ctx = make_context(job, local_backend, cache, show_progress)  # False when the runner shows a bar
        stage.setup(ctx, job.stage_config, job.shared)
        for spec in specs:
            on_result(run_shard(stage, job, ctx, spec))
