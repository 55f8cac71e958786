"""Implementations registered by ``kind``: stages, backends and executors alike, found one way (every module
of their package, plus the ``dataset_factory.NOUNs`` entry points of installed plugins), so adding one is one
new file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import BaseModel, Field

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
        self._discovered = False

    def discover(self, package: str) -> Mapping[str, Entry[F]]:
        """Import every module of ``package`` and every plugin module named by an entry point in the group
        ``dataset_factory.<noun>s`` (``[project.entry-points."dataset_factory.stages"] mine = "my_pkg.stage"``);
        importing a module is what registers its kinds."""
        if not self._discovered:
            root = importlib.import_module(package)
            for info in pkgutil.iter_modules(root.__path__, f"{package}."):
                importlib.import_module(info.name)
            for ep in entry_points(group=f"dataset_factory.{self.noun}s"):
                importlib.import_module(ep.value.split(":")[0])
            self._discovered = True
        return self.entries

    def register(self, config: type[BaseModel]) -> Callable[[F], F]:
        """Decorator: register ``fn`` under ``config``'s ``kind`` (a ``Literal`` field with a default)."""
        kind = config.model_fields["kind"].default
        if not isinstance(kind, str):
            raise TypeError(f"{config.__name__}.kind needs a Literal default naming the {self.noun}")

        def wrap(fn: F) -> F:
            self.entries[kind] = Entry(kind, config, fn)
            return fn

        return wrap


def discriminated_union(configs: list[type[BaseModel]]) -> Any:
    """One pydantic type for "any registered config", chosen by its ``kind`` field."""
    return Annotated[Union[tuple(configs)], Field(discriminator="kind")]  # noqa: UP007
