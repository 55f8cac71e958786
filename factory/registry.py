"""Implementations registered by ``kind``: stages and backends alike, so adding one touches one file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Entry(Generic[F]):
    kind: str
    config: type[BaseModel]
    fn: F


class Registry(Generic[F]):
    def __init__(self, noun: str):
        self.noun = noun
        self.entries: dict[str, Entry[F]] = {}

    def register(self, config: type[BaseModel]) -> Callable[[F], F]:
        """Decorator: register ``fn`` under ``config``'s ``kind`` (a ``Literal`` field with a default)."""
        kind = config.model_fields["kind"].default
        if not isinstance(kind, str):
            raise TypeError(f"{config.__name__}.kind needs a Literal default naming the {self.noun}")

        def wrap(fn: F) -> F:
            self.entries[kind] = Entry(kind, config, fn)
            return fn

        return wrap
