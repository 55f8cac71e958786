"""``manifest.json``: reading and validating it, and ``Release``, a folder checked file by file against it.

The manifest (schemas/release_manifest) lists every file with its sha256; a release is only handed out
after its files match, so a tampered or truncated shard is refused by name, never served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl

import schemas
from factory.host import sha256_file
from factory.integrity import file_sha256, memo_store
from factory.records import canonical_json
from factory.releases.spec import ChecksumError, ReleaseError


@dataclass
class FileEntry:
    """One file of a release as the manifest lists it."""

    path: str
    sha256: str
    bytes: int
    rows: int | None = None


def content_hash(entries: Sequence[FileEntry]) -> str:
    """Hash of the data files' paths and checksums: the same records give the same hash."""
    return hashlib.sha256(canonical_json(sorted((e.path, e.sha256) for e in entries)).encode()).hexdigest()


def load_manifest(folder: Path) -> dict[str, Any]:
    """The release's manifest, checked against schemas/release_manifest, or a ReleaseError naming the file
    (a corrupted or invalid one is one line, not a traceback)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReleaseError(f"{path}: manifest.json is missing; run `factory doctor`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); run `factory doctor`") \
            from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path}: corrupted, not valid JSON ({exc.msg}: line {exc.lineno}, column "
                           f"{exc.colno}); run `factory doctor`") from None
    if not isinstance(manifest, dict):
        raise ReleaseError(f"{path}: corrupted, expected a JSON object; run `factory doctor`")
    try:
        validate_manifest(manifest)
    except ReleaseError as exc:
        raise ReleaseError(f"{path}: {exc}; run `factory doctor`") from None
    return manifest


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schemas.load("release_manifest"))


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise ReleaseError naming the first field that breaks schemas/release_manifest."""
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ReleaseError(f"manifest is invalid at {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")


@dataclass
class Release:
    """A published release, checked against its manifest: ``.path``, ``.manifest``, ``.to_polars()``."""

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def configs(self) -> list[str]:
        return list(self.manifest.get("configs", {}))

    def files(self, config: str | None = None) -> list[Path]:
        """Absolute paths of a config's data files (or of every file in the manifest)."""
        if config is None:
            return [self.path / f["path"] for f in self.manifest["files"]]
        if config not in self.manifest.get("configs", {}):
            raise ReleaseError(f"release {self.ref} has no config {config!r}; it has: {', '.join(self.configs)}")
        return [self.path / p for p in self.manifest["configs"][config]["files"]]

    def to_polars(self, config: str = "sft") -> pl.DataFrame:
        return pl.read_parquet(self.files(config))

    def verify(self, memo: bool = False) -> None:
        """Raise :class:`ChecksumError` naming the first file that differs from the manifest (``memo``:
        trust a checksum this process computed while the file's inode and times are unchanged)."""
        warehouse = self.path.parents[2]
        store = memo_store(warehouse) if memo and (warehouse / "cache").is_dir() else None
        listed = {f["path"] for f in self.manifest["files"]}
        for f in self.manifest["files"]:
            p = self.path / f["path"]
            if not p.is_file():
                raise ChecksumError(f"release {self.ref}: file {f['path']} listed in manifest.json is missing")
            got = file_sha256(p, store) if memo else sha256_file(p)
            if got != f["sha256"]:
                raise ChecksumError(f"release {self.ref}: file {f['path']} was modified (sha256 {got[:12]}… "
                                    f"!= {f['sha256'][:12]}… in manifest.json)")
        data = self.path / "data"
        extra = sorted(str(p.relative_to(self.path)) for p in data.rglob("*") if p.is_file()) if data.is_dir() else []
        extra = [p for p in extra if p not in listed]
        if extra:
            raise ChecksumError(f"release {self.ref}: unexpected file {extra[0]} not listed in manifest.json")
