"""Everything a report shows, read from the warehouse with SQL over one sandboxed read-only connection.

Distributions are binned in DuckDB, and the sample browser gets a fixed-size sample of rows, so what
reaches the page stays small however many records the runs made (the page opens fast at 100k samples).
A table the runs did not make (no judge, no dedup, no evolve rounds) gives an empty frame, and the page
says so in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl

from factory.report.scope import Scope
from factory.sql import open_readonly
from factory.warehouse import Warehouse

#: rows the sample browser gets at most (a deterministic sample by id hash; the page says so)
BROWSER_ROWS = 2_000
#: histogram bins per score feature
BINS = 20
#: dedup clusters shown (the largest first)
CLUSTERS = 8
#: characters of a record's text carried into the page
TEXT_CHARS = 1_200
NUMERIC_TYPES = ("DOUBLE", "FLOAT", "REAL", "BIGINT", "INTEGER", "SMALLINT", "HUGEINT", "DECIMAL")
#: numeric columns of `scores` that are ids or bookkeeping, not features
NOT_FEATURES = {"round", "judge_n"}


@dataclass
class ReportData:
    scope: Scope
    runs: pl.DataFrame
    stages: pl.DataFrame
    reject_reasons: pl.DataFrame
    kept: dict[str, int]
    release_rows: dict[str, int] = field(default_factory=dict)
    feature_bins: pl.DataFrame = field(default_factory=pl.DataFrame)
    flag_shares: pl.DataFrame = field(default_factory=pl.DataFrame)
    judge_stages: list[dict[str, Any]] = field(default_factory=list)
    calibration: pl.DataFrame = field(default_factory=pl.DataFrame)
    judge_scores: pl.DataFrame = field(default_factory=pl.DataFrame)
    clusters: pl.DataFrame = field(default_factory=pl.DataFrame)
    cluster_totals: pl.DataFrame = field(default_factory=pl.DataFrame)
    rounds: pl.DataFrame = field(default_factory=pl.DataFrame)
    round_evals: pl.DataFrame = field(default_factory=pl.DataFrame)
    browser_rows: pl.DataFrame = field(default_factory=pl.DataFrame)
    browser_total: int = 0


class _Reader:
    """One read-only connection; ``$runs`` in a query is the scope's run ids, other ``$names`` are keywords."""

    def __init__(self, wh: Warehouse, scope: Scope):
        self.con: duckdb.DuckDBPyConnection = open_readonly(wh)
        self.runs = list(scope.run_ids)
        self.tables = set(wh.table_names())

    def __call__(self, sql: str, **params: Any) -> pl.DataFrame:
        if "$runs" in sql:
            params["runs"] = self.runs
        return self.con.sql(sql, params=params or None).pl()

    def has(self, table: str) -> bool:
        return table in self.tables


def gather(wh: Warehouse, scope: Scope, browser_rows: int = BROWSER_ROWS) -> ReportData:
    q = _Reader(wh, scope)
    try:
        data = ReportData(scope=scope, runs=_runs(q), stages=_stages(q), reject_reasons=_reasons(q), kept=_kept(q))
        if scope.release:
            data.release_rows = _release_rows(q, scope.release)
        if q.has("scores"):
            data.feature_bins, data.flag_shares = _score_distributions(q)
        data.judge_stages, data.calibration, data.judge_scores = _judge(q, data.stages)
        if q.has("dedup_clusters"):
            data.clusters, data.cluster_totals = _clusters(q)
        if scope.evolve_id and q.has("rounds"):
            data.rounds = q("SELECT * FROM rounds WHERE evolve_id = $id ORDER BY round", id=scope.evolve_id)
            if q.has("round_evals"):
                data.round_evals = q("SELECT * FROM round_evals WHERE evolve_id = $id ORDER BY suite, round",
                                     id=scope.evolve_id)
        data.browser_rows, data.browser_total = _browser(q, browser_rows)
    finally:
        q.con.close()
    return data


def _runs(q: _Reader) -> pl.DataFrame:
    return q("""SELECT run_id, pipeline, status, round, started_at, finished_at, error FROM runs
                WHERE list_contains($runs, run_id) ORDER BY started_at""")


def _stages(q: _Reader) -> pl.DataFrame:
    return q("""SELECT s.run_id, s.stage, s.kind, s.position, s.status, s.records_in, s.records_out,
                       s.records_rejected, s.calls, s.cached_calls, s.prompt_tokens, s.completion_tokens,
                       s.seconds, s.metrics
                FROM stages s JOIN runs r USING (run_id) WHERE list_contains($runs, s.run_id)
                ORDER BY r.started_at, s.position""")


def _reasons(q: _Reader) -> pl.DataFrame:
    return q("""SELECT run_id, stage, reason, count(*) AS n FROM rejects WHERE list_contains($runs, run_id)
                GROUP BY ALL ORDER BY run_id, stage, n DESC, reason""")


def _kept(q: _Reader) -> dict[str, int]:
    """Records no stage of their run rejected, per record table (the ``*_kept`` views)."""
    row = q("""SELECT (SELECT count(*) FROM tasks_kept WHERE list_contains($runs, run_id)) AS tasks,
                      (SELECT count(*) FROM samples_kept WHERE list_contains($runs, run_id)) AS samples,
                      (SELECT count(*) FROM pairs_kept WHERE list_contains($runs, run_id)) AS pairs""")
    return {k: int(v) for k, v in row.row(0, named=True).items()}


def _release_rows(q: _Reader, ref: str) -> dict[str, int]:
    name, _, version = ref.partition("@")
    found = q("SELECT rows FROM releases WHERE name = $name AND version = $version", name=name, version=version)
    return {k: int(v) for k, v in json.loads(found.item()).items()} if found.height else {}


def _score_distributions(q: _Reader) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Histograms of every numeric score feature, and the share of each flag, kept against dropped."""
    cols = q("DESCRIBE SELECT * FROM scores")
    numeric = [c for c, t in cols.select("column_name", "column_type").iter_rows()
               if t.split("(")[0] in NUMERIC_TYPES and c not in NOT_FEATURES]
    flags = [c for c, t in cols.select("column_name", "column_type").iter_rows()
             if t == "BOOLEAN" and c not in ("keep", "judge_used")]
    bins = pl.DataFrame()
    if numeric:
        casts = ", ".join(f'"{c}"::DOUBLE AS "{c}"' for c in numeric)
        on = ", ".join(f'"{c}"' for c in numeric)
        bins = q(f"""WITH long AS (UNPIVOT (SELECT keep, {casts} FROM scores WHERE list_contains($runs, run_id))
                                   ON {on} INTO NAME feature VALUE v),
                     ok AS (SELECT * FROM long WHERE v IS NOT NULL AND isfinite(v)),
                     span AS (SELECT feature, min(v) AS lo, max(v) AS hi FROM ok GROUP BY feature)
                     SELECT feature, keep, lo, hi,
                            CASE WHEN hi = lo THEN 0 ELSE least(floor((v - lo) / (hi - lo) * {BINS}), {BINS - 1})
                            END::INTEGER AS bin, count(*) AS n
                     FROM ok JOIN span USING (feature) GROUP BY ALL ORDER BY feature, keep, bin""")
    shares = pl.DataFrame()
    if flags:
        casts = ", ".join(f'"{c}"::INTEGER AS "{c}"' for c in flags)
        on = ", ".join(f'"{c}"' for c in flags)
        shares = q(f"""SELECT feature, keep, avg(v) AS share, count(v) AS n
                       FROM (UNPIVOT (SELECT keep, {casts} FROM scores WHERE list_contains($runs, run_id))
                             ON {on} INTO NAME feature VALUE v)
                       GROUP BY ALL ORDER BY feature, keep""")
    return bins, shares


def _judge(q: _Reader, stages: pl.DataFrame) -> tuple[list[dict[str, Any]], pl.DataFrame, pl.DataFrame]:
    """Judge stage metrics, the calibration twins' scores (good vs bad answer) and the judge score counts."""
    judge_stages = [{"run_id": r["run_id"], "stage": r["stage"], **json.loads(r["metrics"] or "{}")}
                    for r in stages.filter(pl.col("kind") == "judge").iter_rows(named=True)]
    if not judge_stages:
        return [], pl.DataFrame(), pl.DataFrame()
    calib = q("""SELECT run_id, stage, split_part(target_ids[1], ':', 2) AS pair_id,
                        split_part(target_ids[1], ':', 3) AS side, split_part(target_ids[1], ':', 4) AS corruption,
                        avg(score) AS score, count(*) AS judgments, count(*) - count(score) AS parse_failures
                 FROM judgments WHERE list_contains($runs, run_id) AND kind = 'calibration'
                 GROUP BY ALL ORDER BY run_id, stage, pair_id, side""")
    if calib.height:
        good = calib.filter(pl.col("side") == "good").select("run_id", "stage", "pair_id", "corruption",
                                                              pl.col("score").alias("good"))
        bad = calib.filter(pl.col("side") == "bad").select("run_id", "stage", "pair_id", pl.col("score").alias("bad"))
        calib = good.join(bad, on=["run_id", "stage", "pair_id"], how="full", coalesce=True)
    scores = q("""SELECT kind, score, count(*) AS n FROM judgments
                  WHERE list_contains($runs, run_id) AND kind <> 'calibration' GROUP BY ALL ORDER BY kind, score""")
    return judge_stages, calib, scores


def _clusters(q: _Reader, limit: int = CLUSTERS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The largest dedup clusters with each member's text, keeper first; and cluster counts by kind."""
    clusters = q(f"""
        WITH c AS (SELECT * FROM dedup_clusters WHERE list_contains($runs, run_id)),
        big AS (SELECT run_id, cluster_id, count(*) AS size FROM c GROUP BY ALL
                ORDER BY size DESC, cluster_id LIMIT {int(limit)}),
        members AS (SELECT c.*, big.size FROM c JOIN big USING (run_id, cluster_id)),
        texts AS (SELECT 'sample' AS record_kind, sample_id AS record_id, any_value(instruction) AS instruction,
                         any_value(left(output, {TEXT_CHARS})) AS text FROM samples
                  WHERE sample_id IN (SELECT record_id FROM members) GROUP BY ALL
                  UNION ALL
                  SELECT 'task', task_id, any_value(instruction), any_value(left(instruction, {TEXT_CHARS}))
                  FROM tasks WHERE task_id IN (SELECT record_id FROM members) GROUP BY ALL)
        SELECT m.run_id, m.cluster_id, m.size, m.kind, m.kept, m.similarity, m.record_id, m.record_kind,
               t.instruction, t.text
        FROM members m LEFT JOIN texts t USING (record_kind, record_id)
        ORDER BY m.size DESC, m.cluster_id, m.kept DESC, m.similarity DESC, m.record_id""")
    totals = q("""SELECT kind, count(DISTINCT cluster_id) AS clusters, count(*) FILTER (WHERE NOT kept) AS dropped
                  FROM dedup_clusters WHERE list_contains($runs, run_id) GROUP BY kind ORDER BY kind""")
    return clusters, totals


def _browser(q: _Reader, cap: int) -> tuple[pl.DataFrame, int]:
    """Tasks, samples, pairs and rejected candidates of the runs, each with its status and lineage.

    A deterministic sample (ordered by a hash of the id) keeps the page small; the total is counted.
    """
    t = TEXT_CHARS
    has_pairs = "pairs" in q.tables
    pairs = """UNION ALL BY NAME
        SELECT 'pair' AS kind, pair_id AS id, run_id, stage, NULL AS category, rule AS source,
               NULL AS instruction, 'chosen ' || chosen_id || ' over ' || rejected_id AS output, producer,
               template_id, round, parent_ids, gen_params FROM pairs WHERE list_contains($runs, run_id)""" \
        if has_pairs else ""
    sql = f"""
        WITH rj AS (
            SELECT run_id, record_kind AS kind, coalesce(record_id, reject_id) AS id,
                   string_agg(DISTINCT stage, ', ' ORDER BY stage) AS dropped_at,
                   string_agg(DISTINCT reason, ', ' ORDER BY reason) AS reason, any_value(left(detail, 300)) AS detail,
                   any_value(left(raw, {t})) AS raw, any_value(related_id) AS related_id,
                   max(similarity) AS similarity, any_value(round) AS round
            FROM rejects WHERE list_contains($runs, run_id) GROUP BY ALL),
        recs AS (
            SELECT 'task' AS kind, task_id AS id, run_id, stage, category, source,
                   left(instruction, {t}) AS instruction, left(input, {t}) AS input,
                   left(gold_answer, {t}) AS output, producer, template_id, round,
                   parent_ids, gen_params FROM tasks WHERE list_contains($runs, run_id)
            UNION ALL BY NAME
            SELECT 'sample' AS kind, sample_id AS id, run_id, stage, category, left(instruction, {t}) AS instruction,
                   left(input, {t}) AS input, left(output, {t}) AS output, producer, template_id, round, parent_ids,
                   gen_params
            FROM samples WHERE list_contains($runs, run_id)
            {pairs}),
        rows AS (
            SELECT recs.*, rj.dropped_at, rj.reason, rj.detail, rj.related_id, rj.similarity
            FROM recs LEFT JOIN rj USING (run_id, kind, id)
            UNION ALL BY NAME
            SELECT kind, id, run_id, dropped_at AS stage, raw AS output, round, dropped_at, reason, detail, related_id,
                   similarity
            FROM rj WHERE NOT EXISTS (SELECT 1 FROM recs WHERE recs.run_id = rj.run_id AND recs.kind = rj.kind
                                      AND recs.id = rj.id))
        SELECT count(*) OVER () AS total, kind, id, run_id, stage, category, source, instruction, input, output,
               producer, template_id, round, parent_ids, gen_params, dropped_at, reason, detail, related_id,
               round(similarity, 4) AS similarity
        FROM rows ORDER BY hash(kind, id, run_id) LIMIT {int(cap)}"""
    rows = q(sql)
    total = int(rows["total"][0]) if rows.height else 0
    return rows.drop("total"), total
