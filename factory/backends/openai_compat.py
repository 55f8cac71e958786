"""Any OpenAI-compatible chat server: ``vllm serve``, llama.cpp's server, hosted APIs.

Bounded concurrency, per-request timeouts, retries with exponential backoff on 429/5xx and connection
errors. The API key is read from an environment variable whose *name* is configured; the key itself
is never logged, stored in the config, the cache or the warehouse.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from typing import Literal

import httpx
from pydantic import Field

from factory.backends.base import BackendConfig, BackendUnavailable, ChatRequest, Completion, register_backend

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIConfig(BackendConfig):
    kind: Literal["openai"] = "openai"
    model: str
    base_url: str = Field("http://127.0.0.1:8000/v1", description="server root, ending in /v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key")
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    batch_size: int = Field(32, ge=1)
    send_seed: bool = True


class OpenAIBackend:
    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.model_id = config.model
        self.batch_size = config.batch_size
        self._key = os.environ.get(config.api_key_env) if config.api_key_env else None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model_id!r}, base_url={self.config.base_url!r})"

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return asyncio.run(self._generate_all(requests))

    async def _generate_all(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        limit = asyncio.Semaphore(self.config.concurrency)
        timeout = httpx.Timeout(self.config.timeout_s, connect=min(10.0, self.config.timeout_s))
        async with httpx.AsyncClient(base_url=self.config.base_url.rstrip("/"), headers=headers,
                                     timeout=timeout) as client:
            async def one(req: ChatRequest) -> Completion:
                async with limit:
                    return await self._call(client, req)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _call(self, client: httpx.AsyncClient, req: ChatRequest) -> Completion:
        body = {"model": self.model_id, "messages": req.message_dicts(), "max_tokens": req.params.max_tokens,
                "temperature": req.params.temperature, "top_p": req.params.top_p}
        if self.config.send_seed:
            body["seed"] = req.params.seed
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = await client.post("/chat/completions", json=body)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp.json())
                last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code in (401, 403):
                    hint = f" (set ${self.config.api_key_env})" if self.config.api_key_env else ""
                    raise BackendUnavailable(f"{self.config.base_url} refused the credentials{hint}")
                if resp.status_code not in RETRY_STATUS:
                    break
            if attempt < self.config.max_retries:
                await asyncio.sleep(self.config.backoff_s * (2 ** attempt) * (0.5 + random.random()))
        return Completion("", "error", 0, 0, error=last_error)

    @staticmethod
    def _parse(data: dict) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        text = (choice.get("message") or {}).get("content") or ""
        return Completion(text.strip(), finish, int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)))


@register_backend(OpenAIConfig)
def load(config: OpenAIConfig) -> OpenAIBackend:
    if not config.base_url.startswith(("http://", "https://")):
        raise BackendUnavailable(f"backend.base_url must be an http(s) URL, got {config.base_url!r}")
    return OpenAIBackend(config)
