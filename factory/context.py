"""What a stage sees: its run, its inputs, a cached and batched LLM, progress bars and counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from factory.backends.base import Backend, ChatRequest, Completion
from factory.cache import CallStore
from factory.call_errors import DEFAULT_MAX_ERROR_FRACTION, ErrorTally
from factory.call_log import CallLog
from factory.warehouse import Warehouse

if TYPE_CHECKING:
    from factory.executors.base import Executor

console = Console(stderr=True)


@dataclass
class Usage:
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_seconds: float = 0.0


@dataclass
class StageContext:
    run_id: str
    stage_name: str
    position: int
    round: int
    seed: int
    warehouse: Warehouse
    earlier_stages: list[str]
    backend_loader: Callable[[], Backend] | None = None
    cache: CallStore | None = None  # factory/cache.py: SQLite, or the warehouse calls table on clusters
    show_progress: bool = True
    usage: Usage = field(default_factory=Usage)
    #: backend.max_error_fraction: the share of failed calls that stops the stage (factory/call_errors.py)
    max_error_fraction: float = DEFAULT_MAX_ERROR_FRACTION
    errors: ErrorTally = field(init=False)
    #: one row per request of ``generate`` (the ``calls`` table), taken by whoever commits the stage or shard
    call_log: CallLog = field(default_factory=CallLog)
    #: the pipeline's executor (factory/executors/): a global stage may hand its heavy parts to its
    #: ``map_reduce`` when it is ``remote`` (dedup does); None for a stage run outside a pipeline
    executor: Executor | None = None
    _backend: Backend | None = None

    def __post_init__(self) -> None:
        self.errors = ErrorTally(self.stage_name, self.max_error_fraction)

    # -- inputs ------------------------------------------------------------------------------------

    def inputs(self, table: str) -> pl.DataFrame:
        """All ``table`` records made by earlier stages of this run, less those a stage rejected."""
        return self.warehouse.kept(table, run_id=self.run_id, stages=self.earlier_stages)

    def history(self, table: str) -> pl.DataFrame:
        """Kept ``table`` records of every *other* run in the warehouse (for dedup against history)."""
        df = self.warehouse.kept(table)
        return df.filter(pl.col("run_id") != self.run_id) if "run_id" in df.columns else df

    # -- the model ---------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self.backend_loader is None:
                raise RuntimeError(f"stage {self.stage_name!r} needs an LLM backend but none is configured")
            self._backend = self.backend_loader()
        return self._backend

    def generate(self, requests: Sequence[ChatRequest], description: str = "generating") -> list[Completion]:
        """Answer every request, cheapest first: cached calls are free, the rest go to the backend in
        length-sorted batches, and each finished batch is committed to the cache (the checkpoint). A stage
        whose calls mostly fail stops here with ``ModelErrors`` (its answers so far stay cached)."""
        import time

        results: list[Completion | None] = [None] * len(requests)
        latency: list[float | None] = [None] * len(requests)  # of the batch that answered; None: cached
        model_id = self.backend.model_id
        hits = self.cache.get_many(model_id, requests) if self.cache is not None else {}
        todo: list[int] = []
        for i, req in enumerate(requests):
            hit = hits.get(req.cache_key(model_id))
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        self.usage.cached_calls += len(requests) - len(todo)
        self.errors.add(r for r in results if r is not None)  # cached answers count (errors are never cached)
        todo.sort(key=lambda i: requests[i].approx_length)  # neighbours in a batch pad little
        size = max(1, self.backend.batch_size)
        with self.progress(description, total=len(requests)) as advance:
            advance(len(requests) - len(todo))
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                began = time.perf_counter()
                outs = self.backend.generate([requests[i] for i in chunk])
                seconds = time.perf_counter() - began
                self.usage.generate_seconds += seconds
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
                    latency[i] = seconds
                    self.usage.calls += 1
                    self.usage.prompt_tokens += out.prompt_tokens
                    self.usage.completion_tokens += out.completion_tokens
                if self.cache is not None:
                    self.cache.put_many(model_id, [(requests[i], results[i]) for i in chunk])
                advance(len(chunk))
                self.errors.add(outs)
                self.errors.check(final=start + size >= len(todo))
        done = [r for r in results if r is not None]
        for req, out, seconds in zip(requests, done, latency, strict=True):
            self.call_log.add(self, model_id, req, out, seconds)
        return done

    # -- progress ----------------------------------------------------------------------------------

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A rich progress bar (silent when progress is off); yields ``advance(n)``."""
        if not self.show_progress or total == 0:
            yield lambda n=1: None
            return
        with Progress(TextColumn(f"[bold]{self.stage_name}[/] {description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    def log(self, message: str, **_: Any) -> None:
        if self.show_progress:
            console.print(f"[dim]{self.stage_name}:[/] {message}")

    def warn(self, message: str) -> None:
        """One line on stderr that shows even with progress off (``--quiet``): something the user must know."""
        from rich.markup import escape

        console.print(f"[bold yellow]warning:[/] {self.stage_name}: {escape(message)}", highlight=False,
                      soft_wrap=True)
