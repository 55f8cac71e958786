"""Issue 11, item 8: the openai backend under a misbehaving server, through the real CLI.

A real HTTP server runs in a thread of the test and answers each request by its task number: a normal
answer, HTTP 500 with an error body, ``content: null``, or a body trickled at 20 bytes a second. Every
test runs ``factory run`` on a seeds → self_label → dedup pipeline pointed at it and checks the exit code,
the one-line message, the warehouse (runs, stages, rejects with their reason and error text), the call
cache (failed calls are never stored) and that no record is lost when the server recovers.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.warehouse import Warehouse

CRASH = "upstream model crashed: CUDA out of memory while loading shard 3 of 8"
TRICKLE_BYTES_PER_S = 20


@dataclass
class Server:
    """How the server answers each task number (``default`` for the rest), and what it saw."""

    modes: dict[int, str] = field(default_factory=dict)
    default: str = "ok"
    calls: list[int] = field(default_factory=list)
    #: seconds from a trickled request's arrival to the moment the client hung up
    gave_up_after: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def mode(self, n: int) -> str:
        with self.lock:
            self.calls.append(n)
            return self.modes.get(n, self.default)


def answer(content: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (stdlib name)
            began = time.monotonic()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            n = int(re.search(r"Item (\d+):", body["messages"][-1]["content"]).group(1))
            mode = state.mode(n)
            if mode == "fail":
                self.reply(500, {"error": {"message": CRASH + " " + "x" * 5000, "type": "server_error"}})
            elif mode == "null":
                self.reply(200, answer(None))
            elif mode == "trickle":
                data = json.dumps(answer(f"A slow reply to item {n}. " + "la " * 150)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(1 / TRICKLE_BYTES_PER_S)
                except (BrokenPipeError, ConnectionResetError):
                    state.gave_up_after.append(time.monotonic() - began)
            else:
                self.reply(200, answer(f"Here is a careful reply to item {n}: the result is {n * 7} units."))

        def reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def pipeline(tmp_path: Path, server: Server, tasks: int, **backend: Any) -> Path:
    """A pipeline file: ``tasks`` seed tasks, each answered once by the served model, then exact dedup."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Item {n}: compute seven times {n} and explain the steps "
                                                        "briefly.", "category": "math"}) + "\n"
                             for n in range(tasks)))
    cfg = {"name": "faulty", "warehouse": str(tmp_path / "wh"),
           "backend": {"kind": "openai", "model": "stub", "base_url": server.url, "api_key_env": None,
                       "max_retries": 0, "timeout_s": 30, **backend},
           "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                      {"kind": "self_label", "params": {"max_tokens": 64}},
                      {"kind": "dedup", "methods": ["exact"]}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


LAST_STDOUT: list[str] = [""]


def factory_run(path: Path, *flags: str) -> tuple[int, list[str]]:
    """``factory run PATH -q``: the exit code and the non-empty lines it printed to stderr."""
    result = CliRunner().invoke(app, ["run", str(path), "-q", *flags])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    LAST_STDOUT[0] = result.stdout
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def cached_calls(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "wh" / "cache" / "calls.sqlite") as con:
        return con.execute("SELECT count(*) FROM calls").fetchone()[0]


def model_errors(wh: Warehouse) -> list[tuple[str, str]]:
    return wh.query("SELECT record_id, detail FROM rejects WHERE reason = 'model_error' ORDER BY detail").rows()


def stage_row(wh: Warehouse, stage: str) -> dict[str, Any]:
    return wh.query("SELECT * FROM stages WHERE stage = ?", [stage]).row(0, named=True)


def test_trickled_body_fails_at_the_total_deadline(tmp_path: Path, server: Server):
    """timeout_s bounds the whole request: a body trickled at 20 B/s (15 s of it) fails at ~1.5 s."""
    server.modes = {2: "trickle"}
    path = pipeline(tmp_path, server, tasks=4, timeout_s=1.5)
    began = time.monotonic()
    code, lines = factory_run(path)
    elapsed = time.monotonic() - began
    assert code == 0, lines  # one failure in four is under max_error_fraction: the stage finishes
    assert len(server.gave_up_after) == 1 and 1.4 <= server.gave_up_after[0] <= 3.0, server.gave_up_after
    assert elapsed < 12  # the whole body would have taken 15 s
    wh = Warehouse(tmp_path / "wh")
    [(_, detail)] = model_errors(wh)
    assert "task " in detail and "timed out: no complete answer within timeout_s=1.5s" in detail
    assert wh.query("SELECT count(*) FROM samples").item() == 3
    assert cached_calls(tmp_path) == 3  # the timed-out call is not cached


def test_a_stage_where_every_call_fails_fails_the_run_and_resumes_when_fixed(tmp_path: Path, server: Server):
    server.default = "fail"
    path = pipeline(tmp_path, server, tasks=4)
    code, lines = factory_run(path)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: stage 'self_label': all 4 model calls failed (first error: HTTP 500: {CRASH}")
    assert len(lines[0]) < 600  # the 5,000-character body is cut
    wh = Warehouse(tmp_path / "wh")
    status, error = wh.query("SELECT status, error FROM runs").row(0)
    assert status == "failed" and "all 4 model calls failed" in error
    assert wh.query("SELECT stage FROM stages ORDER BY position").to_series().to_list() == ["seeds"]
    assert wh.query("SELECT count(*) FROM tasks").item() == 4  # the seeds are kept
    assert cached_calls(tmp_path) == 0

    server.default = "ok"  # the server is fixed: the same command resumes the same run
    code, lines = factory_run(path)
    assert code == 0, lines
    assert wh.query("SELECT run_id, status FROM runs").rows() == [(wh.query("SELECT run_id FROM runs").item(), "done")]
    assert wh.query("SELECT count(*) FROM samples_kept").item() == 4
    assert model_errors(wh) == []
    assert stage_row(wh, "dedup")["records_out"] == 4


def test_a_mostly_failing_stage_stops_early_and_loses_nothing(tmp_path: Path, server: Server):
    """batch_size 4: after 16 answers with 10 failures (> 0.5) the run stops before asking the other 24."""
    server.modes = {n: "fail" for n in range(40) if n % 5 in (0, 1, 2)}  # 60% fail, in every batch alike
    path = pipeline(tmp_path, server, tasks=40, batch_size=4, concurrency=4)
    code, lines = factory_run(path)
    assert code == 1 and len(lines) == 1, lines
    assert re.match(r"error: stage 'self_label': (\d+) of (\d+) model calls failed \(\d+% > "
                    r"backend\.max_error_fraction 0\.5; first error: HTTP 500: upstream model crashed", lines[0]), lines
    failed, answered = map(int, re.search(r"(\d+) of (\d+) model calls", lines[0]).groups())
    assert answered == len(server.calls) == 16 and failed == sum(1 for n in server.calls if n % 5 in (0, 1, 2))
    assert cached_calls(tmp_path) == answered - failed  # what succeeded is kept

    # accepting more failures is not a new run: the same run resumes, the cached answers are not asked again
    path.write_text(path.read_text().replace('"max_retries": 0', '"max_retries": 0, "max_error_fraction": 0.7'))
    server.calls.clear()
    code, lines = factory_run(path)
    assert code == 0, lines
    assert len(server.calls) == 40 - (answered - failed)
    wh = Warehouse(tmp_path / "wh")
    assert wh.query("SELECT count(*) FROM runs").item() == 1
    row = stage_row(wh, "self_label")
    assert (row["calls"], row["cached_calls"], row["records_rejected"]) == (40 - (answered - failed),
                                                                             answered - failed, 24)
    assert json.loads(row["metrics"])["model_errors"] == 24
    assert len(model_errors(wh)) == 24 and wh.query("SELECT count(*) FROM samples").item() == 16


def test_a_dead_server_costs_one_judged_batch_not_every_call(tmp_path: Path, server: Server):
    server.default = "fail"
    path = pipeline(tmp_path, server, tasks=40, batch_size=4, concurrency=4)
    code, lines = factory_run(path)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: stage 'self_label': the first 16 model calls all failed (first error: HTTP 500")
    assert len(server.calls) == 16
    server.default = "ok"
    code, lines = factory_run(path)
    assert code == 0, lines
    assert Warehouse(tmp_path / "wh").query("SELECT count(*) FROM samples_kept").item() == 40


def test_retry_errors_asks_the_failed_calls_of_a_finished_stage_again(tmp_path: Path, server: Server):
    server.modes = {1: "fail", 4: "fail"}
    path = pipeline(tmp_path, server, tasks=6)
    code, lines = factory_run(path)
    assert code == 0, lines
    assert "2 model call(s) failed (model_error rejects): `factory run … --retry-errors`" in LAST_STDOUT[0]
    wh = Warehouse(tmp_path / "wh")
    errors = model_errors(wh)
    assert len(errors) == 2
    for _, detail in errors:  # the HTTP status and the server's own words, cut to a sensible length
        assert f"HTTP 500: {CRASH} xxx" in detail and detail.endswith("…") and len(detail) < 400
    kept_before = set(wh.query("SELECT sample_id FROM samples_kept").to_series())
    assert len(kept_before) == 4 and cached_calls(tmp_path) == 4

    server.modes = {}
    server.calls.clear()
    code, lines = factory_run(path)  # a plain rerun of a finished run asks nothing again
    assert code == 0 and server.calls == []
    assert len(model_errors(wh)) == 2

    code, lines = factory_run(path, "--retry-errors")
    assert code == 0, lines
    assert sorted(server.calls) == [1, 4]  # only the failed calls reach the server
    assert model_errors(wh) == []
    kept_after = set(wh.query("SELECT sample_id FROM samples_kept").to_series())
    assert kept_before < kept_after and len(kept_after) == 6  # nothing lost, nothing duplicated
    row = stage_row(wh, "self_label")
    assert (row["calls"], row["cached_calls"]) == (2, 4) and "model_errors" not in json.loads(row["metrics"])
    assert stage_row(wh, "dedup")["records_out"] == 6  # the stages after it ran again on the new samples
    assert wh.query("SELECT count(*) FROM runs WHERE status = 'done'").item() == 1


def test_null_content_is_a_model_error_and_never_cached(tmp_path: Path, server: Server):
    server.modes = {3: "null"}
    path = pipeline(tmp_path, server, tasks=5)
    code, lines = factory_run(path)
    assert code == 0, lines
    wh = Warehouse(tmp_path / "wh")
    [(_, detail)] = model_errors(wh)
    assert "the server answered content: null" in detail
    assert wh.query("SELECT count(*) FROM samples WHERE output = ''").item() == 0
    assert cached_calls(tmp_path) == 4

    server.modes = {}
    server.calls.clear()
    code, lines = factory_run(path, "--retry-errors")
    assert code == 0, lines
    assert server.calls == [3]
    assert model_errors(wh) == [] and wh.query("SELECT count(*) FROM samples_kept").item() == 5


@pytest.mark.parametrize("body, said", [
    ('{"error": {"message": "model is overloaded", "type": "server_error"}}', "model is overloaded"),
    ('{"error": "bad gateway upstream"}', "bad gateway upstream"),
    ('{"detail": "Not Found"}', "Not Found"),
    ("<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>"),
    ('{"unexpected": 1}', '{"unexpected": 1}'),
])
def test_error_text_is_what_the_server_said(body: str, said: str):
    from factory.backends.openai_compat import error_text

    assert error_text(body) == said


def test_short_error_is_one_line_of_bounded_length():
    from factory.call_errors import ERROR_TEXT_CHARS, short_error

    text = short_error("line one\n\n  line two " + "y" * 1000)
    assert text.startswith("line one line two yyy") and "\n" not in text
    assert len(text) == ERROR_TEXT_CHARS and text.endswith("…")
    assert short_error(None) == "" and short_error("fine") == "fine"
