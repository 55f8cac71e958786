"""Executors for map stages (``local`` in-process, ``ray`` on a Ray cluster), registered by kind."""

from __future__ import annotations

from collections.abc import Mapping

from factory.executors.base import EXECUTORS, Executor, ExecutorConfig, register_executor
from factory.registry import Entry

__all__ = ["Executor", "ExecutorConfig", "load_executor", "register_executor", "registered_executors"]


def registered_executors() -> Mapping[str, Entry]:
    return EXECUTORS.discover("factory.executors")


def load_executor(config: ExecutorConfig) -> Executor:
    return registered_executors()[config.kind].fn(config)
