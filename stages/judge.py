"""LLM-as-judge: the model grades its own answers, and first proves it can tell good from bad.

- **Additive 5-point rubric** (template ``judge/additive5@1``): one point per criterion met, a brief
  justification, then ``Score: N``. Every sample is judged ``k`` times with different seeds; each
  judgment (raw text, parsed score, ``parsed_ok``) is a row in ``judgments``, and the per-sample mean,
  spread (population standard deviation) and number of parsed scores go to ``judge_scores``.
- **Calibration** (before any score is trusted): a built-in set of short questions, each with a good
  answer and a bad twin (truncated, word-shuffled or off-topic), is scored by the same judge. Accuracy
  is the share of pairs where the good answer scores strictly higher; it is stored as ``calibration``
  judgments and in the stage metrics. Below ``min_calibration_accuracy`` the run says so loudly and,
  with ``fallback_to_heuristics``, ``judge_scores.trusted`` is false so the score stage ignores the judge.
- **Pairwise** (optional, template ``judge/pairwise@1``): two answers to one task are compared in both
  orders; when both orders prefer the same answer it becomes a ``pairs`` record (chosen/rejected).
- **Structured** (``structured: true``, the default): the same rubric asks for ``{"justification", "score"}``
  (``judge/additive5-json@1``; pairwise ``{"reason", "winner": "A"|"B"}``) and decoding is held to that
  schema (factory/structured.py), so a small model's verdict is read from a field instead of guessed from
  prose. A verdict that still breaks the schema (cut at ``max_tokens``) is a parse failure, raw text kept.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Mapping
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from factory.backends.base import ChatRequest, GenParams
from factory.context import StageContext
from factory.map_stage import MapContext, MapStage, register_map
from factory.records import content_id, derived_seed, frame, lineage, task_prompt
from factory.stage import StageConfig, StageOutput, register
from factory.structured import OutputConstraint

ADDITIVE_TEMPLATE_ID = "judge/additive5@1"
PAIRWISE_TEMPLATE_ID = "judge/pairwise@1"
ADDITIVE_JSON_TEMPLATE_ID = "judge/additive5-json@1"
PAIRWISE_JSON_TEMPLATE_ID = "judge/pairwise-json@1"

ADDITIVE_TEMPLATE = """Review the user's question and the response below, using the additive 5-point scoring system.
Start at 0 and add points:
- Add 1 point if the response is relevant to the question.
- Add 1 point if it addresses a substantial part of the question.
- Add 1 point if it answers the basic elements of the question in a useful way.
- Add 1 point if it is clearly written, complete and well organised.
- Add 1 point if it is excellent: accurate, focused, with no errors or irrelevant content.

Question: {question}

Response: {answer}

Justify your total briefly in one or two sentences, then end with the line "Score: N" where N is 0 to 5."""

PAIRWISE_TEMPLATE = """Which response answers the question better?

Question: {question}

Response A: {a}

Response B: {b}

Explain briefly in one sentence, then end with the line "Winner: A" or "Winner: B"."""

# The structured judge asks for the same thing as JSON, and the decoder is held to the schema.
ADDITIVE_JSON_TEMPLATE = ADDITIVE_TEMPLATE.rsplit("\n\n", 1)[0] + """

Reply with a JSON object: {{"justification": "<one or two sentences>", "score": <0 to 5>}}"""

PAIRWISE_JSON_TEMPLATE = PAIRWISE_TEMPLATE.rsplit("\n\n", 1)[0] + """

Reply with a JSON object: {{"reason": "<one sentence>", "winner": "A" or "B"}}"""

#: tokens of JSON around the free text of a structured verdict, and a conservative characters-per-token
#: ratio: the text fields are bounded so that a verdict fits in ``max_tokens``. English runs ~4 characters
#: a token, but SmolLM2 spends one token per digit: at 3, a justification quoting "100 degrees Celsius
#: (212 degrees Fahrenheit)" was cut at 64 tokens, so 2
JSON_OVERHEAD_TOKENS = 16
CHARS_PER_TOKEN = 2


def text_budget(max_tokens: int) -> int:
    """Characters the free-text field of a structured verdict may use so the JSON closes in time."""
    return max(16, (max_tokens - JSON_OVERHEAD_TOKENS) * CHARS_PER_TOKEN)


@lru_cache(maxsize=64)
def verdict_constraint(max_tokens: int) -> OutputConstraint:
    """``{"justification": str, "score": 0..5}``, justification first so the model reasons before scoring."""
    return OutputConstraint.from_schema({
        "type": "object",
        "properties": {"justification": {"type": "string", "maxLength": text_budget(max_tokens)},
                       "score": {"type": "integer", "minimum": 0, "maximum": 5}},
        "required": ["justification", "score"], "additionalProperties": False})


@lru_cache(maxsize=64)
def winner_constraint(max_tokens: int) -> OutputConstraint:
    """``{"reason": str, "winner": "A" | "B"}`` for pairwise comparison."""
    return OutputConstraint.from_schema({
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": text_budget(max_tokens)},
                       "winner": {"type": "string", "enum": ["A", "B"]}},
        "required": ["reason", "winner"], "additionalProperties": False})


def structured_score(text: str, constraint: OutputConstraint) -> float | None:
    value = constraint.parse(text)
    return None if value is None else float(value["score"])


def structured_winner(text: str, constraint: OutputConstraint) -> str | None:
    value = constraint.parse(text)
    return None if value is None else value["winner"]

# ---------------------------------------------------------------------------------------------------
# Score parsing


_SCORE = re.compile(r"\bscore\b[\s*_:=\-–]*?(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?", re.I)
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)\b", re.I)
_POINTS = re.compile(r"(-?\d+(?:\.\d+)?)\s*points?\b", re.I)
_RUBRIC_ECHO = re.compile(r"\b(add|award|give|gets?|earns?)\s+(?:an?\s+)?$", re.I)


def parse_score(text: str, low: float = 0, high: float = 5) -> float | None:
    """The judge's score in ``text``, or None when it cannot be trusted.

    Understands ``Score: 4``, ``score 4/5``, ``**Score:** 4``, ``Score - 4 out of 5``, ``4/5`` and
    ``4 points``; the *last* occurrence wins (models often restate the rubric first). A score outside
    [low, high], or a fraction whose denominator is not ``high`` (``8/10``), is a parse failure, and so is
    a rubric echo like "Add 1 point if…".
    """
    found: list[tuple[int, float, str | None]] = []
    for pattern in (_SCORE, _FRACTION):
        for m in pattern.finditer(text):
            found.append((m.start(), float(m.group(1)), m.group(2)))
    for m in _POINTS.finditer(text):
        if not _RUBRIC_ECHO.search(text[max(0, m.start() - 12):m.start()]):
            found.append((m.start(), float(m.group(1)), None))
    if not found:
        return None
    _, value, denominator = max(found, key=lambda f: f[0])
    if denominator is not None and float(denominator) != high:
        return None
    if not low <= value <= high:
        return None
    return value


_WINNER = re.compile(r"\b(?:winner|better(?: response)?|answer|choice|verdict)\b[\s*_:=\-–]*(?:response\s+)?"
                     r"\(?\**([AB])\b", re.I)
_LONE = re.compile(r"^\W*(?:response\s+)?([AB])\W*$", re.I | re.M)


def parse_winner(text: str) -> str | None:
    """``"A"`` or ``"B"`` from a pairwise judgment (last ``Winner: X`` wins), or None."""
    found = [(m.start(), m.group(1).upper()) for p in (_WINNER, _LONE) for m in p.finditer(text)]
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------------
# The calibration set: short questions with a good answer; the bad twin is made from it.

CALIBRATION: list[tuple[str, str]] = [
    ("What is the boiling point of water at sea level?",
     "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level."),
    ("Name three primary colours of paint.",
     "The three traditional primary colours of paint are red, yellow and blue."),
    ("Why do we have seasons on Earth?",
     "Seasons happen because the Earth's axis is tilted, so each hemisphere gets more direct sunlight "
     "for part of the year and less for the rest."),
    ("How many days are there in a leap year?",
     "A leap year has 366 days; the extra day is 29 February."),
    ("What does a thermometer measure?",
     "A thermometer measures temperature, how hot or cold something is."),
    ("Give one tip for sleeping better.",
     "Go to bed at the same time every night and keep screens out of the bedroom for the last hour."),
    ("What is the largest planet in our solar system?",
     "Jupiter is the largest planet in our solar system, more than eleven times wider than Earth."),
    ("Translate 'thank you' into Spanish.",
     "'Thank you' in Spanish is 'gracias'."),
    ("What gas do plants take in for photosynthesis?",
     "Plants take in carbon dioxide from the air and use sunlight to turn it into sugar, releasing oxygen."),
    ("How do you convert kilometres to metres?",
     "Multiply the number of kilometres by 1000, because one kilometre is 1000 metres."),
    ("What is the main job of the heart?",
     "The heart pumps blood around the body, carrying oxygen and nutrients to every organ."),
    ("Suggest a name for a friendly pet goldfish.",
     "A friendly name for a goldfish is Bubbles, short, cheerful and easy to remember."),
]


def calibration_pairs(seed: int = 0) -> list[dict[str, str]]:
    """Each question with its good answer and a bad twin: truncated, word-shuffled or off-topic (in turn)."""
    rng = random.Random(seed)
    pairs = []
    for i, (question, good) in enumerate(CALIBRATION):
        words = good.split()
        how = ("truncated", "shuffled", "off_topic")[i % 3]
        if how == "truncated":
            bad = " ".join(words[:max(2, len(words) // 3)])
        elif how == "shuffled":
            shuffled = words[:]
            while shuffled == words:
                rng.shuffle(shuffled)
            bad = " ".join(shuffled)
        else:
            bad = CALIBRATION[(i + 5) % len(CALIBRATION)][1]
        pairs.append({"pair_id": content_id("calibration", question, good, bad), "question": question,
                      "good": good, "bad": bad, "corruption": how})
    return pairs


# ---------------------------------------------------------------------------------------------------
# The stage


class JudgeConfig(StageConfig):
    kind: Literal["judge"] = "judge"
    k: int = Field(3, ge=1, le=16, description="judgments per sample, each with its own seed")
    params: GenParams = GenParams(max_tokens=96, temperature=0.7, top_p=0.95)
    calibrate: bool = Field(True, description="score the built-in calibration set before trusting the judge")
    calibration_repeats: int = Field(1, ge=1, le=8, description="judgments per calibration answer")
    calibration_size: int = Field(len(CALIBRATION), ge=3, le=len(CALIBRATION),
                                  description="calibration pairs to use (fewer is cheaper and noisier)")
    min_calibration_accuracy: float = Field(0.7, ge=0, le=1, description="below this the judge is not trusted")
    fallback_to_heuristics: bool = Field(True, description="an untrusted judge is left out of the composite score")
    pairwise: bool = Field(False, description="compare answers to the same task in both orders (preference pairs)")
    max_pairs_per_task: int = Field(1, ge=1)
    max_samples: int | None = Field(None, ge=1, description="judge at most this many samples (cheap runs)")
    structured: bool = Field(True, description="constrained JSON verdicts (score 0-5 + a bounded justification; "
                             "winner A/B) instead of free text parsed with regexes")

    consumes = ("samples",)
    produces = ("judgments", "judge_scores", "pairs")
    uses_backend = True

    @model_validator(mode="after")
    def _verdict_fits(self) -> JudgeConfig:
        if self.structured and self.params.max_tokens < JSON_OVERHEAD_TOKENS + 8:
            raise ValueError(f"a structured judge needs params.max_tokens >= {JSON_OVERHEAD_TOKENS + 8} for its "
                             f"JSON verdict (got {self.params.max_tokens})")
        if self.params.constraint is not None:
            raise ValueError("params.constraint is set by the judge itself (see `structured`); remove it")
        verdict_constraint(self.params.max_tokens)  # compiles now, not after the model has loaded
        return self

    @property
    def verdict(self) -> OutputConstraint | None:
        return verdict_constraint(self.params.max_tokens) if self.structured else None

    @property
    def additive_template(self) -> tuple[str, str]:
        """(template id, template text) of the additive rubric in the configured mode."""
        return ((ADDITIVE_JSON_TEMPLATE_ID, ADDITIVE_JSON_TEMPLATE) if self.structured
                else (ADDITIVE_TEMPLATE_ID, ADDITIVE_TEMPLATE))

    def score_of(self, text: str) -> float | None:
        verdict = self.verdict
        return parse_score(text) if verdict is None else structured_score(text, verdict)


def _request(content: str, params: GenParams, seed: int, constraint: OutputConstraint | None = None) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": content}],
                          params.model_copy(update={"seed": seed, "constraint": constraint}))


def _judgment(ctx: StageContext, *, kind: str, target_ids: list[str], task_id: str | None, model: str,
              template_id: str, repeat: int, raw: str, score: float | None, params: GenParams) -> dict[str, Any]:
    return {"judgment_id": content_id("judgment", kind, target_ids, model, template_id, repeat, params.model_dump(),
                                      raw),
            "kind": kind, "target_ids": target_ids, "task_id": task_id, "judge_model": model,
            "judge_template_id": template_id, "repeat_index": repeat, "raw_text": raw, "score": score,
            "parsed_ok": score is not None,
            **lineage(ctx, producer=model, parent_ids=target_ids, template_id=template_id,
                      gen_params=params.model_dump())}


def run_calibration(ctx: StageContext, cfg: JudgeConfig) -> tuple[float, list[dict[str, Any]], int]:
    """Score the calibration set; returns (accuracy, judgment rows, parse failures)."""
    pairs = calibration_pairs(ctx.seed)[:cfg.calibration_size]
    template_id, template = cfg.additive_template
    jobs = []
    for pair in pairs:
        for side in ("good", "bad"):
            for r in range(cfg.calibration_repeats):
                seed = derived_seed(ctx.seed, "calibration", pair["pair_id"], side, r)
                prompt = template.format(question=pair["question"], answer=pair[side])
                jobs.append((pair, side, r, _request(prompt, cfg.params, seed, cfg.verdict)))
    outs = ctx.generate([j[3] for j in jobs], description="calibration")
    model = ctx.backend.model_id
    rows, scores = [], {}
    for (pair, side, r, req), out in zip(jobs, outs, strict=True):
        score = cfg.score_of(out.text)
        scores.setdefault((pair["pair_id"], side), []).append(score)
        target = f"calibration:{pair['pair_id']}:{side}:{pair['corruption']}"
        rows.append(_judgment(ctx, kind="calibration", target_ids=[target], task_id=None, model=model,
                              template_id=template_id, repeat=r, raw=out.text, score=score,
                              params=req.params))
    correct = 0
    for pair in pairs:
        good = [s for s in scores[(pair["pair_id"], "good")] if s is not None]
        bad = [s for s in scores[(pair["pair_id"], "bad")] if s is not None]
        if good and bad and statistics.fmean(good) > statistics.fmean(bad):
            correct += 1
    failures = sum(1 for r in rows if not r["parsed_ok"])
    return correct / len(pairs), rows, failures


def run_pairwise(ctx: StageContext, cfg: JudgeConfig, samples: list[dict[str, Any]],
                 means: dict[str, float | None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Compare answers to one task in both orders; agreeing verdicts become preference pairs."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_task.setdefault(s["task_id"], []).append(s)
    constraint = winner_constraint(cfg.params.max_tokens) if cfg.structured else None
    template_id, template = ((PAIRWISE_JSON_TEMPLATE_ID, PAIRWISE_JSON_TEMPLATE) if cfg.structured
                             else (PAIRWISE_TEMPLATE_ID, PAIRWISE_TEMPLATE))
    jobs = []
    for task_id, group in by_task.items():
        for a, b in list(combinations(sorted(group, key=lambda s: s["sample_id"]), 2))[:cfg.max_pairs_per_task]:
            for order, (first, second) in enumerate(((a, b), (b, a))):
                seed = derived_seed(ctx.seed, "pairwise", first["sample_id"], second["sample_id"])
                prompt = template.format(question=task_prompt(a), a=first["output"], b=second["output"])
                jobs.append((task_id, a, b, order, first, second, _request(prompt, cfg.params, seed, constraint)))
    outs = ctx.generate([j[-1] for j in jobs], description="pairwise")
    model = ctx.backend.model_id if jobs else ""
    judgments, verdicts = [], {}
    for (task_id, a, b, order, first, second, req), out in zip(jobs, outs, strict=True):
        winner = parse_winner(out.text) if constraint is None else structured_winner(out.text, constraint)
        won = None if winner is None else (first if winner == "A" else second)["sample_id"]
        verdicts.setdefault((task_id, a["sample_id"], b["sample_id"]), []).append(won)
        judgments.append(_judgment(ctx, kind="pairwise", target_ids=[first["sample_id"], second["sample_id"]],
                                   task_id=task_id, model=model, template_id=template_id, repeat=order,
                                   raw=out.text, score=None if winner is None else float(winner == "A"),
                                   params=req.params))
    pairs = []
    for (task_id, a_id, b_id), won in verdicts.items():
        if len(won) == 2 and won[0] is not None and won[0] == won[1]:
            chosen, rejected = (a_id, b_id) if won[0] == a_id else (b_id, a_id)
            mc, mr = means.get(chosen), means.get(rejected)
            pairs.append({"pair_id": content_id("pair", task_id, chosen, rejected, template_id),
                          "task_id": task_id, "chosen_id": chosen, "rejected_id": rejected,
                          "margin": None if mc is None or mr is None else round(mc - mr, 4),
                          "rule": "pairwise-swap-agree",
                          **lineage(ctx, producer=model, parent_ids=[chosen, rejected],
                                    template_id=template_id, gen_params=cfg.params.model_dump())})
    return judgments, pairs


def calibrate(ctx: StageContext, cfg: JudgeConfig) -> tuple[bool, dict[str, Any], list[dict[str, Any]]]:
    """(trusted, calibration metrics, calibration judgment rows); trusted without calibration."""
    if not cfg.calibrate:
        return True, {"trusted": True}, []
    accuracy, rows, failures = run_calibration(ctx, cfg)
    passed = accuracy >= cfg.min_calibration_accuracy
    trusted = passed or not cfg.fallback_to_heuristics
    metrics = {"calibration_accuracy": round(accuracy, 4), "calibration_pairs": cfg.calibration_size,
               "calibration_parse_failure_rate": round(failures / max(len(rows), 1), 4),
               "calibration_passed": passed, "trusted": trusted}
    if not passed:
        action = ("the composite score falls back to heuristics only" if cfg.fallback_to_heuristics
                  else "its scores are used anyway (fallback_to_heuristics is off)")
        ctx.log(f"[bold red]WARNING: the judge ranks the good answer higher in only {accuracy:.0%} of "
                f"{cfg.calibration_size} calibration pairs (< {cfg.min_calibration_accuracy:.0%}): it is near "
                f"chance, so {action}[/]")
    else:
        ctx.log(f"judge calibration accuracy {accuracy:.0%} (>= {cfg.min_calibration_accuracy:.0%}): trusted")
    return trusted, metrics, rows


def judge_samples(ctx: StageContext, cfg: JudgeConfig, rows: list[dict[str, Any]], trusted: bool,
                  calibration_accuracy: float | None
                  ) -> tuple[list[dict[str, Any]], pl.DataFrame, dict[str, float | None]]:
    """k additive-rubric judgments of each sample: (judgment rows, ``judge_scores`` rows, mean per sample)."""
    template_id, template = cfg.additive_template
    jobs = []
    for s in rows:
        prompt = template.format(question=task_prompt(s), answer=s["output"])
        for r in range(cfg.k):
            seed = derived_seed(ctx.seed, "judge", s["sample_id"], r)
            jobs.append((s, r, _request(prompt, cfg.params, seed, cfg.verdict)))
    outs = ctx.generate([j[2] for j in jobs], description="judging")
    model = ctx.backend.model_id if jobs else ""
    judgments = []
    per_sample: dict[str, list[float]] = {s["sample_id"]: [] for s in rows}
    for (s, r, req), out in zip(jobs, outs, strict=True):
        score = cfg.score_of(out.text)
        if score is not None:
            per_sample[s["sample_id"]].append(score)
        judgments.append(_judgment(ctx, kind="additive-5", target_ids=[s["sample_id"]], task_id=s["task_id"],
                                   model=model, template_id=template_id, repeat=r, raw=out.text,
                                   score=score, params=req.params))
    means = {sid: (statistics.fmean(v) if v else None) for sid, v in per_sample.items()}
    judge_scores = pl.DataFrame({
        "sample_id": [s["sample_id"] for s in rows],
        "task_id": [s["task_id"] for s in rows],
        "judge_mean": [means[s["sample_id"]] for s in rows],
        "judge_spread": [statistics.pstdev(per_sample[s["sample_id"]]) if per_sample[s["sample_id"]] else None
                         for s in rows],
        "judge_n": [len(per_sample[s["sample_id"]]) for s in rows],
        "judge_k": [cfg.k] * len(rows),
        "trusted": [trusted] * len(rows),
        "calibration_accuracy": [calibration_accuracy] * len(rows),
        "judge_template_id": [template_id] * len(rows),
        "run_id": [ctx.run_id] * len(rows),
    }, schema_overrides={"judge_mean": pl.Float64, "judge_spread": pl.Float64, "calibration_accuracy": pl.Float64,
                         "sample_id": pl.String, "task_id": pl.String, "trusted": pl.Boolean,
                         "judge_template_id": pl.String, "run_id": pl.String, "judge_n": pl.Int64,
                         "judge_k": pl.Int64})
    return judgments, judge_scores, means


def judging_metrics(cfg: JudgeConfig, calibration: dict[str, Any], judged: int, judgments: int, failures: int,
                    judge_scores: pl.DataFrame) -> dict[str, Any]:
    """The stage's metrics, the same whether it ran whole or batch by batch."""
    metrics: dict[str, Any] = {"judge_template_id": cfg.additive_template[0], "k": cfg.k,
                               "structured": cfg.structured, **calibration,
                               "judged_samples": judged, "judgments": judgments, "parse_failures": failures,
                               "parse_failure_rate": round(failures / judgments, 4) if judgments else None}
    means = judge_scores["judge_mean"].drop_nulls()
    if means.len():
        metrics["judge_mean"] = round(statistics.fmean(means.to_list()), 4)
        metrics["judge_spread_mean"] = round(float(judge_scores["judge_spread"].drop_nulls().mean() or 0.0), 4)
    return metrics


@register(JudgeConfig)
def run(ctx: StageContext, cfg: JudgeConfig) -> StageOutput:
    samples = ctx.inputs("samples").sort("sample_id")
    if cfg.max_samples is not None:
        samples = samples.head(cfg.max_samples)
    rows = samples.to_dicts()
    trusted, calibration, judgments = calibrate(ctx, cfg)
    additive, judge_scores, means = judge_samples(ctx, cfg, rows, trusted, calibration.get("calibration_accuracy"))
    judgments.extend(additive)
    failures = sum(1 for j in additive if not j["parsed_ok"])
    metrics = judging_metrics(cfg, calibration, len(rows), len(additive), failures, judge_scores)
    tables: dict[str, pl.DataFrame] = {"judge_scores": judge_scores}
    if cfg.pairwise:
        pw_judgments, pairs = run_pairwise(ctx, cfg, rows, means)
        judgments.extend(pw_judgments)
        tables["pairs"] = frame("pair", pairs)
        failures_pw = sum(1 for j in pw_judgments if not j["parsed_ok"])
        metrics.update({"pairwise_judgments": len(pw_judgments), "pairs": len(pairs),
                        "pairwise_parse_failure_rate": round(failures_pw / len(pw_judgments), 4)
                        if pw_judgments else None})
    tables["judgments"] = frame("judgment", judgments)
    ctx.log(f"judged {len(rows)} samples x{cfg.k}; parse failures {failures}/{len(additive)}")
    return StageOutput(tables=tables, records_in=len(rows), metrics=metrics)


@register_map(JudgeConfig)
class JudgeMap(MapStage):
    """Judge batch by batch. Calibration runs once, on the driver, and its judgments are the stage's
    prelude; pairwise comparison (answers of one task side by side) and ``max_samples`` (the first N
    of the whole table) need the whole table, so those configurations run the global ``run``."""

    input_table = "samples"

    @classmethod
    def applies(cls, cfg: JudgeConfig) -> bool:
        return not cfg.pairwise and cfg.max_samples is None

    def plan(self, ctx: MapContext, cfg: JudgeConfig) -> dict[str, Any]:
        trusted, self.calibration, self.calibration_rows = calibrate(ctx, cfg)  # cached calls on a resume
        return {"trusted": trusted, "calibration": self.calibration}

    def prelude(self, ctx: MapContext, cfg: JudgeConfig) -> StageOutput | None:
        if not self.calibration_rows:
            return None
        return StageOutput(tables={"judgments": frame("judgment", self.calibration_rows)})

    def process(self, batch: pl.DataFrame, ctx: MapContext, cfg: JudgeConfig) -> StageOutput:
        rows = batch.sort("sample_id").to_dicts()
        accuracy = self.shared["calibration"].get("calibration_accuracy")
        judgments, judge_scores, _ = judge_samples(ctx, cfg, rows, self.shared["trusted"], accuracy)
        failures = sum(1 for j in judgments if not j["parsed_ok"])
        return StageOutput(tables={"judge_scores": judge_scores, "judgments": frame("judgment", judgments)},
                           records_in=len(rows), metrics={"judgments": len(judgments), "parse_failures": failures})

    def summarize(self, outputs: Mapping[str, list[Path]], shard_metrics: list[dict[str, Any]],
                  cfg: JudgeConfig) -> dict[str, Any]:
        paths = outputs.get("judge_scores", [])
        scores = (pl.read_parquet(paths, columns=["judge_mean", "judge_spread"]) if paths
                  else pl.DataFrame(schema={"judge_mean": pl.Float64, "judge_spread": pl.Float64}))
        totals = super().summarize(outputs, shard_metrics, cfg)
        return judging_metrics(cfg, self.shared["calibration"], scores.height, int(totals.get("judgments", 0)),
                               int(totals.get("parse_failures", 0)), scores)
