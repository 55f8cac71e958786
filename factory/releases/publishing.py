"""Publishing: the runs' kept records become ``releases/NAME/VERSION/``, atomically and immutably.

- a release is written into a hidden temporary folder beside the others and moved into place with one
  ``os.rename``; a crash leaves no half release visible (leftovers are swept by the next publish);
- a version is never rewritten: the same content again is a no-op, different content is refused
  (content = the data files' checksums, so the same records always give the same ``content_hash``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

import schemas
from factory.host import sha256_file
from factory.names import NAME_RE, NAME_RULE, shown
from factory.release_card import CardError, card_body, card_metadata
from factory.releases.catalog import register, sync_catalog
from factory.releases.gather import Gathered, gather
from factory.releases.manifest import FileEntry, content_hash, load_manifest, validate_manifest
from factory.releases.naming import bump, parse_version, releases_root, versions
from factory.releases.shards import write_config
from factory.releases.spec import ReleaseConflict, ReleaseError, ReleaseSpec
from factory.warehouse import Warehouse, now

TMP_PREFIX = ".tmp-"


@dataclass
class PublishResult:
    name: str
    version: str
    path: Path
    created: bool
    content_hash: str
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _sweep(name_dir: Path) -> None:
    """Remove temporary folders left by crashed publishes (called under the name's lock)."""
    for p in name_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


def publish(wh: Warehouse, name: str, run_ids: Sequence[str], spec: ReleaseSpec | None = None,
            stages: list[str] | None = None,
            _before_move: Callable[[Path], None] | None = None) -> PublishResult:
    """Write a release of the runs' kept records; a no-op when that content is already published.

    Without ``spec.version`` the version is the last one bumped by ``spec.bump``, unless the last
    release already holds this content (then nothing new is made). ``_before_move`` is a test hook
    called with the finished temporary folder just before it is moved into place.
    """
    spec = spec or ReleaseSpec()
    if not NAME_RE.fullmatch(name):
        raise ReleaseError(f"release name {shown(name)} must be {NAME_RULE}")
    g = gather(wh, run_ids, spec, stages)
    name_dir = releases_root(wh) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(name_dir / ".lock")):
        _sweep(name_dir)
        sync_catalog(wh)
        tmp = name_dir / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            return _publish_locked(wh, name, spec, g, name_dir, tmp, _before_move)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _publish_locked(wh: Warehouse, name: str, spec: ReleaseSpec, g: Gathered, name_dir: Path, tmp: Path,
                    before_move: Callable[[Path], None] | None) -> PublishResult:
    entries: list[FileEntry] = []
    configs: dict[str, dict[str, Any]] = {}
    for config, df in g.configs.items():
        files, schema, nbytes = write_config(df, tmp, config)
        entries += files
        configs[config] = {"rows": df.height, "paths": [f.path for f in files], "schema": schema,
                           "num_bytes": nbytes, "download_size": sum(f.bytes for f in files)}
    digest = content_hash(entries)
    rows = {c: info["rows"] for c, info in configs.items()}
    existing = versions(wh, name)
    version = spec.version
    if version is None:
        if existing and load_manifest(name_dir / existing[-1])["content_hash"] == digest:
            return PublishResult(name, existing[-1], name_dir / existing[-1], False, digest, rows)
        version = bump(existing[-1] if existing else None, spec.bump)
    if version in existing:
        old = load_manifest(name_dir / version)["content_hash"]
        if old != digest:
            raise ReleaseConflict(f"release {name}@{version} already exists with different content "
                                  f"({old[:12]} vs {digest[:12]}); versions are immutable: publish a new version "
                                  f"(default: {bump(existing[-1], spec.bump)})")
        return PublishResult(name, version, name_dir / version, False, digest, rows)

    older = [v for v in existing if parse_version(v) < parse_version(version)]
    parents = [f"{name}@{older[-1]}"] if older else []
    (tmp / "README.md").write_text(render_card(name, version, spec, g, configs, parents), encoding="utf-8")
    readme = FileEntry("README.md", sha256_file(tmp / "README.md"), (tmp / "README.md").stat().st_size, None)
    manifest = {
        "name": name, "version": version, "created_at": now().isoformat(timespec="seconds") + "Z",
        "config_hash": g.config_hash, "content_hash": digest, "parents": parents, "run_ids": g.run_ids,
        "model_ids": g.model_ids, "funnel": g.funnel, "schema_versions": schemas.versions(),
        "configs": {c: {"rows": info["rows"], "files": info["paths"], "num_bytes": info["num_bytes"],
                        "columns": info["schema"].names} for c, info in configs.items()},
        "files": [e.__dict__ for e in [readme, *entries]],
    }
    validate_manifest(manifest)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _fsync_tree(tmp)
    if before_move is not None:
        before_move(tmp)
    final = name_dir / version
    os.rename(tmp, final)  # the one step that makes the release visible
    _fsync_dir(name_dir)
    register(wh, final, manifest)
    return PublishResult(name, version, final, True, digest, rows)


def render_card(name: str, version: str, spec: ReleaseSpec, g: Gathered, configs: dict[str, dict[str, Any]],
                parents: list[str]) -> str:
    """The release's README.md: the same inputs always give the same text (``factory repair`` relies on it)."""
    try:
        metadata = card_metadata(name, spec, configs)
    except CardError as exc:
        raise ReleaseError(str(exc)) from None
    return ("---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
            + "---\n\n" + card_body(name, version, spec, g, configs, parents))


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
