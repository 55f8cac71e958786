"""LLM backends behind one interface (``base.Backend``), registered by kind."""

from __future__ import annotations

from collections.abc import Mapping

from factory.backends.base import (
    BACKENDS,
    Backend,
    BackendConfig,
    BackendSpec,
    BackendUnavailable,
    ChatRequest,
    Completion,
    GenParams,
)

__all__ = ["Backend", "BackendConfig", "BackendUnavailable", "ChatRequest", "Completion", "GenParams",
           "load_backend", "registered_backends"]


def registered_backends() -> Mapping[str, BackendSpec]:
    from factory.backends import fake, openai_compat, transformers_backend, vllm_backend  # noqa: F401

    return BACKENDS


def load_backend(config: BackendConfig) -> Backend:
    spec = registered_backends()[config.kind]
    return spec.load(config)
