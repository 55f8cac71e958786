"""One interface for chat generation over a batch of requests, and a registry of implementations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from factory.call_errors import DEFAULT_MAX_ERROR_FRACTION
from factory.records import canonical_json, content_id
from factory.registry import Registry
from factory.structured import OutputConstraint


class GenParams(BaseModel):
    """Sampling parameters; part of every cache key and of every record's lineage."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    #: structured generation (factory/structured.py); left out of dumps when None, so every cache key and
    #: config hash made before it existed is unchanged
    constraint: OutputConstraint | None = Field(None, exclude_if=lambda v: v is None)


@dataclass(frozen=True)
class ChatRequest:
    """A list of chat messages (``{"role", "content"}``) and how to sample the answer."""

    messages: tuple[tuple[str, str], ...]
    params: GenParams = field(default_factory=GenParams)

    @classmethod
    def of(cls, messages: Sequence[dict[str, str]], params: GenParams) -> ChatRequest:
        return cls(tuple((m["role"], m["content"]) for m in messages), params)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def cache_key(self, model_id: str) -> str:
        return content_id("chat", model_id, self.messages, self.params.model_dump())

    @property
    def approx_length(self) -> int:
        return sum(len(c) for _, c in self.messages)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    error: str | None = None


class Backend(Protocol):
    """What every backend offers: a model id and batched chat generation."""

    model_id: str
    batch_size: int

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...


class BackendConfig(BaseModel):
    """Base of each backend's options; subclasses set ``kind: Literal[...]``."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    batch_size: int = Field(16, ge=1)
    #: the share of a stage's calls that may fail before the run stops (factory/call_errors.py); a policy,
    #: not part of the data: left out of dumps at its default and out of the config hash, so setting it
    #: neither changes older run ids nor forks the run it is raised for
    max_error_fraction: float = Field(DEFAULT_MAX_ERROR_FRACTION, ge=0.0, le=1.0,
                                      exclude_if=lambda v: v == DEFAULT_MAX_ERROR_FRACTION,
                                      description="stop a run when more than this share of a stage's model "
                                      "calls fail (a stage where all fail always stops)")

    requires: ClassVar[str | None] = None  # optional extra to install, named in the error message


BackendFactory = Callable[[Any], Backend]

BACKENDS: Registry[BackendFactory] = Registry("backend")
#: ``@register_backend(Config)`` on a function ``load(config) -> Backend`` makes it a backend
register_backend = BACKENDS.register


class BackendUnavailable(RuntimeError):
    """A backend whose optional dependency is missing; the message says what to install."""


def params_json(params: GenParams) -> str:
    return canonical_json(params.model_dump())
