"""The records a release is made of: the runs' kept samples (and pairs) as ``sft`` and ``preference`` frames.

Kept means not rejected by any later stage: a sample, task or pair listed in ``rejects`` stays out. With
``include_gold`` the seeds' human answers are rows too; ``min_score`` keeps only well-scored samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from factory.conversations import preference_messages, sft_messages
from factory.integrity import check_files, registered_files
from factory.records import content_id
from factory.releases.shards import sort_by_id
from factory.releases.spec import ReleaseError, ReleaseSpec
from factory.warehouse import Warehouse, without_rejected

SFT_COLUMNS = ["instruction", "input", "output", "sample_id", "task_id", "category", "source", "producer",
               "template_id", "gen_params", "round", "run_id", "parent_ids"]
PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected", "pair_id", "task_id", "chosen_id", "rejected_id", "margin",
                      "rule", "producer", "round", "run_id"]
# each config also carries its rows as chat turns (factory/conversations.py): sft `messages`; preference
# `prompt_messages`, `chosen_messages`, `rejected_messages`


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

    def kept_of(table: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        return without_rejected(read(table, columns), table, rejects)

    samples = kept_of("samples", SFT_COLUMNS)  # only what the release holds: less to decode
    tasks = kept_of("tasks")
    dropped_tasks = (rejects.filter((pl.col("record_kind") == "task") & pl.col("record_id").is_not_null())["record_id"]
                     if not rejects.is_empty() else pl.Series("record_id", [], pl.String))
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
