"""A scripted backend for unit tests of parsing and control flow (never the only test of a feature)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from factory.backends.base import BackendConfig, ChatRequest, Completion, register_backend


class FakeConfig(BackendConfig):
    kind: Literal["fake"] = "fake"
    model: str = "fake"
    #: replies cycled through in order; "{last}" is replaced by the last user message
    replies: list[str] = Field(default_factory=lambda: ["ok"])


class FakeBackend:
    def __init__(self, config: FakeConfig):
        self.model_id = config.model
        self.batch_size = config.batch_size
        self.replies = config.replies
        self.calls = 0

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for req in requests:
            reply = self.replies[self.calls % len(self.replies)].replace("{last}", req.messages[-1][1])
            self.calls += 1
            words = reply.split()
            truncated = len(words) > req.params.max_tokens
            text = " ".join(words[: req.params.max_tokens]) if truncated else reply
            out.append(Completion(text, "length" if truncated else "stop", req.approx_length // 4,
                                  min(len(words), req.params.max_tokens)))
        return out


@register_backend(FakeConfig)
def load(config: FakeConfig) -> FakeBackend:
    return FakeBackend(config)
