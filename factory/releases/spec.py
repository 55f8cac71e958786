"""What a release is asked to be (``ReleaseSpec``) and the errors that say why one cannot be made or used."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.names import Version


class ReleaseError(RuntimeError):
    """A release that cannot be made or used; the message says which and why."""


class ReleaseConflict(ReleaseError):
    """The version exists with different content: versions are immutable."""


class ChecksumError(ReleaseError):
    """A release file differs from its manifest (modified, missing or unexpected)."""


class ReleaseSpec(BaseModel):
    """What to publish and how to label it (shared by the ``publish`` stage and ``factory publish``)."""

    model_config = ConfigDict(extra="forbid")
    version: Version | None = Field(None, description="X.Y.Z; default: the last version bumped by `bump`")
    bump: Literal["patch", "minor", "major"] = "patch"
    license: str = Field("other", description="Hub license id, e.g. apache-2.0, cc-by-4.0")
    tags: list[str] = Field(default_factory=list)
    description: str = ""
    min_score: float | None = Field(None, description="keep samples whose score is at least this (needs `scores`)")
    score_column: str | None = Field(None, description="column of `scores` (default: composite, else score)")
    include_gold: bool = Field(False, description="also publish tasks' gold answers (seeds) as sft rows")
    gold_sources: list[str] | None = Field(None, description="with include_gold: only the gold answers of tasks of "
                                           "these sources (e.g. [seed]: human answers, not a generator's)")
