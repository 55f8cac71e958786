"""`factory push` against a recording Hub on loopback: the exact requests huggingface_hub sends.

The server implements just the endpoints a push uses (repo create, refs, YAML validation, preupload,
the LFS batch + upload, the NDJSON commit, tags, commits) and records every request, so the tests can
assert one commit with its parent, its exact file operations and the tag — and that the token never
lands in a file the factory wrote.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from typer.testing import CliRunner

from factory import hub, releases
from factory.records import content_id, frame
from factory.warehouse import StageStats, Warehouse

TOKEN = "hf_testTOKEN_" + "s3cr3t" * 4
REPO = "acme/demo-data"


def _oid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


class FakeHub:
    """A tiny Hub: state per dataset repo, every request recorded as (method, path, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.fail_next: dict[str, list[int]] = {}  # path fragment → status codes to answer first
        self.lose_commit_replies = 0  # commits that land but whose answer is a 500 (a lost response)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, fragment: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and fragment in r["path"]]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _reply(self, status: int, body: object = None) -> None:
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlparse(self.path).path
                headers = {k.lower(): v for k, v in self.headers.items()}
                hub_.requests.append({"method": method, "path": path, "headers": headers, "body": body})
                for fragment, codes in hub_.fail_next.items():
                    if fragment in path and codes:
                        self._reply(codes.pop(0), {"error": "try again"})
                        return
                try:
                    status, reply = hub_.route(method, path, body)
                except KeyError as exc:
                    status, reply = 404, {"error": f"not found: {exc}"}
                self._reply(status, reply)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

        return Handler

    def route(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if (method, path) == ("POST", "/api/repos/create"):
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo",
                             "url": f"{self.url}/datasets/{repo_id}"}
            first = _oid()
            self.repos[repo_id] = {"head": first, "tags": {}, "files": {}, "visibility": data.get("visibility"),
                                   "commits": [{"id": first, "title": "initial commit"}]}
            return 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}
        if (method, path) == ("POST", "/api/validate-yaml"):
            text = json.loads(body)["content"]
            meta = yaml.safe_load(text.split("---")[1])
            missing = [k for k in ("license", "configs", "dataset_info") if k not in meta]
            return (400, {"errors": [{"message": f"missing {missing}"}]}) if missing else (200, {"warnings": []})
        if method == "PUT" and parts[0] == "lfs-upload":
            self.lfs[parts[1]] = body
            return 200, {}
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            data = json.loads(body)
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}} for o in data["objects"]]}
        # /api/datasets/{org}/{name}/{action}/{rev...}
        assert parts[:2] == ["api", "datasets"], path
        repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], parts[5:]
        repo = self.repos[repo_id]
        if method == "GET" and action == "refs":
            return 200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo["head"]}],
                         "converts": [], "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c}
                                                  for t, c in repo["tags"].items()]}
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".parquet")
                                    else "regular", "shouldIgnore": False, "oid": None} for f in files]}
        if method == "POST" and action == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = lines[0]["value"]
            if header.get("parentCommit") and header["parentCommit"] != repo["head"]:
                return 412, {"error": "A commit has happened since. Please refresh and try again."}
            for item in lines[1:]:
                v = item["value"]
                if item["key"] == "file":
                    repo["files"][v["path"]] = base64.b64decode(v["content"])
                elif item["key"] == "lfsFile":
                    repo["files"][v["path"]] = self.lfs[v["oid"]]
            oid = _oid()
            repo["head"] = oid
            repo["commits"].insert(0, {"id": oid, "title": header["summary"]})
            if self.lose_commit_replies:
                self.lose_commit_replies -= 1
                return 500, {"error": "gateway lost the answer"}
            return 200, {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                         "success": True}
        if method == "POST" and action == "tag":
            tag = json.loads(body)["tag"]
            if tag in repo["tags"]:
                return 409, {"error": "tag exists"}
            repo["tags"][tag] = rest[0]
            return 200, {}
        if method == "GET" and action == "commits":
            return 200, [{"id": c["id"], "title": c["title"], "message": "", "date": "2026-01-01T00:00:00.000Z",
                          "authors": [{"user": "bot"}]} for c in repo["commits"]]
        return 404, {"error": f"unhandled {method} {path}"}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The recording Hub, with huggingface_hub pointed at it: online, LFS (not Xet), our token."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub() as server:
        yield server


def make_release(wh: Warehouse, n: int = 6, name: str = "demo", version: str | None = None) -> releases.Release:
    """A small release made from hand-written records (the pipeline-made one is in test_releases)."""
    run = "run-a"
    wh.begin_run(run, "demo", "{}", "c" * 64, 0)
    tasks = [{"task_id": content_id("t", i), "instruction": f"Name a colour number {i}.", "input": "",
              "category": "general", "source": "seed", "run_id": run, "stage": "seeds", "round": 0,
              "producer": "human", "parent_ids": []} for i in range(n)]
    samples = [{"sample_id": content_id("s", i), "task_id": t["task_id"], "sample_index": 0,
                "instruction": t["instruction"], "input": "", "category": "general", "output": f"Colour {i}.",
                "finish_reason": "stop", "run_id": run, "stage": "label", "round": 0, "producer": "model-x",
                "template_id": "self_label/answer@1", "gen_params": "{}", "parent_ids": [t["task_id"]]}
               for i, t in enumerate(tasks)]
    wh.commit_stage(run, "seeds", {"tasks": frame("task", tasks)}, StageStats("seeds", 0, n, n, 0))
    wh.commit_stage(run, "label", {"samples": frame("sample", samples)}, StageStats("self_label", 1, n, n, 0))
    wh.finish_run(run, "done")
    result = releases.publish(wh, name, [run], releases.ReleaseSpec(version=version, license="apache-2.0"))
    return releases.open(result.ref, wh)


def test_operation_list_names_every_file(warehouse: Warehouse) -> None:
    rel = make_release(warehouse)
    paths = hub.commit_paths(rel)
    assert paths == ["README.md", "manifest.json", "data/sft/train-00000-of-00001.parquet"]
    ops = hub.commit_operations(rel)
    assert [op.path_in_repo for op in ops] == paths
    assert all(Path(op.path_or_fileobj) == rel.path / op.path_in_repo for op in ops)
    assert hub.commit_operations(rel)[0] is not ops[0]  # fresh objects each call: huggingface_hub mutates them


def test_push_is_one_commit_on_the_head_then_a_tag(warehouse: Warehouse, fake_hub: FakeHub, tmp_path: Path) -> None:
    rel = make_release(warehouse)
    result = hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url)
    assert not result.skipped
    repo = fake_hub.repos[REPO]
    initial = repo["commits"][-1]["id"]

    creates = fake_hub.calls("POST", "/api/repos/create")
    assert len(creates) == 1 and json.loads(creates[0]["body"])["type"] == "dataset"
    commits = fake_hub.calls("POST", f"/api/datasets/{REPO}/commit/main")
    assert len(commits) == 1, "the whole release must be one commit"
    lines = [json.loads(line) for line in commits[0]["body"].decode().splitlines()]
    assert commits[0]["headers"]["content-type"].startswith("application/x-ndjson")
    assert lines[0] == {"key": "header", "value": {"summary": "Release demo 1.0.0", "parentCommit": initial,
                                                   "description": lines[0]["value"]["description"]}}
    ops = [(item["key"], item["value"]["path"]) for item in lines[1:]]
    assert ops == [("file", "README.md"), ("file", "manifest.json"),
                   ("lfsFile", "data/sft/train-00000-of-00001.parquet")]
    lfs = lines[3]["value"]
    shard = rel.path / "data/sft/train-00000-of-00001.parquet"
    assert lfs["oid"] == hashlib.sha256(shard.read_bytes()).hexdigest() and lfs["size"] == shard.stat().st_size
    # what the Hub holds is byte for byte the release
    assert repo["files"] == {p: (rel.path / p).read_bytes() for p in hub.commit_paths(rel)}

    tags = fake_hub.calls("POST", f"/api/datasets/{REPO}/tag/")
    assert len(tags) == 1 and tags[0]["path"].endswith(f"/tag/{result.commit_oid}")
    assert json.loads(tags[0]["body"])["tag"] == "1.0.0"
    assert repo["tags"] == {"1.0.0": result.commit_oid} and repo["head"] == result.commit_oid
    assert result.parent_commit == initial
    # every request authenticated with the token, none carried it elsewhere than the header
    hub_calls = [r for r in fake_hub.requests if not r["path"].startswith("/lfs-upload/")]
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub_calls)
    assert not any(TOKEN.encode() in r["body"] for r in fake_hub.requests)


def test_push_skips_when_the_tag_exists(warehouse: Warehouse, fake_hub: FakeHub) -> None:
    rel = make_release(warehouse)
    first = hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url)
    before = len(fake_hub.requests)
    again = hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url)
    assert again.skipped and not first.skipped
    new = fake_hub.requests[before:]
    assert [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in new] == [("POST", "create"), ("GET", "refs")]
    assert len(fake_hub.calls("POST", "/commit/")) == 1


def test_push_retries_transient_failures(warehouse: Warehouse, fake_hub: FakeHub) -> None:
    rel = make_release(warehouse)
    fake_hub.fail_next = {"/refs": [503], f"/api/datasets/{REPO}/commit/": [502]}
    result = hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url, base_wait_s=0.01)
    assert not result.skipped
    assert len(fake_hub.calls("POST", "/commit/")) == 2  # one 502, then the commit
    assert len(fake_hub.repos[REPO]["commits"]) == 2  # initial + ours: exactly one commit landed


def test_push_adopts_a_commit_whose_answer_was_lost(warehouse: Warehouse, fake_hub: FakeHub) -> None:
    rel = make_release(warehouse)
    fake_hub.lose_commit_replies = 1
    result = hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url, base_wait_s=0.01)
    repo = fake_hub.repos[REPO]
    assert len(repo["commits"]) == 2, "the retry must not add a second commit"
    assert result.commit_oid == repo["head"] and repo["tags"] == {"1.0.0": repo["head"]}


def test_push_refuses_when_main_moved(warehouse: Warehouse, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent push between our refs read and our commit: the Hub refuses, nothing interleaves."""
    rel = make_release(warehouse)
    from huggingface_hub import HfApi

    real = HfApi.list_repo_refs

    def refs_then_someone_pushes(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(self, *args, **kwargs)
        repo = fake_hub.repos[REPO]
        repo["head"] = _oid()
        repo["commits"].insert(0, {"id": repo["head"], "title": "someone else"})
        return out

    monkeypatch.setattr(HfApi, "list_repo_refs", refs_then_someone_pushes)
    with pytest.raises(hub.PushError, match="commit to acme/demo-data failed"):
        hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url, base_wait_s=0.01)
    assert fake_hub.repos[REPO]["tags"] == {}


def test_cli_push_and_token_hygiene(warehouse: Warehouse, fake_hub: FakeHub, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    from factory.cli import app

    rel = make_release(warehouse)
    caplog.set_level("DEBUG")
    res = CliRunner().invoke(app, ["push", rel.ref, "--repo", REPO, "--endpoint", fake_hub.url, "--private",
                                   "-w", str(warehouse.root)])
    assert res.exit_code == 0, res.output
    assert "tagged it 1.0.0" in res.output
    assert fake_hub.repos[REPO]["visibility"] == "private"
    again = CliRunner().invoke(app, ["push", rel.ref, "--repo", REPO, "--endpoint", fake_hub.url,
                                     "-w", str(warehouse.root)])
    assert again.exit_code == 0 and "already exists" in again.output
    # the token is in no file the factory wrote, no log line and no output
    for path in [*warehouse.root.rglob("*"), *(tmp_path / "hf_home").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in res.output + again.output + caplog.text


def test_push_without_token_names_the_fix(warehouse: Warehouse, fake_hub: FakeHub,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rel = make_release(warehouse)
    monkeypatch.delenv("HF_TOKEN")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.PushError, match="HF_TOKEN"):
        hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url)
    assert fake_hub.requests == []


def test_push_verifies_the_release_first(warehouse: Warehouse, fake_hub: FakeHub) -> None:
    rel = make_release(warehouse)
    shard = rel.path / "data/sft/train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(releases.ChecksumError, match="train-00000-of-00001.parquet was modified"):
        hub.push(rel.ref, REPO, warehouse=warehouse.root, endpoint=fake_hub.url)
    assert fake_hub.requests == []
