"""The openai backend against a real OpenAI-compatible server (llama.cpp's, serving the embedded GGUF)
and against a stdlib stub server for what a real one will not do on demand: 429s, 500s, 401s, slowness.

llama-cpp-python is a test requirement (``make test`` installs it via ``make llama-server``): when it is
missing these tests fail, they do not skip.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from factory.backends import BackendUnavailable, ChatRequest, GenParams, load_backend
from factory.backends.openai_compat import OpenAIBackend, OpenAIConfig
from factory.config import parse_pipeline
from factory.runner import run_pipeline
from tests.conftest import write_jsonl

SERVER_KEY = "sk-test-9f8e7d6c5b4a-llama"  # the real server is started with --api_key: auth is exercised too
STUB_KEY = "sk-stub-0123456789abcdef"
KEY_ENV = "FACTORY_TEST_OPENAI_KEY"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(text: str, max_tokens: int = 16, seed: int = 0) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": text}],
                          GenParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=seed))


# -- the real server -------------------------------------------------------------------------------------


def test_llama_cpp_server_is_installed():
    assert importlib.util.find_spec("llama_cpp") is not None, (
        "llama-cpp-python[server] is needed for the openai backend tests: run `make llama-server`")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port with the embedded GGUF; yields the /v1 URL."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python[server] is not installed: run `make llama-server`")
    from factory.models import smollm2_gguf

    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    # no --chat_format: the GGUF carries SmolLM2's own ChatML template, which the server then uses;
    # one thread: on a busy 2-core machine llama.cpp's spinning worker threads made a request 5x slower
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--api_key", SERVER_KEY]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                r = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {SERVER_KEY}"}, timeout=2)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after {START_TIMEOUT_S}s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    return lambda key: monkeypatch.setenv(KEY_ENV, key)


def test_generate_against_llama_cpp_server(llama_server: str, key_env):
    key_env(SERVER_KEY)
    backend = load_backend(OpenAIConfig(model="smollm2", base_url=llama_server, api_key_env=KEY_ENV,
                                        concurrency=2))
    prompts = ["Name three colours.", "What is the capital of France?", "Say hello."]
    outs = backend.generate([ask(p, 16, seed=i) for i, p in enumerate(prompts)] + [ask("Describe the sea.", 4)])
    assert len(outs) == 4
    for out in outs[:3]:
        assert out.text and out.error is None
        assert out.finish_reason in ("stop", "length")
        assert out.prompt_tokens > 5 and 0 < out.completion_tokens <= 16
        assert (out.finish_reason == "length") == (out.completion_tokens == 16)
    short = outs[3]
    assert short.finish_reason == "length" and short.completion_tokens == 4 and short.text


def test_wrong_key_against_llama_cpp_server_is_a_clear_error(llama_server: str, key_env):
    key_env("sk-wrong-key-000")
    backend = OpenAIBackend(OpenAIConfig(model="smollm2", base_url=llama_server, api_key_env=KEY_ENV))
    with pytest.raises(BackendUnavailable, match=f"refused the credentials.*check the key in \\${KEY_ENV}") as exc:
        backend.generate([ask("Hi")])
    assert "sk-wrong-key-000" not in str(exc.value)


def test_pipeline_end_to_end_against_llama_cpp_server(llama_server: str, key_env, tmp_path: Path, seed_rows):
    key_env(SERVER_KEY)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", seed_rows[:4])
    wh_root = tmp_path / "wh"
    cfg = parse_pipeline({
        "name": "openai-e2e", "warehouse": str(wh_root),
        "backend": {"kind": "openai", "model": "smollm2", "base_url": llama_server, "api_key_env": KEY_ENV,
                    "concurrency": 2, "timeout_s": 60},
        "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                   {"kind": "self_label", "sources": ["seed"], "keep_truncated": True,
                    "params": {"max_tokens": 24, "temperature": 0.7, "top_p": 0.95}}]})
    result = run_pipeline(cfg, show_progress=False)
    wh = result.warehouse
    samples = wh.read("samples", run_id=result.run_id)
    rejects = wh.read("rejects", run_id=result.run_id, stages=["self_label"])
    assert samples.height + rejects.height == 4 and samples.height >= 1
    assert set(samples["producer"]) == {"smollm2"} and (samples["completion_tokens"] > 0).all()
    stage = wh.query("SELECT calls, completion_tokens FROM stages WHERE stage = 'self_label'").row(0)
    assert stage[0] == 4 and stage[1] > 0
    files = [p for p in wh_root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    leaked = [p for p in files if SERVER_KEY.encode() in p.read_bytes()]
    assert not leaked, f"API key written to {leaked}"
    assert KEY_ENV in json.dumps(cfg.model_dump(mode="json"))  # only the variable's *name* is configuration


# -- a stub server ---------------------------------------------------------------------------------------


def ok_body(text: str = "fine", finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


@dataclass
class Stub:
    """Answers POST /v1/chat/completions from ``script`` (one reply per request, the last repeated)."""

    script: list[tuple[int, Any, dict[str, str]]]
    delay_s: float = 0.0
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth: list[str | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def reply(self, headers: Any) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            n = self.calls
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.auth.append(headers.get("Authorization"))
            self.times.append(time.monotonic())
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
        status, body, extra = self.script[min(n, len(self.script) - 1)]
        return status, body(headers) if callable(body) else body, extra


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    servers: list[ThreadingHTTPServer] = []

    def make(*script: tuple, delay_s: float = 0.0) -> Stub:
        state = Stub([(s[0], s[1], s[2] if len(s) > 2 else {}) for s in script], delay_s)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, extra = state.reply(self.headers)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on this request (e.g. after a 401 stopped the batch)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return state

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def stub_backend(s: Stub, **kw: Any) -> OpenAIBackend:
    opts = {"model": "stub", "base_url": s.url, "api_key_env": KEY_ENV, "backoff_s": 0.05, **kw}
    return load_backend(OpenAIConfig(**opts))


def test_429s_are_retried_with_backoff_and_retry_after(stub, key_env):
    key_env(STUB_KEY)
    s = stub((429, {"error": "slow down"}, {"Retry-After": "1"}), (429, {"error": "slow down"}),
             (200, ok_body("third time lucky", "length")))
    began = time.monotonic()
    [out] = stub_backend(s).generate([ask("hi")])
    assert out == type(out)("third time lucky", "length", 7, 3)
    assert s.calls == 3
    gaps = [b - a for a, b in zip(s.times, s.times[1:], strict=False)]
    assert gaps[0] >= 0.95  # Retry-After: 1 honoured
    assert gaps[1] >= 0.05 * 2 * 0.5  # exponential backoff, attempt 1, lowest jitter
    assert time.monotonic() - began < 5


def test_persistent_500_gives_an_error_completion_after_max_retries(stub, key_env):
    key_env(STUB_KEY)
    s = stub((500, {"error": "boom"}))
    outs = stub_backend(s, max_retries=2).generate([ask("a"), ask("b")])
    assert [o.finish_reason for o in outs] == ["error", "error"]
    assert all(o.text == "" and "HTTP 500" in (o.error or "") for o in outs)
    assert s.calls == 2 * 3


def test_400_is_not_retried_and_malformed_200_is_an_error(stub, key_env):
    key_env(STUB_KEY)
    s = stub((400, {"error": "context length exceeded"}), (200, "<html>proxy page</html>"))
    outs = stub_backend(s, concurrency=1).generate([ask("a"), ask("b")])
    assert [o.finish_reason for o in outs] == ["error", "error"] and s.calls == 2
    assert "HTTP 400" in (outs[0].error or "") and "malformed" in (outs[1].error or "")


@pytest.mark.parametrize("key, hint", [(STUB_KEY, f"check the key in ${KEY_ENV}"), (None, f"${KEY_ENV} is not set")])
def test_401_is_a_clear_backend_unavailable(stub, monkeypatch, key, hint):
    if key:
        monkeypatch.setenv(KEY_ENV, key)
    else:
        monkeypatch.delenv(KEY_ENV, raising=False)
    s = stub((401, {"error": "invalid api key"}))
    with pytest.raises(BackendUnavailable) as exc:
        stub_backend(s).generate([ask("a"), ask("b"), ask("c")])
    assert "refused the credentials" in str(exc.value) and hint in str(exc.value)
    assert s.auth[0] == (f"Bearer {key}" if key else None)


def test_wrong_path_is_a_clear_backend_unavailable(stub, key_env):
    key_env(STUB_KEY)
    s = stub((404, {"error": "not found"}))
    with pytest.raises(BackendUnavailable, match="does backend.base_url end in /v1"):
        stub_backend(s).generate([ask("a")])


def test_no_server_is_a_clear_backend_unavailable(key_env):
    key_env(STUB_KEY)
    cfg = OpenAIConfig(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env=KEY_ENV,
                       max_retries=1, backoff_s=0.01)
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        load_backend(cfg).generate([ask("a")])


def test_key_is_sent_as_bearer_and_never_leaks(stub, key_env, caplog):
    key_env(STUB_KEY)
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logs included
    # a hostile or debugging server that echoes the request's headers back in its error body
    s = stub((200, ok_body()), (503, lambda h: {"echo": dict(h.items())}), (401, lambda h: {"echo": dict(h.items())}))
    backend = stub_backend(s, max_retries=0, concurrency=1)
    first = backend.generate([ask("a")])
    echoed = backend.generate([ask("b")])
    with pytest.raises(BackendUnavailable) as exc:
        backend.generate([ask("c")])
    assert s.auth == [f"Bearer {STUB_KEY}"] * 3
    assert first[0].text == "fine" and echoed[0].finish_reason == "error" and "***" in (echoed[0].error or "")
    shown = [repr(backend), str(backend), repr(backend.config), backend.config.model_dump_json(), str(exc.value),
             repr(exc.value), echoed[0].error or "", repr(echoed[0]), caplog.text]
    assert all(STUB_KEY not in s_ for s_ in shown)


def test_concurrency_is_bounded(stub, key_env):
    key_env(STUB_KEY)
    s = stub((200, ok_body()), delay_s=0.2)
    began = time.monotonic()
    outs = stub_backend(s, concurrency=2).generate([ask(f"q{i}") for i in range(6)])
    elapsed = time.monotonic() - began
    assert [o.text for o in outs] == ["fine"] * 6
    assert s.max_in_flight == 2 and s.calls == 6
    assert 0.55 < elapsed < 3  # three waves of two


def test_generate_works_inside_a_running_event_loop(stub, key_env):
    key_env(STUB_KEY)
    s = stub((200, ok_body("from a loop")))

    async def caller() -> str:
        return stub_backend(s).generate([ask("a")])[0].text

    assert asyncio.run(caller()) == "from a loop"


def test_non_http_base_url_is_refused():
    with pytest.raises(BackendUnavailable, match="http"):
        load_backend(OpenAIConfig(model="m", base_url="127.0.0.1:8000/v1"))


# -- the vllm extra --------------------------------------------------------------------------------------


def test_vllm_without_vllm_says_what_to_install(monkeypatch):
    from factory.backends.vllm_backend import VLLMConfig

    monkeypatch.setitem(sys.modules, "vllm", None)  # an import of vllm now fails as if it were absent
    with pytest.raises(BackendUnavailable, match=r"pip install 'dataset-factory\[vllm\]'"):
        load_backend(VLLMConfig(model="x"))
    cfg = parse_pipeline({"name": "v", "backend": {"kind": "vllm", "model": "x"},
                          "stages": [{"kind": "seeds", "paths": ["data/seeds"]}]})
    with pytest.raises(BackendUnavailable, match="pip install"):
        load_backend(cfg.backend)
