"""The stage interface: a typed config, a function from records to records, and a registry.

A stage does no bookkeeping of its own. It reads its inputs through the context, returns new records
and rejects, and the runner gives it persistence, resume, progress, counts and lineage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from factory.context import StageContext


class StageConfig(BaseModel):
    """Base of every stage's config. Subclasses set ``kind: Literal["..."]`` and their own fields."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    name: str | None = None  # defaults to kind; must be unique in a pipeline

    #: tables this stage reads (for validation of the pipeline's order), set by subclasses
    consumes: ClassVar[tuple[str, ...]] = ()
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

    @property
    def records_out(self) -> int:
        return sum(df.height for df in self.tables.values())


StageFn = Callable[["StageContext", Any], StageOutput]


@dataclass(frozen=True)
class StageSpec:
    kind: str
    config: type[StageConfig]
    run: StageFn


STAGES: dict[str, StageSpec] = {}


def register(config: type[StageConfig]) -> Callable[[StageFn], StageFn]:
    """Register a stage function under its config's ``kind``; adding a stage touches one new file."""
    kind = config.model_fields["kind"].default
    if not isinstance(kind, str):
        raise TypeError(f"{config.__name__}.kind needs a Literal default naming the stage")

    def wrap(fn: StageFn) -> StageFn:
        STAGES[kind] = StageSpec(kind, config, fn)
        return fn

    return wrap


def registered() -> Mapping[str, StageSpec]:
    """All known stages (importing ``stages`` registers the built-in ones)."""
    import stages  # noqa: F401  (import registers)

    return STAGES


def stage_names(configs: Iterable[StageConfig]) -> list[str]:
    return [c.stage_name for c in configs]
