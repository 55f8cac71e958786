"""Any OpenAI-compatible chat server: ``vllm serve``, llama.cpp's server, hosted APIs.

Bounded concurrency, a total deadline per request attempt (``timeout_s`` covers connecting, sending and
reading the whole body, so a server trickling bytes cannot hold a call past it), retries with exponential
backoff on 429/5xx, timeouts and connection errors. A failed call's error keeps the HTTP status and the
server's own error text; an answer with ``content: null`` is an error, never an empty answer.

The API key is read from an environment variable whose *name* is configured; the key itself
is never logged, stored in the config, the cache or the warehouse, and is scrubbed from error text
(a server may echo request headers back, and run errors are stored in the warehouse catalog).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from pydantic import Field

from factory.backends.base import BackendConfig, BackendUnavailable, ChatRequest, Completion, register_backend
from factory.call_errors import short_error
from factory.structured import OutputConstraint

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0


class OpenAIConfig(BackendConfig):
    kind: Literal["openai"] = "openai"
    model: str
    base_url: str = Field("http://127.0.0.1:8000/v1", description="server root, ending in /v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key")
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0, description="deadline of one request attempt, body included")
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    batch_size: int = Field(32, ge=1)
    send_seed: bool = True
    structured_dialect: Literal["openai", "vllm", "llama_cpp_python"] = Field(
        "openai", description="how output constraints are sent: openai = response_format json_schema (OpenAI, "
        "vllm serve, llama.cpp's llama-server), vllm = that plus structured_outputs for regex/choices, "
        "llama_cpp_python = response_format json_object with a schema, and a GBNF grammar for choices")


class OpenAIBackend:
    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.model_id = config.model
        self.batch_size = config.batch_size
        self._key = (os.environ.get(config.api_key_env) or "").strip() if config.api_key_env else ""

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model_id!r}, base_url={self.config.base_url!r})"

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_all(requests))
        # called from inside an event loop (a notebook, an async caller): asyncio.run would refuse
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._generate_all(requests)).result()

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def _generate_all(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        limit = asyncio.Semaphore(self.config.concurrency)
        timeout = httpx.Timeout(self.config.timeout_s, connect=min(10.0, self.config.timeout_s))
        async with httpx.AsyncClient(base_url=self.config.base_url.rstrip("/"), headers=headers,
                                     timeout=timeout) as client:
            async def one(req: ChatRequest) -> Completion:
                async with limit:
                    return await self._call(client, req)

            outs = list(await asyncio.gather(*(one(r) for r in requests)))
        if all((o.error or "").startswith("ConnectError") for o in outs):
            # nothing answered at all: a missing server is a setup problem, not a batch of bad answers
            raise BackendUnavailable(f"cannot reach {self.config.base_url} ({outs[0].error}); is the server "
                                     "running and is backend.base_url right?")
        self._raise_if_constraints_ignored(requests, outs)
        return outs

    def _raise_if_constraints_ignored(self, requests: Sequence[ChatRequest], outs: list[Completion]) -> None:
        """Some servers accept a constraint field they do not implement and answer freely (llama-cpp-python's
        server ignores response_format json_schema). Answers that *ended normally* yet all violate their
        constraint are that, not bad luck: stop with a clear message rather than reject every answer."""
        finished = [(r.params.constraint, o) for r, o in zip(requests, outs, strict=True)
                    if r.params.constraint is not None and o.finish_reason == "stop" and o.error is None]
        if len(finished) >= 2 and all(c.parse(o.text) is None for c, o in finished):
            kinds = sorted({c.kind for c, _ in finished})
            raise BackendUnavailable(
                f"{self.config.base_url} ignored the {'/'.join(kinds)} output constraint sent as structured_dialect "
                f"{self.config.structured_dialect!r}: all {len(finished)} answers that ended normally violate it "
                f"(first: {finished[0][1].text[:80]!r}); set backend.structured_dialect to what the server supports "
                "(openai, vllm, llama_cpp_python), or turn the stage's `structured` off")

    async def _call(self, client: httpx.AsyncClient, req: ChatRequest) -> Completion:
        body = {"model": self.model_id, "messages": req.message_dicts(), "max_tokens": req.params.max_tokens,
                "temperature": req.params.temperature, "top_p": req.params.top_p}
        if self.config.send_seed:
            body["seed"] = req.params.seed
        if req.params.constraint is not None:
            body.update(constraint_body(req.params.constraint, self.config.structured_dialect))
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            wait = self.config.backoff_s * (2 ** attempt) * (0.5 + random.random())
            try:
                # httpx's timeouts bound each read, not the request: a body trickled a byte at a time
                # never trips them. The deadline covers the whole attempt, body included.
                async with asyncio.timeout(self.config.timeout_s):
                    resp = await client.post("/chat/completions", json=body)
            except (TimeoutError, httpx.TimeoutException) as exc:
                last_error = (f"timed out: no complete answer within timeout_s={self.config.timeout_s:g}s "
                              f"({type(exc).__name__})")
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    try:
                        return self._parse(resp.json())
                    except NullContent as exc:
                        last_error = str(exc)
                        break
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                        shown = short_error(self._redact(resp.text))
                        last_error = f"malformed response ({type(exc).__name__}): {shown}"
                        break
                last_error = f"HTTP {resp.status_code}: {short_error(error_text(self._redact(resp.text)))}"
                self._raise_for_setup(resp.status_code, last_error)
                if req.params.constraint is not None and resp.status_code in (400, 422, 500):
                    self._raise_for_constraint(req.params.constraint, resp)
                if resp.status_code not in RETRY_STATUS:
                    break
                wait = max(wait, _retry_after(resp))
            if attempt < self.config.max_retries:
                await asyncio.sleep(wait)
        return Completion("", "error", 0, 0, error=self._redact(last_error))

    def _raise_for_setup(self, status: int, detail: str) -> None:
        """Errors no retry can fix and that would fail every request: stop the run with a clear message."""
        env = self.config.api_key_env
        if status in (401, 403):
            if not env:
                hint = "set backend.api_key_env to the environment variable holding the key"
            elif self._key:
                hint = f"check the key in ${env}"
            else:
                hint = f"${env} is not set"
            raise BackendUnavailable(f"{self.config.base_url} refused the credentials ({hint}): "
                                     f"{self._redact(detail)}")
        if status == 404:
            raise BackendUnavailable(f"{self.config.base_url}/chat/completions or model {self.model_id!r} not "
                                     f"found (does backend.base_url end in /v1?): {self._redact(detail)}")

    def _raise_for_constraint(self, constraint: OutputConstraint, resp: httpx.Response) -> None:
        """A server that refuses the way a constraint was sent refuses it for every request: stop clearly."""
        text = resp.text.lower()
        if any(word in text for word in ("response_format", "json_schema", "schema", "grammar", "structured",
                                         "guided", "regex", "choice")):
            raise BackendUnavailable(
                f"{self.config.base_url} refused the {constraint.kind} output constraint sent as "
                f"structured_dialect {self.config.structured_dialect!r} (HTTP {resp.status_code}: "
                f"{' '.join(self._redact(resp.text).split())[:200]}); set backend.structured_dialect to what the "
                "server supports (openai, vllm, llama_cpp_python), or turn the stage's `structured` off")

    @staticmethod
    def _parse(data: dict) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        text = choice["message"].get("content")
        if text is None:  # a refusal, a tool call, a reasoning model that ran out of tokens: not an answer
            raise NullContent(f"the server answered content: null (finish_reason "
                              f"{choice.get('finish_reason')!r}); no text to keep")
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}, not text")
        return Completion(text.strip(), finish, int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0))


class NullContent(ValueError):
    """A 200 answer whose message content is null: an error, so it is never cached as an empty answer."""


def error_text(body: str) -> str:
    """The message of an error body (``{"error": {"message": …}}``, ``{"error": "…"}``, ``{"detail": …}``,
    ``{"message": …}``), else the body itself: what the server said, without the JSON around it."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            found = data.get(key)
            if isinstance(found, dict):
                found = found.get("message") or found.get("detail") or found
            if isinstance(found, str) and found.strip():
                return found
    return body


def constraint_body(constraint: OutputConstraint, dialect: str) -> dict[str, Any]:
    """The request fields that carry an output constraint in a server dialect; a ValueError (one line) for
    a constraint the dialect cannot express."""
    if constraint.kind == "json_schema":
        if dialect == "llama_cpp_python":  # its server takes only "text" | "json_object" (+ schema)
            return {"response_format": {"type": "json_object", "schema": constraint.schema_dict}}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "output", "schema": constraint.schema_dict}}}
    if dialect == "vllm":
        key = "regex" if constraint.kind == "regex" else "choice"
        value = constraint.regex if constraint.kind == "regex" else list(constraint.choices or ())
        return {"structured_outputs": {key: value}}
    if dialect == "llama_cpp_python" and constraint.kind == "choices":
        alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in constraint.choices or ())
        return {"grammar": f"root ::= {alternatives}"}
    raise ValueError(f"the openai backend cannot send a {constraint.kind} constraint with structured_dialect "
                     f"{dialect!r}: use a json_schema constraint, or set backend.structured_dialect to 'vllm' "
                     "(regex and choices) or 'llama_cpp_python' (choices)")


def _retry_after(resp: httpx.Response) -> float:
    """The server's ``Retry-After`` in seconds (capped), or 0 when absent or an HTTP date."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(resp.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0


@register_backend(OpenAIConfig)
def load(config: OpenAIConfig) -> OpenAIBackend:
    if not config.base_url.startswith(("http://", "https://")):
        raise BackendUnavailable(f"backend.base_url must be an http(s) URL, got {config.base_url!r}")
    return OpenAIBackend(config)
