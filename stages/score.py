"""Quality scoring in DuckDB: heuristic features, a composite score, keep/drop reasons, decontamination.

The logic lives in readable SQL files under ``factory/sql_features/``:

- ``features.sql``: lengths, word and n-gram repetition, non-alphabetic and symbol ratios, refusal and
  apology phrases, echoing the instruction, unfinished answers, the answer/instruction length ratio;
- ``composite.sql``: the documented formula that blends the heuristics with the judge's mean score
  (only when the judge passed its calibration check) and decides keep/drop with a list of reasons;
- ``decontaminate.sql``: samples sharing a long word n-gram with a user-supplied evaluation set.

Thresholds and weights come from this stage's config and reach the SQL as named prepared-statement
parameters (``$max_symbol_ratio``), so every number in the SQL is named and DuckDB sees constants.
The stage writes a ``scores`` table (one row per sample: features, judge mean/spread, composite, keep,
drop_reasons) and a reject row for every dropped sample, so ``factory sql`` can answer "why was this
dropped?" for any record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.context import StageContext
from factory.map_stage import MapContext, MapStage, register_map
from factory.records import reject
from factory.stage import StageConfig, StageOutput, register

DEFAULT_REFUSAL = (r"\b(as an ai|as a language model|i'm sorry|i am sorry|i apologi[sz]e|my apologies|"
                   r"i cannot|i can't|i can not|i'm unable|i am unable|i'm not able|i am not able|"
                   r"i won't be able|unable to (help|assist|comply)|cannot (help|assist|comply)|"
                   r"i do not have (access|the ability)|i don't have (access|the ability))\b")
DEFAULT_UNFINISHED_WORDS = ["and", "or", "but", "the", "a", "an", "to", "of", "with", "for", "in", "on", "that",
                            "which", "is", "are", "because", "so"]
EVAL_FIELDS = ["instruction", "input", "question", "prompt", "problem", "context", "answer", "output",
               "solution", "text"]


class Thresholds(BaseModel):
    """Limits beyond which a feature becomes a drop reason."""

    model_config = ConfigDict(extra="forbid")
    min_words: int = Field(2, ge=0, description="fewer answer words is 'too_short'")
    max_words: int = Field(2000, ge=1, description="more answer words is 'too_long'")
    max_word_repetition: float = Field(0.75, ge=0, le=1, description="1 - distinct words / words")
    max_ngram_repetition: float = Field(0.3, ge=0, le=1, description="1 - distinct trigrams / trigrams")
    max_non_alpha_ratio: float = Field(0.6, ge=0, le=1, description="share of non-letter, non-space chars")
    max_symbol_ratio: float = Field(0.2, ge=0, le=1, description="share of markup/symbol chars")
    max_echo_overlap: float = Field(0.9, ge=0, le=1, description="share of answer words found in the prompt")
    min_answer_instruction_ratio: float = Field(0.05, ge=0, description="answer words / instruction words")
    refusal_pattern: str = Field(DEFAULT_REFUSAL, description="RE2 regex over the lower-cased answer")
    unfinished_words: list[str] = Field(default_factory=lambda: list(DEFAULT_UNFINISHED_WORDS),
                                        description="an answer ending on one of these (no final stop) is unfinished")


class Weights(BaseModel):
    """Weights of the composite formula (see composite.sql and the README)."""

    model_config = ConfigDict(extra="forbid")
    w_judge: float = Field(0.5, ge=0, le=1, description="share of the judge in the composite, when trusted")
    w_repetition: float = Field(1.0, ge=0)
    w_non_alpha: float = Field(0.5, ge=0)
    w_symbols: float = Field(1.0, ge=0)
    w_refusal: float = Field(0.6, ge=0)
    w_echo: float = Field(0.6, ge=0)
    w_unfinished: float = Field(0.4, ge=0)
    w_short: float = Field(0.5, ge=0)


class EvalSet(BaseModel):
    """A benchmark to decontaminate against: a JSONL or Parquet file and the text fields to read."""

    model_config = ConfigDict(extra="forbid")
    path: Path
    fields: list[str] | None = Field(None, description="text fields to compare (default: the common ones present)")


class ScoreConfig(StageConfig):
    kind: Literal["score"] = "score"
    thresholds: Thresholds = Field(default_factory=Thresholds)
    weights: Weights = Field(default_factory=Weights)
    min_composite: float = Field(0.5, ge=0, le=1, description="composite below this is 'low_composite'")
    min_judge_mean: float = Field(0.0, ge=0, le=5, description="trusted judge mean below this is 'low_judge_score'")
    use_judge: bool = Field(True, description="blend in judge scores when a calibrated judge produced them")
    eval_sets: list[EvalSet] = Field(default_factory=list, description="benchmarks to decontaminate against")
    decontam_ngram: int = Field(13, ge=3, le=64, description="shared word n-gram length that counts as contamination")

    consumes = ("samples",)  # judge_scores too, when a judge stage ran
    produces = ("scores",)


@cache
def sql_file(name: str) -> str:
    """The text of ``factory/sql_features/<name>.sql``."""
    return resources.files("factory").joinpath("sql_features", f"{name}.sql").read_text(encoding="utf-8")


_PARAM = re.compile(r"\$([a-z_]+)")


def sql_params(sql: str, cfg: ScoreConfig, use_judge: bool = False) -> dict[str, Any]:
    """The named parameters ``sql`` uses, from the config (thresholds, weights, limits)."""
    values: dict[str, Any] = {**cfg.thresholds.model_dump(), **cfg.weights.model_dump(),
                              "min_composite": cfg.min_composite, "min_judge_mean": cfg.min_judge_mean,
                              "use_judge": use_judge, "decontam_ngram": cfg.decontam_ngram}
    return {name: values[name] for name in set(_PARAM.findall(sql))}


def run_sql(con: duckdb.DuckDBPyConnection, name: str, cfg: ScoreConfig, use_judge: bool = False,
            into: str | None = None) -> pl.DataFrame | None:
    """Run ``factory/sql_features/<name>.sql`` with its parameters; into=TABLE stores it instead."""
    sql = sql_file(name)
    params = sql_params(sql, cfg, use_judge)
    if into:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS {sql}", params)
        return None
    return con.sql(sql, params=params).pl()


SAMPLE_COLUMNS = {"sample_id": pl.String, "instruction": pl.String, "input": pl.String, "output": pl.String,
                  "finish_reason": pl.String}
JUDGE_COLUMNS = {"sample_id": pl.String, "judge_mean": pl.Float64, "judge_spread": pl.Float64,
                 "judge_n": pl.Int64}


def _project(df: pl.DataFrame, columns: dict[str, Any]) -> pl.DataFrame:
    if df.width == 0:  # a table no stage wrote: no rows (a select of literals would make one)
        return pl.DataFrame(schema=columns)
    return df.select([(pl.col(c).cast(t) if c in df.columns else pl.lit(None, dtype=t)).alias(c)
                      for c, t in columns.items()])


def compute_features(samples: pl.DataFrame, cfg: ScoreConfig | None = None,
                     con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    """features.sql over ``samples`` (sample_id, instruction, input, output, finish_reason)."""
    cfg = cfg or ScoreConfig()
    own = con is None
    con = con or duckdb.connect(":memory:")
    try:
        con.register("samples", _project(samples, SAMPLE_COLUMNS))
        return run_sql(con, "features", cfg)
    finally:
        if own:
            con.close()


def score_samples(samples: pl.DataFrame, judge_scores: pl.DataFrame | None = None,
                  cfg: ScoreConfig | None = None, use_judge: bool = False) -> pl.DataFrame:
    """Features, composite score and keep/drop reasons for every sample, computed in DuckDB."""
    cfg = cfg or ScoreConfig()
    con = duckdb.connect(":memory:")
    try:
        judge = _project(judge_scores if judge_scores is not None else pl.DataFrame(), JUDGE_COLUMNS)
        con.register("samples", _project(samples, SAMPLE_COLUMNS))
        con.register("judge_scores", judge)
        run_sql(con, "features", cfg, into="features")
        return run_sql(con, "composite", cfg, use_judge)
    finally:
        con.close()


def load_eval_texts(sets: list[EvalSet]) -> pl.DataFrame:
    """(benchmark, text) rows from every evaluation file; errors name the file and the fields it has."""
    frames = []
    for es in sets:
        path = Path(es.path)
        if not path.exists():
            raise ValueError(f"score: evaluation set {path} does not exist")
        try:
            df = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path, infer_schema_length=None)
        except Exception as exc:  # polars raises several kinds for unreadable files
            raise ValueError(f"score: cannot read evaluation set {path}: {exc}") from None
        fields = es.fields or [f for f in EVAL_FIELDS if f in df.columns]
        missing = [f for f in fields if f not in df.columns]
        if missing or not fields:
            raise ValueError(f"score: evaluation set {path} has no field(s) {missing or EVAL_FIELDS}; it has "
                             f"{df.columns} (set `fields:` for it)")
        for f in fields:
            frames.append(df.select(pl.lit(str(path)).alias("benchmark"),
                                    pl.col(f).cast(pl.String).alias("text")).drop_nulls())
    return pl.concat(frames) if frames else pl.DataFrame(schema={"benchmark": pl.String, "text": pl.String})


def find_contamination(samples: pl.DataFrame, eval_texts: pl.DataFrame, ngram: int = 13) -> pl.DataFrame:
    """decontaminate.sql: (sample_id, benchmark, ngram, matching_ngrams) for samples that overlap."""
    cfg = ScoreConfig(decontam_ngram=ngram)
    con = duckdb.connect(":memory:")
    try:
        con.register("samples", _project(samples, SAMPLE_COLUMNS))
        con.register("eval_texts", eval_texts)
        return run_sql(con, "decontaminate", cfg)
    finally:
        con.close()


def judge_trusted(judge_scores: pl.DataFrame) -> bool:
    """Whether the judge's scores may enter the composite (its stage passed the calibration check)."""
    if judge_scores.is_empty():
        return False
    return "trusted" not in judge_scores.columns or bool(judge_scores["trusted"].all())


def score_batch(ctx: StageContext, cfg: ScoreConfig, samples: pl.DataFrame, judge_scores: pl.DataFrame,
                use_judge: bool, eval_texts: pl.DataFrame | None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Scores and reject rows for ``samples``: each sample is scored on its own, so any batch will do."""
    scores = score_samples(samples, judge_scores, cfg, use_judge)
    contaminated = pl.DataFrame(schema={"sample_id": pl.String, "benchmark": pl.String, "ngram": pl.String,
                                        "matching_ngrams": pl.Int64})
    if eval_texts is not None and not samples.is_empty():
        contaminated = find_contamination(samples, eval_texts, cfg.decontam_ngram)
    scores = scores.join(contaminated.rename({"benchmark": "contaminated_benchmark",
                                              "ngram": "contaminated_ngram"}).drop("matching_ngrams"),
                         on="sample_id", how="left")
    is_cont = pl.col("contaminated_benchmark").is_not_null()
    scores = scores.with_columns(
        drop_reasons=pl.when(is_cont).then(pl.col("drop_reasons").list.concat(pl.lit(["contaminated"])))
        .otherwise(pl.col("drop_reasons")),
    ).with_columns(keep=pl.col("drop_reasons").list.len() == 0)
    meta = samples.select("sample_id", "task_id") if not samples.is_empty() else pl.DataFrame(
        schema={"sample_id": pl.String, "task_id": pl.String})
    scores = scores.join(meta, on="sample_id", how="left").with_columns(
        run_id=pl.lit(ctx.run_id), stage=pl.lit(ctx.stage_name), round=pl.lit(ctx.round))
    rejects = []
    outputs = dict(zip(samples["sample_id"].to_list(), samples["output"].to_list(), strict=True)) \
        if not samples.is_empty() else {}
    for row in scores.filter(~pl.col("keep")).iter_rows(named=True):
        reasons = ", ".join(row["drop_reasons"])
        if row["contaminated_benchmark"]:
            rejects.append(reject(
                ctx, record_kind="sample", record_id=row["sample_id"], reason="contaminated",
                raw=outputs.get(row["sample_id"]), related_id=row["contaminated_benchmark"],
                detail=f"shares a {cfg.decontam_ngram}-word n-gram with {row['contaminated_benchmark']}: "
                       f"'{row['contaminated_ngram']}' (all reasons: {reasons})"))
        else:
            rejects.append(reject(ctx, record_kind="sample", record_id=row["sample_id"], reason="low_quality",
                                  raw=outputs.get(row["sample_id"]),
                                  detail=f"{reasons} (composite {row['composite']:.3f})"))
    return scores, rejects


def score_metrics(scores: pl.DataFrame, use_judge: bool) -> dict[str, Any]:
    """The stage's metrics over every score row (the whole stage, or all of a sharded stage's files)."""
    kept = int(scores["keep"].sum()) if scores.height else 0
    metrics: dict[str, Any] = {
        "judge_used": use_judge,
        "kept": kept,
        "dropped": scores.height - kept,
        "contaminated": int(scores["contaminated_benchmark"].is_not_null().sum()) if scores.height else 0,
    }
    if scores.height:
        comp = scores["composite"]
        metrics.update({
            "composite_mean": round(float(comp.mean()), 4),
            "composite_p10": round(float(comp.quantile(0.1)), 4),
            "composite_p50": round(float(comp.quantile(0.5)), 4),
            "composite_p90": round(float(comp.quantile(0.9)), 4),
            "composite_histogram": histogram(comp),
            "drop_reasons": dict(sorted(
                scores.select(pl.col("drop_reasons").explode()).drop_nulls()["drop_reasons"]
                .value_counts().iter_rows())),
        })
    return metrics


def use_judge_for(ctx: StageContext, cfg: ScoreConfig, judge_scores: pl.DataFrame) -> bool:
    use_judge = cfg.use_judge and judge_trusted(judge_scores)
    if cfg.use_judge and not judge_scores.is_empty() and not use_judge:
        ctx.log("[bold red]judge not trusted (failed calibration): composite uses heuristics only[/]")
    return use_judge


@register(ScoreConfig)
def run(ctx: StageContext, cfg: ScoreConfig) -> StageOutput:
    """The whole table at once (the runner uses :class:`ScoreMap`, batch by batch, instead)."""
    samples = ctx.inputs("samples")
    judge_scores = ctx.inputs("judge_scores")
    use_judge = use_judge_for(ctx, cfg, judge_scores)
    eval_texts = load_eval_texts(cfg.eval_sets) if cfg.eval_sets else None
    scores, rejects = score_batch(ctx, cfg, samples, judge_scores, use_judge, eval_texts)
    metrics = score_metrics(scores, use_judge)
    ctx.log(f"{metrics['kept']} of {scores.height} samples kept (judge {'used' if use_judge else 'not used'})")
    return StageOutput(tables={"scores": scores}, rejects=rejects, records_in=samples.height, metrics=metrics,
                       kept=metrics["kept"])


@register_map(ScoreConfig)
class ScoreMap(MapStage):
    """Score batch by batch: the judge's verdicts are looked up for the batch's samples only."""

    input_table = "samples"

    def plan(self, ctx: MapContext, cfg: ScoreConfig) -> dict[str, Any]:
        judge = ctx.scan("judge_scores")
        if not cfg.use_judge or judge is None:
            return {"use_judge": False}
        trusted = judge.select(pl.len().alias("n"), (pl.col("trusted").all() if "trusted" in
                                                      judge.collect_schema().names() else pl.lit(True)).alias("t"))
        n, ok = trusted.collect().row(0)
        if n and not ok:
            ctx.log("[bold red]judge not trusted (failed calibration): composite uses heuristics only[/]")
        return {"use_judge": bool(n and ok)}

    def setup(self, ctx: MapContext, cfg: ScoreConfig, shared: dict[str, Any]) -> None:
        super().setup(ctx, cfg, shared)
        self.eval_texts = load_eval_texts(cfg.eval_sets) if cfg.eval_sets else None

    def process(self, batch: pl.DataFrame, ctx: MapContext, cfg: ScoreConfig) -> StageOutput:
        judge = ctx.lookup("judge_scores", "sample_id", batch["sample_id"].to_list())
        scores, rejects = score_batch(ctx, cfg, batch, judge, self.shared["use_judge"], self.eval_texts)
        kept = int(scores["keep"].sum()) if scores.height else 0
        return StageOutput(tables={"scores": scores}, rejects=rejects, records_in=batch.height, kept=kept)

    def summarize(self, outputs: Mapping[str, list[Path]], shard_metrics: list[dict[str, Any]],
                  cfg: ScoreConfig) -> dict[str, Any]:
        columns = ["keep", "composite", "drop_reasons", "contaminated_benchmark"]
        paths = outputs.get("scores", [])
        scores = pl.read_parquet(paths, columns=columns) if paths else pl.DataFrame(
            schema={"keep": pl.Boolean, "composite": pl.Float64, "drop_reasons": pl.List(pl.String),
                    "contaminated_benchmark": pl.String})
        return score_metrics(scores, self.shared["use_judge"])


def histogram(values: pl.Series, bins: int = 5) -> dict[str, int]:
    """Counts of ``values`` in equal-width bins over [0, 1], keyed '0.0-0.2', '0.2-0.4'…"""
    counts = {f"{i / bins:.1f}-{(i + 1) / bins:.1f}": 0 for i in range(bins)}
    keys = list(counts)
    for v in values.drop_nulls().to_list():
        counts[keys[min(int(v * bins), bins - 1)]] += 1
    return counts
