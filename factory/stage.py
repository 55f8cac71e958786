"""The stage interface: a typed config, a function from records to records, and a registry.

A stage does no bookkeeping of its own. It reads its inputs through the context, returns new records
and rejects, and the runner gives it persistence, resume, progress, counts and lineage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict

from factory.registry import Entry, Registry

if TYPE_CHECKING:
    from factory.context import StageContext


class StageConfig(BaseModel):
    """Base of every stage's config. Subclasses set ``kind: Literal["..."]`` and their own fields."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    name: str | None = None  # defaults to kind; must be unique in a pipeline

    #: tables this stage reads, which an earlier stage of the pipeline must make (checked on load)
    consumes: ClassVar[tuple[str, ...]] = ()
    #: tables this stage makes
    produces: ClassVar[tuple[str, ...]] = ()
    #: whether the stage needs the pipeline's LLM backend (so a pipeline without one never loads it)
    uses_backend: ClassVar[bool] = False

    @property
    def stage_name(self) -> str:
        return self.name or self.kind


@dataclass
class StageOutput:
    """What a stage returns: new records per table (``tasks``, ``samples``…), rejects, and metrics.

    Records dropped by a filtering stage are *not* re-emitted: the stage returns a reject row whose
    ``record_id`` names them, and later stages no longer see them (see ``StageContext.inputs``).
    """

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    rejects: list[dict[str, Any]] | pl.DataFrame = field(default_factory=list)
    records_in: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    #: for filtering stages (dedup, score, publish): how many input records passed. Their tables hold
    #: index or feature rows, not records, so "out" in the funnel is this count.
    kept: int | None = None

    @property
    def records_out(self) -> int:
        return self.kept if self.kept is not None else sum(df.height for df in self.tables.values())


StageFn = Callable[["StageContext", Any], StageOutput]

STAGES: Registry[StageFn] = Registry("stage")
#: ``@register(Config)`` on a function ``run(ctx, cfg) -> StageOutput`` makes it a stage
register = STAGES.register


def registered() -> Mapping[str, Entry[StageFn]]:
    """All known stages: the modules of ``stages`` and the plugins' (factory.registry)."""
    return STAGES.discover("stages")

