"""LLM backends behind one interface (``base.Backend``), registered by kind."""

from __future__ import annotations

from collections.abc import Mapping

from factory.backends.base import (
    BACKENDS,
    Backend,
    BackendConfig,
    BackendFactory,
    BackendUnavailable,
    ChatRequest,
    Completion,
    GenParams,
)
from factory.registry import Entry

__all__ = ["Backend", "BackendConfig", "BackendUnavailable", "ChatRequest", "Completion", "GenParams",
           "load_backend", "registered_backends"]


def registered_backends() -> Mapping[str, Entry[BackendFactory]]:
    return BACKENDS.discover("factory.backends")


def load_backend(config: BackendConfig) -> Backend:
    spec = registered_backends()[config.kind]
    return spec.fn(config)
