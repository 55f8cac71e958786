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
    #: replies by the last user message, ahead of ``replies`` (a scripted answer per question)
    responses: dict[str, str] = Field(default_factory=dict)


class FakeBackend:
    def __init__(self, config: FakeConfig):
        self.model_id = config.model
        self.batch_size = config.batch_size
        self.replies = config.replies
        self.responses = config.responses
        self.calls = 0
        #: every request seen, so a test can check what reached the backend (an output constraint, say);
        #: replies are *not* forced to satisfy a constraint: scripting a violating one tests the reject path
        self.requests: list[ChatRequest] = []

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        self.requests.extend(requests)
        for req in requests:
            last = req.messages[-1][1]
            reply = self.responses.get(last) or self.replies[self.calls % len(self.replies)].replace("{last}", last)
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
