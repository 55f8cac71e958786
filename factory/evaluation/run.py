"""``factory eval``: answer every suite's items through the backend layer, grade them, store the rows.

An eval is a warehouse run (``eval-<model>-<hash>``) whose stages are its suites, so it gets what every
run gets: each suite's rows land in the ``evals`` table and its summary in ``eval_summaries`` in one
catalog transaction, a rerun skips finished suites, a killed run resumes with every answered call
served from the call cache, and ``factory sql`` sees everything. Answers go through
``StageContext.generate`` (batching, cache, progress) exactly as a pipeline stage's would.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from factory.backends import load_backend
from factory.backends.base import Backend, BackendConfig, BackendUnavailable, ChatRequest, Completion, GenParams
from factory.cache import CallCache
from factory.context import StageContext, console
from factory.evaluation import nll as nll_suite
from factory.evaluation import problems, stats
from factory.records import canonical_json, content_id, derived_seed
from factory.warehouse import StageStats, Warehouse, now

EVAL_VERSION = "2"  # bump when items or grading change: rows of different versions are not compared
Suite = Literal["arithmetic", "ifeval", "nll"]
SUITES: tuple[Suite, ...] = ("arithmetic", "ifeval", "nll")
#: items per suite by default: the whole eval of the embedded model takes a few minutes on 2 CPU cores
DEFAULT_N: dict[str, int] = {"arithmetic": 100, "ifeval": 70, "nll": 52}
#: answer budget per suite: room for a worked answer, or for a paragraph or a list. An answer cut at
#: the budget is graded incorrect: the constraints are about the whole answer, which was never given.
DEFAULT_MAX_TOKENS: dict[str, int] = {"arithmetic": 96, "ifeval": 192}


class EvalError(ValueError):
    """An eval that cannot run as asked; the message says what to change."""


class EvalConfig(BaseModel):
    """What defines an eval's items and how they are answered (the suite selection aside)."""

    model_config = ConfigDict(extra="forbid")
    suites: list[Suite] = Field(default_factory=lambda: list(SUITES), min_length=1)
    n: int | None = Field(None, ge=1, description="items per suite (default: each suite's DEFAULT_N)")
    sizes: dict[Suite, int] = Field(default_factory=dict, description="items for some suites (over n)")
    seed: int = 0
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768, description="default: per suite")
    n_boot: int = Field(10_000, ge=100)

    @field_validator("suites")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("sizes")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [f"{k}={v}" for k, v in value.items() if v < 1]
        if bad:
            raise ValueError(f"sizes must be at least 1 (got {', '.join(bad)})")
        return value

    def items(self, suite: str) -> int:
        cap = len(nll_suite.load_heldout()) if suite == "nll" else problems.MAX_ITEMS[suite]
        return min(self.sizes.get(suite) or self.n or DEFAULT_N[suite], cap)

    def params(self, suite: str) -> GenParams:
        return GenParams(max_tokens=self.max_tokens or DEFAULT_MAX_TOKENS[suite], temperature=self.temperature,
                         top_p=self.top_p, seed=self.seed)

    def identity(self) -> dict[str, Any]:
        """Everything that decides the rows, per suite; the suite selection is left out so that adding a
        suite later extends the same run instead of starting another."""
        per_suite = {s: {"n": self.items(s), **({} if s == "nll" else self.params(s).model_dump())} for s in SUITES}
        return {"eval_version": EVAL_VERSION, "seed": self.seed, "suites": per_suite}


def parse_sizes(text: str | None) -> dict[str, Any]:
    """``--n``: ``"50"`` (every suite) or ``"arithmetic=300,ifeval=70"``, as EvalConfig fields."""
    if text is None or not text.strip():
        return {}
    if "=" not in text:
        try:
            return {"n": int(text)}
        except ValueError:
            raise EvalError(f"--n {text!r}: give a number, or suite=number pairs like arithmetic=300,ifeval=70") \
                from None
    sizes: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        suite, _, value = part.partition("=")
        try:
            sizes[suite.strip()] = int(value)
        except ValueError:
            raise EvalError(f"--n {part!r}: the size after '=' must be a whole number") from None
    return {"sizes": sizes}


# -- the model under test ------------------------------------------------------------------------------

_OTHER_WEIGHTS = ("*.bin", "*.pt", "config.json")


def _sha256_files(paths: list[Path], separator: bytes = b"") -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + separator)
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def model_identity(config: BackendConfig) -> str:
    """The id eval rows carry for the model, and the call cache's key: the embedded model's name; for a
    model folder the content hash of its safetensors files (the same hash as ``factory train``'s
    ``weights_id``, so rows join the ``models`` table); for a .gguf file its hash; for a served model, whose
    weights we cannot see, the backend kind and model name."""
    from factory.models import EMBEDDED_LLM, resolve_llm

    model = str(getattr(config, "model", ""))
    if model == EMBEDDED_LLM:
        return EMBEDDED_LLM
    try:
        folder, gguf = resolve_llm(model)
    except BackendUnavailable:
        if config.kind == "transformers":  # it must be local: say so before anything is recorded
            raise
        return content_id("served", config.kind, model)
    if gguf:
        return _sha256_files([folder / gguf])
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        return _sha256_files(weights)
    return _sha256_files(sorted({p for pat in _OTHER_WEIGHTS for p in folder.glob(pat)}), b"\0")


def resolve_registered(config: BackendConfig, wh: Warehouse) -> BackendConfig:
    """A model given by the name ``factory train`` registered in *this* warehouse becomes its folder."""
    from factory.models import EMBEDDED_LLM

    model = getattr(config, "model", None)
    if config.kind != "transformers" or not model or model == EMBEDDED_LLM or Path(model).expanduser().exists():
        return config
    try:
        from factory.training.registry import find_model_folder
    except ImportError:  # pragma: no cover - the training half is optional here
        return config
    found = find_model_folder(model, wh)
    return config.model_copy(update={"model": str(found)}) if found is not None else config


def model_slug(model: str) -> str:
    name = Path(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.removesuffix(".gguf")).strip("-")[:40] or "model"


class IdentifiedBackend:
    """A backend seen under the content id of its weights, so the call cache can never serve answers of
    other weights that once lived at the same path (a folder retrained in place)."""

    def __init__(self, inner: Backend, model_id: str):
        self.inner = inner
        self.model_id = model_id
        self.batch_size = inner.batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return self.inner.generate(requests)


# -- results -------------------------------------------------------------------------------------------

EVAL_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(), "model": pl.String(), "model_id": pl.String(), "suite": pl.String(),
    "item_id": pl.String(), "kind": pl.String(), "prompt": pl.String(), "reference": pl.String(),
    "answer": pl.String(), "extracted": pl.String(), "correct": pl.Boolean(), "nll": pl.Float64(),
    "tokens": pl.Int64(), "finish_reason": pl.String(), "checker": pl.String(), "seed": pl.Int64(),
    "eval_version": pl.String(),
}
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(), "model": pl.String(), "model_id": pl.String(), "backend": pl.String(),
    "suite": pl.String(), "metric": pl.String(), "n": pl.Int64(), "correct": pl.Int64(), "value": pl.Float64(),
    "ci_low": pl.Float64(), "ci_high": pl.Float64(), "tokens": pl.Int64(), "truncated": pl.Int64(),
    "by_kind": pl.String(), "seconds": pl.Float64(), "seed": pl.Int64(), "eval_version": pl.String(),
}


@dataclass
class EvalResult:
    run_id: str
    model: str
    model_id: str
    warehouse: Warehouse
    summaries: pl.DataFrame
    ran: list[str] = field(default_factory=list)  # suites answered now (the others were already done)
    unsupported: dict[str, str] = field(default_factory=dict)  # suite -> why it could not run
    load_seconds: float = 0.0  # loading the model (0 when every suite was already done)


def eval_run_id(model: str, model_id: str, cfg: EvalConfig) -> str:
    return f"eval-{model_slug(model)}-{content_id(model_id, cfg.identity())[:10]}"


def nll_unsupported(config: BackendConfig) -> str | None:
    if config.kind == "transformers":
        return None
    return (f"unsupported for backend kind {config.kind!r}: the NLL suite needs the model's logits; run it with "
            "the transformers backend on the same weights")


def evaluate(backend_config: BackendConfig, cfg: EvalConfig | None = None,
             warehouse: Warehouse | str | Path = "warehouse", show_progress: bool = True,
             backend: Backend | None = None) -> EvalResult:
    """Evaluate one model on the chosen suites (resuming a run that was interrupted) and return its
    per-suite summaries; the rows are in the warehouse's ``evals`` table. ``backend``: an already loaded
    backend for ``backend_config`` (a loop that evaluates the model it just used need not load it twice)."""
    cfg = cfg or EvalConfig()
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    model = str(getattr(backend_config, "model", backend_config.kind))
    backend_config = resolve_registered(backend_config, wh)
    suites = list(cfg.suites)
    unsupported: dict[str, str] = {}
    why = nll_unsupported(backend_config)
    if "nll" in suites and why:
        unsupported["nll"] = why
        suites.remove("nll")
        if not suites:
            raise EvalError(f"nll: {why}")
    model_id = model_identity(backend_config)
    run_id = eval_run_id(model, model_id, cfg)
    identity = {"model": model, "model_id": model_id, "backend": backend_config.model_dump(mode="json"),
                **cfg.identity()}
    done = wh.done_stages(run_id)
    loaded: list[Backend] = [IdentifiedBackend(backend, model_id)] if backend is not None else []

    def load() -> Backend:
        if not loaded:
            began = time.perf_counter()
            loaded.append(IdentifiedBackend(load_backend(backend_config), model_id))
            if show_progress:
                console.print(f"[dim]loaded {backend_config.kind} model {model!r} in "
                              f"{time.perf_counter() - began:.1f}s[/]")
        return loaded[0]

    result = EvalResult(run_id, model, model_id, wh, pl.DataFrame(schema=SUMMARY_SCHEMA), unsupported=unsupported)
    # load first: a model that cannot load leaves no run behind, and a suite's seconds are its own work
    if any(s not in done for s in suites):
        began = time.perf_counter()
        load()
        result.load_seconds = round(time.perf_counter() - began, 2)
    wh.begin_run(run_id, "eval", canonical_json(identity), content_id("eval", model_id, cfg.identity()), 0)
    cache = CallCache(wh.root / "cache" / "calls.sqlite")
    try:
        for suite in suites:
            if suite in done:
                continue
            ctx = StageContext(run_id=run_id, stage_name=suite, position=SUITES.index(suite), round=0,
                               seed=cfg.seed, warehouse=wh, earlier_stages=[], backend_loader=load,
                               cache=cache, show_progress=show_progress)
            started, began = now(), time.perf_counter()
            rows = (_nll_rows(ctx, cfg, backend_config) if suite == "nll" else _generated_rows(ctx, suite, cfg))
            meta = {"run_id": run_id, "model": model, "model_id": model_id, "seed": cfg.seed,
                    "eval_version": EVAL_VERSION}
            evals = pl.DataFrame([{**meta, **r} for r in rows], schema=EVAL_SCHEMA)
            seconds = round(time.perf_counter() - began, 3)
            summary = summarise(evals, suite, seconds, backend_config.kind, cfg.n_boot)
            u = ctx.usage
            wh.commit_stage(run_id, suite, {"evals": evals, "eval_summaries": summary}, StageStats(
                kind=f"eval:{suite}", position=SUITES.index(suite), records_in=evals.height,
                records_out=evals.height, records_rejected=0, calls=u.calls, cached_calls=u.cached_calls,
                prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, seconds=seconds,
                metrics=json.dumps(summary.drop("by_kind").row(0, named=True), default=str), started_at=started))
            result.ran.append(suite)
    except BaseException as exc:
        wh.finish_run(run_id, "failed" if isinstance(exc, Exception) else "interrupted",
                      f"{type(exc).__name__}: {exc}")
        raise
    finally:
        cache.close()
    wh.finish_run(run_id, "done")
    got = wh.read("eval_summaries", run_id=run_id)
    order = {s: i for i, s in enumerate(SUITES)}
    result.summaries = got.filter(pl.col("suite").is_in(suites)).sort(pl.col("suite").replace_strict(order))
    return result


def _generated_rows(ctx: StageContext, suite: str, cfg: EvalConfig) -> list[dict[str, Any]]:
    """Ask every problem of the suite, grade each answer."""
    items = problems.generate(suite, cfg.items(suite), stream="eval", seed=cfg.seed)
    base = cfg.params(suite)
    params = [base if base.temperature == 0 else base.model_copy(update={"seed": derived_seed(cfg.seed, p.item_id)})
              for p in items]
    requests = [ChatRequest.of([{"role": "user", "content": p.prompt}], q) for p, q in zip(items, params, strict=True)]
    answers = ctx.generate(requests, description=f"{len(items)} items")
    failed = [a for a in answers if a.finish_reason == "error"]
    if failed:
        raise EvalError(f"{suite}: {len(failed)} of {len(items)} requests failed after retries (first: "
                        f"{failed[0].error}); run the same command again to retry them, the answered ones are cached")
    rows = []
    for p, a in zip(items, answers, strict=True):
        correct, extracted = p.grade(a.text)
        correct = correct and a.finish_reason != "length"  # unfinished: neither its number nor its form is final
        rows.append({"suite": suite, "item_id": p.item_id, "kind": p.kind, "prompt": p.prompt,
                     "reference": p.reference, "answer": a.text, "extracted": extracted, "correct": correct,
                     "tokens": a.completion_tokens, "finish_reason": a.finish_reason,
                     "checker": canonical_json({"checker": p.checker, "params": p.params})})
    return rows


def _nll_rows(ctx: StageContext, cfg: EvalConfig, backend_config: BackendConfig) -> list[dict[str, Any]]:
    """Score every held-out reference answer with the model's own logits."""
    from factory.backends.transformers_backend import TransformersBackend
    from factory.models import load_causal_lm

    items = nll_suite.load_heldout()[:cfg.items("nll")]
    inner = getattr(ctx.backend, "inner", ctx.backend)
    if isinstance(inner, TransformersBackend):
        lm, tokenizer = inner.model, inner.tokenizer
    else:
        lm, tokenizer = load_causal_lm(backend_config.model, getattr(backend_config, "dtype", "float32"))
        lm.eval()
    rows = []
    with ctx.progress(f"{len(items)} answers", total=len(items)) as advance:
        for item in items:
            total, count = nll_suite.answer_nll(lm, tokenizer, item.instruction, item.answer)
            rows.append({"suite": "nll", "item_id": item.item_id, "kind": "heldout_qa", "prompt": item.instruction,
                         "reference": item.answer, "nll": total, "tokens": count})
            advance(1)
    return rows


def summarise(evals: pl.DataFrame, suite: str, seconds: float, backend: str, n_boot: int) -> pl.DataFrame:
    """One row: accuracy with its Wilson 95% CI, or NLL per token with a bootstrap 95% CI."""
    first = evals.row(0, named=True) if evals.height else {}
    row: dict[str, Any] = {k: first.get(k) for k in ("run_id", "model", "model_id", "seed", "eval_version")}
    row.update(backend=backend, suite=suite, n=evals.height, seconds=seconds,
               tokens=int(evals["tokens"].sum() or 0))
    if suite == "nll":
        value, lo, hi = stats.nll_per_token(evals["nll"].to_list(), evals["tokens"].to_list(), n_boot)
        row.update(metric="nll_per_token", value=value, ci_low=lo, ci_high=hi, by_kind="{}")
    else:
        k = int(evals["correct"].sum())
        lo, hi = stats.wilson(k, evals.height)
        kinds = evals.group_by("kind", maintain_order=True).agg(pl.col("correct").sum().alias("k"), pl.len().alias("n"))
        row.update(metric="accuracy", correct=k, value=k / evals.height if evals.height else float("nan"),
                   ci_low=lo, ci_high=hi, truncated=int((evals["finish_reason"] == "length").sum()),
                   by_kind=canonical_json({r["kind"]: [r["k"], r["n"]] for r in kinds.iter_rows(named=True)}))
    return pl.DataFrame([row], schema=SUMMARY_SCHEMA)
