"""Immutable, versioned dataset releases in the Hugging Face Hub layout, and the consumer's API.

A release is a folder ``<warehouse>/releases/<name>/<version>/``::

    README.md                                  dataset card: YAML metadata (configs, dataset_info…) + body
    manifest.json                              schemas/release_manifest: lineage, funnel, file checksums
    data/sft/train-00000-of-00001.parquet      one folder of shards per config (sft, preference)

``datasets.load_dataset(path, "sft")`` reads it as it is, and so does the Hub once pushed.

Why it is safe to build on:

- a release is written into a hidden temporary folder beside the others and moved into place with one
  ``os.rename``; a crash leaves no half release visible (leftovers are swept by the next publish);
- a version is never rewritten: the same content again is a no-op, different content is refused
  (content = the data files' checksums, so the same records always give the same ``content_hash``);
- ``open("NAME@VERSION")`` checks every file against the manifest's sha256 before handing it out.

The folders are the source of truth; the catalog's ``releases`` table indexes them for ``factory sql``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import jsonschema
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

import schemas
from factory.conversations import PREFERENCE_MESSAGE_COLUMNS, SFT_MESSAGE_COLUMNS, preference_messages, sft_messages
from factory.names import NAME_RE, NAME_RULE, VERSION_RE, VERSION_RULE, Version, is_version, shown
from factory.records import canonical_json, content_id
from factory.release_card import SPLIT, CardError, card_body, card_metadata
from factory.warehouse import ID_COLUMNS, RECORD_KIND_OF_TABLE, Warehouse, now

FIRST_VERSION = "1.0.0"
TMP_PREFIX = ".tmp-"
#: shard size, as in ``datasets.push_to_hub``'s default: big enough for few files, small enough to stream
MAX_SHARD_BYTES = 500 << 20
ROW_GROUP_ROWS = 100_000
MAX_SHARD_ROWS = 250_000
#: near-unique text and id columns: dictionary-encoding them only costs time (and pyarrow then gives up)
UNIQUE_COLUMNS = frozenset({"instruction", "input", "output", "sample_id", "task_id", "parent_ids", "prompt", "chosen",
                            "rejected", "pair_id", "chosen_id", "rejected_id", "score", "margin",
                            *SFT_MESSAGE_COLUMNS, *PREFERENCE_MESSAGE_COLUMNS})
#: long free text: min/max statistics on it help no reader, and cost time to compute
TEXT_COLUMNS = frozenset({"instruction", "input", "output", "prompt", "chosen", "rejected", "gen_params",
                          *SFT_MESSAGE_COLUMNS, *PREFERENCE_MESSAGE_COLUMNS})

SFT_COLUMNS = ["instruction", "input", "output", "sample_id", "task_id", "category", "source", "producer",
               "template_id", "gen_params", "round", "run_id", "parent_ids"]
PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected", "pair_id", "task_id", "chosen_id", "rejected_id", "margin",
                      "rule", "producer", "round", "run_id"]
# each config also carries its rows as chat turns (factory/conversations.py): sft `messages`; preference
# `prompt_messages`, `chosen_messages`, `rejected_messages`

_RELEASES_DDL = """
CREATE TABLE IF NOT EXISTS releases (
    name VARCHAR, version VARCHAR, path VARCHAR, created_at TIMESTAMP, content_hash VARCHAR,
    config_hash VARCHAR, rows JSON, files JSON, run_ids VARCHAR[], parents VARCHAR[],
    PRIMARY KEY (name, version));
"""


class ReleaseError(RuntimeError):
    """A release that cannot be made or used; the message says which and why."""


class ReleaseConflict(ReleaseError):
    """The version exists with different content: versions are immutable."""


class ChecksumError(ReleaseError):
    """A release file differs from its manifest (modified, missing or unexpected)."""


class ReleaseSpec(BaseModel):
    """What to publish and how to label it (shared by the ``publish`` stage and ``factory publish``)."""

    model_config = ConfigDict(extra="forbid")
    version: Version | None = Field(None,
                                description="X.Y.Z; default: the last version bumped by `bump`")
    bump: Literal["patch", "minor", "major"] = "patch"
    license: str = Field("other", description="Hub license id, e.g. apache-2.0, cc-by-4.0")
    tags: list[str] = Field(default_factory=list)
    description: str = ""
    min_score: float | None = Field(None, description="keep samples whose score is at least this (needs `scores`)")
    score_column: str | None = Field(None, description="column of `scores` (default: composite, else score)")
    include_gold: bool = Field(False, description="also publish tasks' gold answers (seeds) as sft rows")
    gold_sources: list[str] | None = Field(None, description="with include_gold: only the gold answers of tasks of "
                                           "these sources (e.g. [seed]: human answers, not a generator's)")


# -- versions -----------------------------------------------------------------------------------------


def parse_version(version: str) -> tuple[int, int, int]:
    m = VERSION_RE.fullmatch(version)
    if not m:
        raise ReleaseError(f"version {shown(version)} must be {VERSION_RULE}")
    return int(m[1]), int(m[2]), int(m[3])


def bump(version: str | None, part: str = "patch") -> str:
    """The next version after ``version`` (the first release is 1.0.0)."""
    if version is None:
        return FIRST_VERSION
    major, minor, patch = parse_version(version)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ReleaseError(f"bump must be patch, minor or major, not {part!r}")


def releases_root(wh: Warehouse) -> Path:
    return wh.root / "releases"


def versions(wh: Warehouse, name: str) -> list[str]:
    """Published versions of ``name``, oldest first (only complete, moved-in folders count)."""
    folder = releases_root(wh) / name
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir()
             if VERSION_RE.fullmatch(p.name) and (p / "manifest.json").is_file()]
    return sorted(found, key=parse_version)


def release_names(wh: Warehouse) -> list[str]:
    root = releases_root(wh)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)) if root.is_dir() else []


# -- gathering the records ----------------------------------------------------------------------------


@dataclass
class Gathered:
    """The frames a release is made of, plus what its card and manifest say about them."""

    configs: dict[str, pl.DataFrame]
    run_ids: list[str]
    config_hash: str
    model_ids: list[str]
    template_ids: list[str]
    funnel: list[dict[str, Any]]
    scores: pl.Series | None = None
    score_column: str | None = None


def _concat(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.width]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _col(df: pl.DataFrame, name: str, dtype: pl.DataType | None = None) -> pl.Expr:
    dtype = dtype or pl.String()
    return pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype=dtype).alias(name)


def _score_table(scores: pl.DataFrame, column: str | None) -> tuple[pl.DataFrame, str] | None:
    if scores.is_empty() or "sample_id" not in scores.columns:
        return None
    column = column or next((c for c in ("composite", "score") if c in scores.columns), None)
    if column is None or column not in scores.columns:
        return None
    table = scores.group_by("sample_id").agg(pl.col(column).cast(pl.Float64).mean().alias("score"))
    return table, column


def _refuse_damaged(wh: Warehouse, run_ids: Sequence[str]) -> None:
    """A release made from a run with a damaged file would silently lack its records: refuse, naming it."""
    from factory.integrity import check_files, registered_files

    damaged = check_files(wh, registered_files(wh, run_ids), deep=True)
    if damaged:
        d = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise ReleaseError(f"run {d.run_id} has a damaged file {d.path} ({d.problem}){more}: not publishing "
                           f"from a damaged run; run `factory repair -w {wh.root}` first")


def gather(wh: Warehouse, run_ids: Sequence[str], spec: ReleaseSpec,
           stages: list[str] | None = None) -> Gathered:
    """Build the ``sft`` (and, with pairs, ``preference``) frames from the runs' kept records."""
    if not run_ids:
        raise ReleaseError("no run to publish from")
    runs_in = f"({','.join('?' * len(run_ids))})"
    stage_filter = f" AND f.stage IN ({','.join('?' * len(stages))})" if stages else (" AND false" if stages == []
                                                                                       else "")
    with wh.connect(read_only=True) as con:  # one catalog visit for everything (each connect costs ~20 ms)
        known = {r[0]: r[1] for r in con.execute("SELECT run_id, config_hash FROM runs").fetchall()}
        funnel_rows = con.execute(
            "SELECT run_id, stage, kind, records_in, records_out, records_rejected FROM stages "
            f"WHERE run_id IN {runs_in} AND status = 'done' ORDER BY run_id, position", list(run_ids)).fetchall()
        file_rows = con.execute(
            "SELECT f.table_name, f.path FROM files f LEFT JOIN stages s USING (run_id, stage) "
            f"WHERE f.run_id IN {runs_in}{stage_filter} ORDER BY f.created_at, s.position",
            [*run_ids, *(stages or [])]).fetchall()
    missing = [r for r in run_ids if r not in known]
    if missing:
        raise ReleaseError(f"no run {missing[0]!r} in {wh.root} (see `factory status`)")
    _refuse_damaged(wh, run_ids)
    paths: dict[str, list[Path]] = {}
    for table, path in file_rows:
        paths.setdefault(table, []).append(wh.root / path)

    def read(table: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        frames = []
        for p in paths.get(table, []):
            present = set(pq.read_schema(p).names)
            frames.append(pl.read_parquet(p, columns=[c for c in columns if c in present] if columns else None))
        return _concat(frames)

    rejects = read("rejects")
    rejected = (rejects.filter(pl.col("record_id").is_not_null()).select("run_id", "record_kind", "record_id")
                if not rejects.is_empty() else None)

    def kept_of(table: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        df = read(table, columns)
        if rejected is None or df.is_empty():
            return df
        drop = rejected.filter(pl.col("record_kind") == RECORD_KIND_OF_TABLE[table]).select(
            "run_id", pl.col("record_id").alias(ID_COLUMNS[table]))
        return df.join(drop, on=["run_id", ID_COLUMNS[table]], how="anti") if drop.height else df

    samples = kept_of("samples", SFT_COLUMNS)  # only what the release holds: less to decode
    tasks = kept_of("tasks")
    dropped_tasks = (rejected.filter(pl.col("record_kind") == "task")["record_id"] if rejected is not None
                     else pl.Series("record_id", [], pl.String))
    pairs = kept_of("pairs")
    scores = read("scores")

    task_info = (tasks.select("task_id", _col(tasks, "source"), _col(tasks, "instruction").alias("t_instruction"),
                              _col(tasks, "input").alias("t_input")).unique("task_id", keep="first")
                 if not tasks.is_empty() else None)

    sft_parts = []
    if not samples.is_empty():
        s = samples.filter(~pl.col("task_id").is_in(dropped_tasks.implode())) if len(dropped_tasks) else samples
        if task_info is not None:
            s = s.join(task_info, on="task_id", how="left")
        for col, fallback in (("instruction", "t_instruction"), ("input", "t_input")):
            if col not in s.columns or s[col].null_count():  # samples usually carry their task's text
                s = s.with_columns(pl.coalesce(_col(s, col), _col(s, fallback), pl.lit("" if col == "input" else None,
                                                                                        pl.String)).alias(col))
        sft_parts.append(s.select(
            *(pl.col(c) if c in s.columns else _col(s, c) for c in SFT_COLUMNS if c not in ("round", "parent_ids")),
            _col(s, "round", pl.Int64()), _col(s, "parent_ids", pl.List(pl.String()))).select(SFT_COLUMNS))
    if spec.include_gold and not tasks.is_empty() and "gold_answer" in tasks.columns:
        g = tasks.filter(pl.col("gold_answer").is_not_null() & (pl.col("gold_answer").str.strip_chars() != ""))
        if spec.gold_sources is not None:
            g = g.filter(pl.col("source").is_in(spec.gold_sources))
        if not g.is_empty():
            g = g.with_columns(
                pl.col("gold_answer").alias("output"),
                pl.col("task_id").map_elements(lambda t: content_id("gold", t), return_dtype=pl.String)
                .alias("sample_id"),
                pl.concat_list(pl.col("task_id")).alias("parent_ids"))
            if sft_parts:  # a gold answer a stage already wrote as a sample (spin_pairs' reference) is there once
                g = g.filter(~pl.col("sample_id").is_in(sft_parts[0]["sample_id"].implode()))
            sft_parts.append(g.select(
                *(_col(g, c) for c in SFT_COLUMNS if c not in ("round", "parent_ids")),
                _col(g, "round", pl.Int64()), pl.col("parent_ids")).select(SFT_COLUMNS))
    sft = _concat(sft_parts)
    if sft.is_empty():
        raise ReleaseError(f"run(s) {', '.join(run_ids)} have no kept samples to publish "
                           "(set include_gold: true to publish seed answers)")
    sft = sft_messages(sft)

    score_col = None
    score_values = None
    found = _score_table(scores, spec.score_column)
    if spec.min_score is not None and found is None:
        raise ReleaseError(f"min_score={spec.min_score} needs a `scores` table with sample_id and "
                           f"{spec.score_column or 'composite/score'} columns; add a score stage before publish")
    if found is not None:
        table, score_col = found
        sft = sft.join(table, on="sample_id", how="left")
        if spec.min_score is not None:
            sft = sft.filter(pl.col("score") >= spec.min_score)
        score_values = sft["score"].drop_nulls()
    sft = sort_by_id(sft, "sample_id")
    configs = {"sft": sft}

    if not pairs.is_empty():
        all_samples = read("samples", ["sample_id", "output"])
        outs = all_samples.select("sample_id", "output").unique("sample_id", keep="first")
        p = (pairs.join(outs.rename({"sample_id": "chosen_id", "output": "chosen"}), on="chosen_id", how="inner")
             .join(outs.rename({"sample_id": "rejected_id", "output": "rejected"}), on="rejected_id", how="inner"))
        if task_info is not None:
            p = p.join(task_info.select("task_id", "t_instruction", "t_input"), on="task_id", how="left")
        p = p.with_columns(pl.when(_col(p, "t_input").fill_null("") != "")
                           .then(_col(p, "t_instruction") + "\n\n" + _col(p, "t_input"))
                           .otherwise(_col(p, "t_instruction")).alias("prompt"))
        p = p.filter(pl.col("prompt").is_not_null())
        if not p.is_empty():
            configs["preference"] = p.select(
                *(_col(p, c) for c in PREFERENCE_COLUMNS if c not in ("margin", "round")),
                _col(p, "margin", pl.Float64()), _col(p, "round", pl.Int64())
            ).select(PREFERENCE_COLUMNS)
            configs["preference"] = sort_by_id(preference_messages(configs["preference"]), "pair_id")

    def distinct(df: pl.DataFrame, col: str) -> set[str]:
        return set(df[col].drop_nulls().unique().to_list()) if col in df.columns else set()

    producers = distinct(sft, "producer") | distinct(tasks, "producer")
    templates = distinct(sft, "template_id") | distinct(tasks, "template_id")
    if "preference" in configs:
        producers |= distinct(configs["preference"], "producer")
    hashes = sorted({known[r] for r in run_ids})
    config_hash = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    funnel = [{"run_id": r[0], "stage": r[1], "kind": r[2], "records_in": int(r[3] or 0),
               "records_out": int(r[4] or 0), "records_rejected": int(r[5] or 0)} for r in funnel_rows]
    return Gathered(configs=configs, run_ids=list(run_ids), config_hash=config_hash,
                    model_ids=sorted(m for m in producers if m != "human"), template_ids=sorted(templates),
                    funnel=funnel, scores=score_values, score_column=score_col)


# -- writing ------------------------------------------------------------------------------------------


def _small_type(t: pa.DataType) -> pa.DataType:
    """Arrow's 32-bit-offset types, which every parquet reader (and the Hub's viewer) maps to `string`/list."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_list(t):
        return pa.list_(_small_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _small_type(f.type)) for f in t])
    return t


@dataclass
class FileEntry:
    path: str
    sha256: str
    bytes: int
    rows: int | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with builtins.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_config(df: pl.DataFrame, folder: Path, config: str,
                 max_shard_bytes: int = MAX_SHARD_BYTES,
                 max_shard_rows: int = MAX_SHARD_ROWS) -> tuple[list[FileEntry], pa.Schema, int]:
    """Write one config's shards as ``data/<config>/train-0000i-of-0000N.parquet``; returns the entries.

    The shard count depends only on the data (bytes and rows), never on the machine, so the same
    records always give the same files; the shards are written and checksummed in parallel.
    """
    n = max(1, math.ceil(df.estimated_size() / max_shard_bytes), math.ceil(df.height / max_shard_rows))
    per = max(1, math.ceil(df.height / n))
    (folder / "data" / config).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> tuple[FileEntry, pa.Schema, int]:
        rel = f"data/{config}/{SPLIT}-{i:05d}-of-{n:05d}.parquet"
        part = df.slice(i * per, per).to_arrow()
        part = part.cast(pa.schema([pa.field(f.name, _small_type(f.type)) for f in part.schema]))
        pq.write_table(part, folder / rel, compression="zstd", row_group_size=ROW_GROUP_ROWS,
                       use_dictionary=[c for c in part.schema.names if c not in UNIQUE_COLUMNS],
                       write_statistics=[c for c in part.schema.names if c not in TEXT_COLUMNS])
        return FileEntry(rel, _sha256(folder / rel), (folder / rel).stat().st_size, part.num_rows), part.schema, \
            part.nbytes

    if n == 1:
        done = [write(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1)) as pool:  # the GIL is released
            done = list(pool.map(write, range(n)))
    return [d[0] for d in done], done[0][1], sum(d[2] for d in done)


def sort_by_id(df: pl.DataFrame, column: str) -> pl.DataFrame:
    """Rows in id order, one per id (first run wins): the same records always give the same bytes.

    16-hex content ids sort as 64-bit integers, several times faster than as strings; duplicates
    (the same record in two runs) are then neighbours, so finding them is one cheap comparison.
    """
    ids = df[column]
    lengths = ids.str.len_bytes()
    key = ids.str.to_integer(base=16, dtype=pl.UInt64, strict=False) if lengths.min() == lengths.max() == 16 else None
    if key is None or key.null_count():
        out = df.sort(column, maintain_order=True)  # stable: among equal ids, the first-written run comes first
    else:
        out = df.with_columns(key.alias("__key")).sort("__key", maintain_order=True).drop("__key")
    sorted_ids = out[column]
    if out.height > 1 and (sorted_ids.head(-1) == sorted_ids.tail(-1)).any():
        out = out.filter(pl.col(column).is_first_distinct())
    return out


def content_hash(entries: Sequence[FileEntry]) -> str:
    """Hash of the data files' paths and checksums: the same records give the same hash."""
    return hashlib.sha256(canonical_json(sorted((e.path, e.sha256) for e in entries)).encode()).hexdigest()


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


def load_manifest(folder: Path) -> dict[str, Any]:
    """The release's manifest, or a ReleaseError naming the file (a corrupted one is not a traceback)."""
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
    return manifest


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
    readme = FileEntry("README.md", _sha256(tmp / "README.md"), (tmp / "README.md").stat().st_size, None)
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


def validate_manifest(manifest: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft202012Validator(schemas.load("release_manifest")).iter_errors(manifest),
                    key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ReleaseError(f"manifest is invalid at {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")


# -- the catalog --------------------------------------------------------------------------------------


def register(wh: Warehouse, folder: Path, manifest: dict[str, Any]) -> None:
    """Index a release in the catalog's ``releases`` table (idempotent)."""
    files = manifest.get("configs", {})
    with wh.connect() as con:
        con.execute(_RELEASES_DDL)
        con.execute("DELETE FROM releases WHERE name = ? AND version = ?", [manifest["name"], manifest["version"]])
        con.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            manifest["name"], manifest["version"], str(folder.relative_to(wh.root)),
            manifest["created_at"].rstrip("Z"), manifest["content_hash"], manifest["config_hash"],
            json.dumps({c: info["rows"] for c, info in files.items()}),
            json.dumps({c: info["files"] for c, info in files.items()}),
            manifest.get("run_ids", []), manifest["parents"]])


def sync_catalog(wh: Warehouse) -> None:
    """Register release folders the catalog does not know (a crash between move and register)."""
    on_disk = {(n, v) for n in release_names(wh) for v in versions(wh, n)}
    if not on_disk:
        return
    with wh.connect() as con:
        con.execute(_RELEASES_DDL)
        known = set(con.execute("SELECT name, version FROM releases").fetchall())
    for n, v in sorted(on_disk - known):
        folder = releases_root(wh) / n / v
        try:
            manifest = load_manifest(folder)
            validate_manifest(manifest)
        except ReleaseError as exc:  # not registrable: say so, register the rest
            sys.stderr.write(f"warning: release {n}@{v} not registered: {exc}\n")
            continue
        register(wh, folder, manifest)


def catalog_frame(wh: Warehouse, con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    """The catalog's ``releases`` table (empty with the right columns when nothing is published)."""
    from factory.sql import fetch_polars

    def read(c: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
        has = c.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'releases'").fetchall()
        return fetch_polars(c, "SELECT * FROM releases ORDER BY name, created_at") if has[0][0] else None

    if con is not None:
        df = read(con)
    elif wh.catalog_path.exists():
        with wh.connect(read_only=True) as c:
            df = read(c)
    else:
        df = None
    if df is None:
        df = pl.DataFrame(schema={"name": pl.String, "version": pl.String, "path": pl.String,
                                  "created_at": pl.Datetime, "content_hash": pl.String, "config_hash": pl.String,
                                  "rows": pl.String, "files": pl.String, "run_ids": pl.List(pl.String),
                                  "parents": pl.List(pl.String)})
    return df


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _unregistered_rows(wh: Warehouse, df: pl.DataFrame) -> pl.DataFrame:
    """Catalog rows for release folders the catalog does not know yet (a kill between the move and
    ``register``): SQL shows them without writing; the next run or publish registers them."""
    known = set(zip(df["name"].to_list(), df["version"].to_list(), strict=True))
    rows = []
    for n in release_names(wh):
        for v in versions(wh, n):
            if (n, v) in known:
                continue
            folder = releases_root(wh) / n / v
            try:
                m = load_manifest(folder)
                validate_manifest(m)
            except ReleaseError:
                continue  # the views check it below; doctor names it
            rows.append({"name": n, "version": v, "path": str(folder.relative_to(wh.root)),
                         "created_at": datetime.fromisoformat(m["created_at"].rstrip("Z")),
                         "content_hash": m["content_hash"], "config_hash": m["config_hash"],
                         "rows": json.dumps({c: i["rows"] for c, i in m.get("configs", {}).items()}),
                         "files": json.dumps({c: i["files"] for c, i in m.get("configs", {}).items()}),
                         "run_ids": m.get("run_ids", []), "parents": m["parents"]})
    return pl.concat([df, pl.DataFrame(rows, schema=df.schema)]) if rows else df


def verified_files(wh: Warehouse, name: str, version: str, folder: Path) -> dict[str, list[str]]:
    """A release's data files per config, from its manifest, after checking each against its sha256
    (remembered per process while a file is unchanged); raises ReleaseError naming what differs."""
    manifest = load_manifest(folder)
    validate_manifest(manifest)
    Release(name, version, folder, manifest).verify(memo=True)
    return {c: info["files"] for c, info in manifest.get("configs", {}).items()}


def add_sql_views(con: duckdb.DuckDBPyConnection, wh: Warehouse) -> None:
    """Views for ``factory sql``: ``releases`` and ``release_<config>`` (rows with name and version).

    A release whose files differ from its manifest is left out of ``release_<config>`` with a warning,
    as ``open()`` refuses it: tampered rows are never served."""
    df = _unregistered_rows(wh, catalog_frame(wh))
    con.register("_releases", df)
    con.execute('CREATE TEMP VIEW "releases" AS SELECT * FROM "_releases"')
    per_config: dict[str, list[str]] = {"sft": [], "preference": []}
    for row in df.iter_rows(named=True):
        try:
            files = verified_files(wh, row["name"], row["version"], wh.root / row["path"])
        except ReleaseError as exc:
            _warn_release(wh, f"{row['name']}@{row['version']}", str(exc))
            continue
        for config, paths in files.items():
            if not paths:
                continue
            full = ", ".join(_quote(str(wh.root / row["path"] / p)) for p in paths)
            per_config.setdefault(config, []).append(
                f"SELECT {_quote(row['name'])} AS name, {_quote(row['version'])} AS version, * "
                f"FROM read_parquet([{full}])")
    for config, selects in per_config.items():
        if not re.fullmatch(r"[a-z0-9_]+", config):
            continue
        sql = " UNION ALL BY NAME ".join(selects) if selects else \
            "SELECT NULL::VARCHAR AS name, NULL::VARCHAR AS version WHERE false"
        con.execute(f'CREATE TEMP VIEW "release_{config}" AS {sql}')


_WARNED: set[tuple[str, str]] = set()


def _warn_release(wh: Warehouse, ref: str, problem: str) -> None:
    if (str(wh.root), ref) not in _WARNED:
        _WARNED.add((str(wh.root), ref))
        sys.stderr.write(f"warning: release {ref} is damaged ({problem}); left out of the release_* views; "
                         f"run `factory repair -w {wh.root}`\n")


# -- the consumer's side ------------------------------------------------------------------------------


def default_warehouse(warehouse: str | os.PathLike[str] | Warehouse | None = None) -> Warehouse:
    if isinstance(warehouse, Warehouse):
        return warehouse
    return Warehouse(warehouse or os.environ.get("FACTORY_WAREHOUSE") or "warehouse")


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
        from factory.integrity import file_sha256, memo_store

        store = memo_store(self.path.parents[2]) if memo and (self.path.parents[2] / "cache").is_dir() else None
        listed = {f["path"] for f in self.manifest["files"]}
        for f in self.manifest["files"]:
            p = self.path / f["path"]
            if not p.is_file():
                raise ChecksumError(f"release {self.ref}: file {f['path']} listed in manifest.json is missing")
            got = file_sha256(p, store) if memo else _sha256(p)
            if got != f["sha256"]:
                raise ChecksumError(f"release {self.ref}: file {f['path']} was modified (sha256 {got[:12]}… "
                                    f"!= {f['sha256'][:12]}… in manifest.json)")
        data = self.path / "data"
        extra = sorted(str(p.relative_to(self.path)) for p in data.rglob("*") if p.is_file()) if data.is_dir() else []
        extra = [p for p in extra if p not in listed]
        if extra:
            raise ChecksumError(f"release {self.ref}: unexpected file {extra[0]} not listed in manifest.json")


def parse_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    bad_version = version not in ("", "latest") and not is_version(version)
    if not NAME_RE.fullmatch(name) or (sep and not version) or bad_version:
        raise ReleaseError(f"release reference {shown(ref)} must be NAME@VERSION or NAME@latest (NAME: {NAME_RULE}; "
                           f"VERSION: {VERSION_RULE})")
    return name, version or "latest"


def open(ref: str, warehouse: str | os.PathLike[str] | Warehouse | None = None,  # noqa: A001
         verify: bool = True) -> Release:
    """Open ``NAME@VERSION`` (or ``NAME@latest``) from a warehouse, verifying every file's checksum.

    The warehouse is the argument, else ``$FACTORY_WAREHOUSE``, else ``./warehouse``.
    """
    wh = default_warehouse(warehouse)
    name, version = parse_ref(ref)
    found = versions(wh, name)
    if not found:
        raise ReleaseError(f"no release named {name!r} in {releases_root(wh)}")
    if version == "latest":
        version = found[-1]
    elif version not in found:
        raise ReleaseError(f"no release {name}@{version} in {releases_root(wh)}; versions: {', '.join(found)}")
    folder = releases_root(wh) / name / version
    manifest = load_manifest(folder)
    validate_manifest(manifest)
    release = Release(name, version, folder, manifest)
    if verify:
        release.verify()
    return release
