"""Push a release to the Hugging Face Hub: one commit holding every file, then a tag named by the version.

Why one ``create_commit`` with ``parent_commit`` rather than ``upload_folder``: a release must land
whole or not at all, and if someone else pushes to the branch meanwhile the Hub refuses the commit
instead of interleaving the two. The tag makes ``load_dataset(repo, revision="1.2.0")`` reproducible,
and its presence is how a repeated push knows there is nothing left to do.

The token comes from ``HF_TOKEN`` or the usual login (``hf auth login``) and is only handed to
``HfApi``; nothing here prints or stores it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from factory.releases import Release, ReleaseError
from factory.releases import open as open_release

log = logging.getLogger("factory.hub")
T = TypeVar("T")

REPO_TYPE = "dataset"
BRANCH = "main"
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class PushError(RuntimeError):
    """A push that cannot go on; the message says what to fix."""


@dataclass
class PushResult:
    repo_id: str
    version: str
    skipped: bool
    commit_oid: str | None = None
    parent_commit: str | None = None
    paths: list[str] = field(default_factory=list)


def commit_paths(release: Release) -> list[str]:
    """Every file of the release in repo paths, as the commit adds them: card, manifest, data shards."""
    listed = [f["path"] for f in release.manifest["files"]]
    return sorted({*listed, "manifest.json"}, key=lambda p: (p != "README.md", p != "manifest.json", p))


def commit_operations(release: Release) -> list[Any]:
    """One ``CommitOperationAdd`` per file (fresh objects: huggingface_hub mutates them while uploading)."""
    from huggingface_hub import CommitOperationAdd

    return [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(release.path / p)) for p in commit_paths(release)]


def is_transient(exc: BaseException) -> bool:
    """5xx/429/408 answers and dropped connections are worth another try; anything else is not."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        return getattr(response, "status_code", None) in TRANSIENT_STATUS
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - huggingface_hub 2.x ships httpx2
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


def with_retries(fn: Callable[[], T], what: str, attempts: int = 5, base_wait_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``, retrying transient failures with exponential backoff (1, 2, 4… seconds)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            wait = base_wait_s * 2 ** (attempt - 1)
            log.warning("%s failed (%s), retrying in %.1fs (%d/%d)", what, type(exc).__name__, wait, attempt,
                        attempts - 1)
            sleep(wait)
    raise AssertionError("unreachable")


def resolve_token(token: str | None = None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise PushError("no Hugging Face token found: set the HF_TOKEN environment variable or run `hf auth login`")
    return found


def push(ref: str | Release, repo_id: str, *, warehouse: str | Path | None = None, endpoint: str | None = None,
         private: bool = False, token: str | None = None, attempts: int = 5, base_wait_s: float = 1.0) -> PushResult:
    """Upload release ``NAME@VERSION`` to dataset repo ``repo_id`` as one commit, tagged with the version."""
    from huggingface_hub import HfApi

    release = ref if isinstance(ref, Release) else open_release(ref, warehouse)  # verifies checksums first
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"--repo must be ORG/NAME, got {repo_id!r}")
    api = HfApi(endpoint=endpoint, token=resolve_token(token))

    def retry(fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what, attempts, base_wait_s)

    retry(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True), "create_repo")
    refs = retry(lambda: api.list_repo_refs(repo_id, repo_type=REPO_TYPE), "list_repo_refs")
    if any(t.name == release.version for t in refs.tags):
        log.info("%s: tag %s already exists, nothing to push", repo_id, release.version)
        return PushResult(repo_id, release.version, skipped=True)
    head = next((b.target_commit for b in refs.branches if b.name == BRANCH), None)
    paths = commit_paths(release)
    message = f"Release {release.name} {release.version}"
    description = (f"content_hash: {release.manifest['content_hash']}\n"
                   f"runs: {', '.join(release.manifest.get('run_ids', []))}")

    def commit() -> Any:
        return api.create_commit(repo_id, operations=commit_operations(release), commit_message=message,
                                 commit_description=description, repo_type=REPO_TYPE, revision=BRANCH,
                                 parent_commit=head)

    try:
        info = retry(commit, "create_commit")
        oid = info.oid
    except Exception as exc:
        oid = _landed_anyway(api, repo_id, head, message)
        if oid is None:
            raise PushError(f"commit to {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    retry(lambda: api.create_tag(repo_id, tag=release.version, revision=oid, repo_type=REPO_TYPE,
                                 tag_message=message, exist_ok=True), "create_tag")
    log.info("%s: pushed %s as commit %s", repo_id, release.ref, oid)
    return PushResult(repo_id, release.version, skipped=False, commit_oid=oid, parent_commit=head, paths=paths)


def _landed_anyway(api: Any, repo_id: str, head: str | None, message: str) -> str | None:
    """After a failed commit call: the commit's oid if it reached the Hub all the same (answer lost)."""
    try:
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
        now_head = next((b.target_commit for b in refs.branches if b.name == BRANCH), None)
        if now_head is None or now_head == head:
            return None
        commits = api.list_repo_commits(repo_id, repo_type=REPO_TYPE, revision=now_head)
        return now_head if commits and commits[0].title == message else None
    except Exception:
        return None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def describe(result: PushResult) -> str:
    if result.skipped:
        return f"{result.repo_id}: tag {result.version} already exists — nothing to push"
    return (f"{result.repo_id}: pushed {len(result.paths)} files as commit {result.commit_oid} "
            f"(parent {result.parent_commit}) and tagged it {result.version}")


__all__ = ["PushError", "PushResult", "ReleaseError", "commit_operations", "commit_paths", "push"]
