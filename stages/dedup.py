"""Deduplication stage: exact, near (MinHash + LSH) and semantic duplicates, within the run and
against every record the warehouse already holds from other runs.

Records already in the warehouse always win (they are kept; the new record is the duplicate). Each
dropped record becomes a reject (``exact_duplicate`` / ``near_duplicate`` / ``semantic_duplicate``)
naming the record it duplicates and the similarity; clusters go to the ``dedup_clusters`` table.

Incremental: MinHash signatures and embeddings are stage outputs (tables ``minhash_signatures`` and
``embeddings``). A later run loads them for history instead of recomputing, so a text is signed and
embedded once, ever; only this run's new records (and any history record never signed) cost work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.context import StageContext
from factory.dedup import REASONS, DedupResult, DedupSettings, check_drop_fraction, dedup, distributed
from factory.dedup.distributed import MapReduce
from factory.dedup.exact import Normalization, text_hash
from factory.dedup.minhash import MinHashParams, text_signatures
from factory.dedup.semantic import shared_embedder
from factory.records import reject
from factory.stage import StageConfig, StageOutput, register
from factory.warehouse import ID_COLUMNS, RECORD_KIND_OF_TABLE, Warehouse

DEFAULT_FIELDS = {"tasks": ["instruction", "input"], "samples": ["instruction", "output"]}
SIGNATURES_TABLE = "minhash_signatures"
EMBEDDINGS_TABLE = "embeddings"
CLUSTERS_TABLE = "dedup_clusters"


class NormalizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unicode: bool = True
    case: bool = True
    punctuation: bool = True
    whitespace: bool = True


class KeepConfig(BaseModel):
    """Which duplicate survives: the highest ``score_column`` if the table has it, else the earliest
    (round, then order of creation, then id). Records from other runs always win."""

    model_config = ConfigDict(extra="forbid")
    score_column: str | None = "score"


class DedupConfig(StageConfig):
    kind: Literal["dedup"] = "dedup"
    table: Literal["samples", "tasks"] = "samples"
    fields: list[str] | None = Field(None, description="text fields compared, joined by newlines "
                                     "(default: instruction+output for samples, instruction+input for tasks)")
    methods: list[Literal["exact", "near", "semantic"]] = ["exact", "near", "semantic"]
    normalize: NormalizeConfig = NormalizeConfig()
    near_threshold: float = Field(0.82, gt=0, le=1, description="Jaccard similarity of character 4-gram sets")
    shingle: Literal["char", "word"] = "char"
    shingle_size: int = Field(4, ge=1, le=8, description="bytes for char shingles, largest n for word n-grams")
    num_perm: int = Field(128, ge=16, le=1024)
    semantic_threshold: float = Field(0.8, gt=0, le=1, description="cosine similarity of embeddings")
    embedder: Literal["minilm", "minilm-static", "minilm-two-step"] = Field(
        "minilm", description="minilm-two-step: the static model flags rows with a neighbour at "
        "candidate_threshold, MiniLM embeds just those and decides (for large tables)")
    candidate_threshold: float = Field(0.7, gt=0, le=1, description="minilm-two-step: the static model's cosine "
                                       "at which a row is passed on to MiniLM")
    keep: KeepConfig = KeepConfig()
    against_history: bool = Field(True, description="also drop duplicates of other runs' records")
    max_drop_fraction: float = Field(0.5, gt=0, le=1, description="stop, writing nothing, when dedup would drop "
                                     "more than this share of the run's records")

    @property
    def consumes(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.table,)

    def text_fields(self) -> list[str]:
        return self.fields or DEFAULT_FIELDS[self.table]

    def settings(self) -> DedupSettings:
        norm = Normalization(**self.normalize.model_dump())
        return DedupSettings(
            exact="exact" in self.methods, near="near" in self.methods, semantic="semantic" in self.methods,
            normalization=norm, semantic_threshold=self.semantic_threshold,
            semantic_candidate_threshold=self.candidate_threshold,
            minhash=MinHashParams(num_perm=self.num_perm, shingle=self.shingle, n=self.shingle_size,
                                  threshold=self.near_threshold, normalization=norm))

    def signature_space(self) -> str:
        return f"{self.settings().minhash.fingerprint()}/{'+'.join(self.text_fields())}"

    def thresholds(self) -> str:
        return f"near_threshold={self.near_threshold}, semantic_threshold={self.semantic_threshold}"


def records_frame(df: pl.DataFrame, table: str, cfg: DedupConfig, fixed: bool) -> pl.DataFrame:
    """id, text, fixed, priority, order (and run_id) for the core dedup functions."""
    id_col = ID_COLUMNS[table]
    if df.is_empty():
        return pl.DataFrame(schema={"id": pl.String, "text": pl.String, "fixed": pl.Boolean,
                                    "priority": pl.Float64, "order": pl.Int64, "run_id": pl.String})
    missing = [f for f in cfg.text_fields() if f not in df.columns]
    if missing:
        raise ValueError(f"dedup: table {table!r} has no field(s) {missing}; it has {df.columns}")
    text = pl.concat_str([pl.col(f).cast(pl.String).fill_null("") for f in cfg.text_fields()], separator="\n")
    score = cfg.keep.score_column
    priority = (pl.col(score).cast(pl.Float64) if score and score in df.columns else pl.lit(None, pl.Float64))
    rnd = pl.col("round").cast(pl.Int64).fill_null(0) if "round" in df.columns else pl.lit(0, pl.Int64)
    run = pl.col("run_id") if "run_id" in df.columns else pl.lit(None, pl.String)
    out = df.select(pl.col(id_col).alias("id"), text.alias("text"), pl.lit(fixed).alias("fixed"),
                    priority.alias("priority"), (rnd * 1_000_000_000 + pl.int_range(pl.len())).alias("order"),
                    run.alias("run_id"))
    return out.unique("id", keep="first", maintain_order=True)


@dataclass
class Outcome:
    result: DedupResult
    records: pl.DataFrame  # current + history frame (id, text, fixed, …)
    new_signatures: pl.DataFrame | None = None
    new_embeddings: pl.DataFrame | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def find_duplicates(wh: Warehouse, current: pl.DataFrame, history: pl.DataFrame, cfg: DedupConfig,
                    log=lambda m: None, map_reduce: MapReduce | None = None) -> Outcome:
    """Dedup ``current`` records against each other and against ``history`` (kept, never dropped),
    reusing the warehouse's stored signatures and embeddings and returning the new ones. With
    ``map_reduce`` (a remote executor's), the new signatures and embeddings and the near-duplicate
    candidate search are computed by its workers."""
    table = cfg.table
    cur = records_frame(current, table, cfg, fixed=False)
    hist = records_frame(history, table, cfg, fixed=True)
    # a record whose very id is already held elsewhere is an exact duplicate of it
    same = cur.join(hist.select("id", pl.col("run_id").alias("held_in")), on="id", how="inner")
    hist = hist.filter(~pl.col("id").is_in(cur["id"].implode()))
    frame = pl.concat([hist, cur.filter(~pl.col("id").is_in(same["id"].implode()))], how="vertical")
    settings = cfg.settings()
    metrics: dict[str, Any] = {"history_records": hist.height}
    space = cfg.signature_space()
    new_sigs: list[pl.DataFrame] = []
    new_vecs: list[pl.DataFrame] = []

    def signatures_for(rows: pl.DataFrame) -> np.ndarray:
        """Stored signatures by record id, the rest computed (columnar: no Python object per value)."""
        width = settings.minhash.num_perm
        out = np.empty((rows.height, width), dtype=np.uint32)
        have = np.zeros(rows.height, dtype=bool)
        stored = wh.read(SIGNATURES_TABLE)
        if stored.height:
            stored = stored.filter(pl.col("space") == space).unique("record_id", keep="first")
            hit = rows.select("id").with_row_index("pos").join(
                stored.select(pl.col("record_id").alias("id"), "signature"), on="id")
            if hit.height:
                pos = hit["pos"].to_numpy()
                out[pos] = hit["signature"].list.to_array(width).to_numpy()
                have[pos] = True
        todo = np.flatnonzero(~have)
        if len(todo):
            texts = rows["text"].gather(todo)
            fresh = (distributed.signatures(texts, settings.minhash, map_reduce) if map_reduce is not None
                     else text_signatures(texts, settings.minhash))
            out[todo] = fresh
            new_sigs.append(pl.DataFrame({
                "record_id": rows["id"].gather(todo), "table": table, "space": space,
                "signature": pl.Series(fresh).cast(pl.List(pl.UInt32))}))
        metrics["signatures_computed"] = len(todo)
        metrics["signatures_reused"] = rows.height - len(todo)
        return out

    def cached_vectors(name: str) -> Callable[[pl.DataFrame], np.ndarray]:
        """Normalised embeddings of a frame's texts by ``name``, each text embedded once ever."""

        def vectors_for(rows: pl.DataFrame) -> np.ndarray:
            emb = shared_embedder(name) if rows.height else None
            hashes = text_hash(rows["text"])
            stored = wh.read(EMBEDDINGS_TABLE)
            known: dict[str, np.ndarray] = {}
            model_id = emb.model_id if emb else ""
            if stored.height:
                stored = stored.filter((pl.col("model_id") == model_id)
                                       & pl.col("text_hash").is_in(hashes.implode())).unique("text_hash", keep="first")
                if stored.height:
                    mat = np.asarray(stored["vector"].to_list(), dtype=np.float32)
                    known = dict(zip(stored["text_hash"].to_list(), mat, strict=True))
            hl = hashes.to_list()
            todo = sorted({h: i for i, h in reversed(list(enumerate(hl))) if h not in known}.values())
            if todo:
                texts = rows["text"].gather(todo).to_list()
                fresh = (distributed.embeddings(texts, name, map_reduce) if map_reduce is not None
                         else emb.encode(texts))
                for i, vec in zip(todo, fresh, strict=True):
                    known[hl[i]] = vec
                new_vecs.append(pl.DataFrame({
                    "record_id": rows["id"].gather(todo), "table": table, "model_id": model_id,
                    "text_hash": hashes.gather(todo), "vector": pl.Series(fresh.tolist(), dtype=pl.List(pl.Float32))}))
            metrics["embedded"] = metrics.get("embedded", 0) + len(todo)
            metrics["embeddings_reused"] = metrics.get("embeddings_reused", 0) + len(hl) - len(todo)
            dim = len(next(iter(known.values()))) if known else 0
            return np.asarray([known[h] for h in hl], dtype=np.float32).reshape(len(hl), dim)

        return vectors_for

    fresh = frame.height - hist.height
    if cfg.embedder == "minilm-two-step":
        vectors_for, accurate_for = cached_vectors("minilm-static"), cached_vectors("minilm")
    else:
        vectors_for, accurate_for = cached_vectors(cfg.embedder), None
    result = (dedup(frame, settings, signatures_for, vectors_for, accurate_for, map_reduce) if fresh > 0
              else DedupResult())
    if same.height:  # ids already held by another run: exact duplicates of that very record
        held = pl.DataFrame({"id": same["id"], "kind": "exact", "duplicate_of": same["id"], "similarity": 1.0})
        result = DedupResult.concat([DedupResult(held, DedupResult().clusters), result])
    log(f"{result.drops.height} duplicates among {cur.height} records ({hist.height} from history): "
        f"{result.counts()}")
    return Outcome(result, pl.concat([frame, cur.filter(pl.col("id").is_in(same["id"].implode()))]),
                   pl.concat(new_sigs) if new_sigs else None, pl.concat(new_vecs) if new_vecs else None,
                   {**metrics, **result.counts()})


@register(DedupConfig)
def run(ctx: StageContext, cfg: DedupConfig) -> StageOutput:
    table = cfg.table
    current = ctx.inputs(table)
    history = ctx.history(table) if cfg.against_history else current.head(0)
    remote = ctx.executor is not None and ctx.executor.remote
    out = find_duplicates(ctx.warehouse, current, history, cfg, ctx.log, ctx.executor.map_reduce if remote else None)
    res = out.result
    check_drop_fraction(res, out.records, cfg.max_drop_fraction, "max_drop_fraction", cfg.thresholds())
    info = out.records.select("id", "text", "fixed", "run_id")
    drops = res.drops.join(info.select("id", "text"), on="id", how="left").join(
        info.select(pl.col("id").alias("duplicate_of"), pl.col("fixed").alias("of_history"),
                    pl.col("run_id").alias("of_run")), on="duplicate_of", how="left")
    thresholds = {"exact": "normalised text equal", "near": f"Jaccard >= {cfg.near_threshold}",
                  "semantic": f"cosine >= {cfg.semantic_threshold}"}
    record_kind = RECORD_KIND_OF_TABLE[table]
    rejects = []
    for r in drops.iter_rows(named=True):
        where = f" from run {r['of_run']}" if r["of_history"] or r["duplicate_of"] == r["id"] else ""
        detail = (f"{r['kind']} duplicate of {record_kind} {r['duplicate_of']}{where} "
                  f"(similarity {r['similarity']:.3f}; {thresholds[r['kind']]})")
        rejects.append(reject(ctx, record_kind=record_kind, record_id=r["id"], reason=REASONS[r["kind"]],
                              detail=detail, raw=r["text"], related_id=r["duplicate_of"],
                              similarity=float(r["similarity"])))
    clusters = res.clusters.with_columns(run_id=pl.lit(ctx.run_id), stage=pl.lit(ctx.stage_name),
                                         record_kind=pl.lit(record_kind))
    tables = {CLUSTERS_TABLE: clusters}
    if out.new_signatures is not None:
        tables[SIGNATURES_TABLE] = out.new_signatures
    if out.new_embeddings is not None:
        tables[EMBEDDINGS_TABLE] = out.new_embeddings
    return StageOutput(tables=tables, rejects=rejects, records_in=current.height,
                       kept=current.height - res.drops.height, metrics=out.metrics)


def dedup_table(wh: Warehouse, cfg: DedupConfig, run_id: str | None = None) -> Outcome:
    """Find duplicates among a warehouse table's kept records without writing anything (``factory
    dedup``): one run's records against each other and every other run's, or, without ``run_id``,
    all kept records against each other. Earlier dedup decisions are ignored: it judges afresh."""
    kept = wh.kept(cfg.table, ignore_reasons=REASONS.values())
    if kept.is_empty():
        return Outcome(DedupResult(), records_frame(kept, cfg.table, cfg, fixed=False))
    if run_id is None:
        return find_duplicates(wh, kept, kept.head(0), cfg)
    return find_duplicates(wh, kept.filter(pl.col("run_id") == run_id), kept.filter(pl.col("run_id") != run_id), cfg)
