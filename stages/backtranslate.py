"""Self-Training by instruction backtranslation (Humpback): unlabeled passages become (instruction, answer).

1. **Self-augmentation**: for each passage (files of ``paths``, one passage per row in ``text_field``),
   the model, prompted as the backward model (template ``backtranslate/instruction@1``, with one worked
   example written for this project given as an earlier chat turn), writes the instruction the passage
   answers. The first line of the reply is the instruction; a reply cut at ``max_tokens`` after that line
   ended is fine.
2. **Self-curation**: the model scores each (instruction, passage) pair from 1 to 5; ``curate_k`` scores
   are averaged and pairs below ``min_score`` (4, as in the paper) are dropped. With ``structured`` (the
   default) the verdict is constrained JSON ``{"reason", "score": 1-5}`` (``backtranslate/curate-json@1``):
   the 135M model rarely ends free text with a score line. Otherwise it is free text
   (``backtranslate/curate@1``) parsed leniently like the judge's: ``Score: 4``, ``4/5``, ``**Score:** 4``.
   Measured: SmolLM2-135M scores every pair 1, matched or deliberately mismatched, in either format, so
   with the paper's threshold nothing survives; ``curate: false`` keeps every pair that passes the sanity
   filters instead (a documented choice for models too small to judge, not the paper's method).

Kept pairs become a ``tasks`` row (source ``backtranslated``, the generated instruction, empty input,
``parent_ids`` = [passage id]) and a ``samples`` row whose output is the passage itself (``producer``
``passage:<source>``, since a human wrote it, not the model), carrying ``curate_score`` and the raw
curation text.

Rejects, each with the raw text of the step that failed: passages that are too short or long, or that
overlap an eval suite (record kind ``passage``, raw = the passage); instructions that are ``truncated``,
``empty_instruction``, ``instruction_too_short`` / ``_too_long``, ``copies_passage`` (a verbatim run of
``copy_min_words`` words, or the whole instruction inside the passage), ``eval_overlap``, or
``duplicate`` (raw = the model's reply); and ``unparseable_score`` / ``low_score`` (raw = the curation
replies).
"""

from __future__ import annotations

import re
import statistics
from difflib import SequenceMatcher
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from factory.backends.base import ChatRequest, GenParams
from factory.context import StageContext
from factory.evaluation.decontam import find_overlaps
from factory.input_files import InputFileError, expand, read_rows
from factory.records import content_id, derived_seed, frame, lineage, normalize_text, reject, task_id
from factory.stage import StageConfig, StageOutput, register
from factory.structured import OutputConstraint
from stages.evol_instruct import parse_evolved
from stages.judge import JSON_OVERHEAD_TOKENS, parse_score, text_budget

_WORD = re.compile(r"[a-z0-9']+")

INSTRUCTION_TEMPLATE_ID = "backtranslate/instruction@1"
CURATE_TEMPLATE_ID = "backtranslate/curate@1"

INSTRUCTION_TEMPLATE = """Below is a text that was written as the answer to something a user asked an AI \
assistant. Write the user's request: one instruction or question, on one line, that this text answers \
well. Do not answer it, do not summarise the text, and do not mention "the text".

Text: {passage}"""
#: one worked example, given as an earlier turn of the chat (a small model copies a worked example's
#: topic when it sits inside the prompt, and its format when it is a turn)
EXAMPLE_PASSAGE = ("To get a stuck lid off a jar, run the lid under hot water for half a minute so the metal "
                   "expands, dry it, then grip it with a rubber glove or a tea towel for extra friction and twist.")
EXAMPLE_INSTRUCTION = "How can I open a jar whose lid is stuck?"

CURATE_TEMPLATE = """Below is an instruction from a user and a candidate answer. Rate how well the answer \
serves as an AI assistant's response to the instruction, from 1 to 5:
1: the answer is unrelated to the instruction or does not address it.
2: it touches the topic but misses what was asked.
3: it helps but is incomplete, or reads like a web page rather than a reply.
4: a relevant, helpful answer to this instruction, with small room for improvement.
5: a perfect answer: focused, complete and clearly a reply to this instruction.

Instruction: {instruction}

Answer: {passage}

Give a one-sentence reason, then end with the line "Score: N" where N is 1 to 5."""
CURATE_JSON_TEMPLATE_ID = "backtranslate/curate-json@1"
CURATE_JSON_TEMPLATE = CURATE_TEMPLATE.rsplit("\n\n", 1)[0] + """

Reply with a JSON object: {{"reason": "<one sentence>", "score": <1 to 5>}}"""


@lru_cache(maxsize=16)
def score_constraint(max_tokens: int) -> OutputConstraint:
    """``{"reason": str, "score": 1..5}``, the reason bounded so the JSON closes within ``max_tokens``."""
    return OutputConstraint.from_schema({
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": text_budget(max_tokens)},
                       "score": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["reason", "score"], "additionalProperties": False})


def instruction_messages(passage: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": INSTRUCTION_TEMPLATE.format(passage=EXAMPLE_PASSAGE)},
            {"role": "assistant", "content": EXAMPLE_INSTRUCTION},
            {"role": "user", "content": INSTRUCTION_TEMPLATE.format(passage=passage)}]


class BacktranslateConfig(StageConfig):
    kind: Literal["backtranslate"] = "backtranslate"
    paths: list[Path] = Field(min_length=1, description="files or folders of passages (.jsonl/.csv/.parquet)")
    text_field: str = "text"
    source_field: str = Field("source", description="column naming where a passage came from (its producer)")
    category_field: str = "category"
    default_category: str = "backtranslated"
    max_passages: int | None = Field(None, ge=1, description="use at most this many passages (a seeded choice)")
    min_passage_words: int = Field(20, ge=1)
    max_passage_words: int = Field(400, ge=1)
    params: GenParams = GenParams(max_tokens=48, temperature=0.7, top_p=0.95)
    curate_params: GenParams = GenParams(max_tokens=64, temperature=0.7, top_p=0.95)
    curate_k: int = Field(1, ge=1, le=8, description="curation scores per pair (averaged)")
    min_score: float = Field(4, ge=1, le=5, description="keep pairs whose mean curation score is at least this")
    curate: bool = Field(True, description="self-curate (score each pair, keep >= min_score); off keeps every pair "
                         "that passes the sanity filters, for models too small to judge (SmolLM2-135M scores "
                         "every pair 1, matched or not)")
    structured: bool = Field(True, description="constrained JSON curation verdicts ({reason, score 1-5}) instead "
                             "of free text parsed leniently")
    min_instruction_words: int = Field(3, ge=1)
    max_instruction_words: int = Field(60, ge=1)
    copy_min_words: int = Field(8, ge=2, description="a verbatim run this long from the passage is copying")
    decontaminate: bool = Field(True, description="drop passages and instructions that overlap an eval suite")

    produces = ("tasks", "samples")
    uses_backend = True

    @model_validator(mode="after")
    def _verdict_fits(self) -> BacktranslateConfig:
        if self.structured and self.curate_params.max_tokens < JSON_OVERHEAD_TOKENS + 8:
            raise ValueError(f"structured curation needs curate_params.max_tokens >= {JSON_OVERHEAD_TOKENS + 8}")
        if self.params.constraint is not None or self.curate_params.constraint is not None:
            raise ValueError("params.constraint is set by backtranslate itself (see `structured`); remove it")
        return self

    def score_of(self, text: str) -> float | None:
        if not self.structured:
            return parse_score(text, low=1, high=5)
        value = score_constraint(self.curate_params.max_tokens).parse(text)
        return None if value is None else float(value["score"])


def parse_instruction(text: str) -> str:
    """The instruction from the backward model's reply: first line, labels and quotes stripped."""
    text = text.replace("\r", "").strip()
    for label in ("instruction:", "user request:", "request:", "question:"):
        if text.lower().startswith(label):
            text = text[len(label):].strip()
            break
    text = parse_evolved(text)
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    if len(first) >= 2 and first[0] == first[-1] and first[0] in "\"'":
        first = first[1:-1].strip()
    return first


def copies_passage(instruction: str, passage: str, min_words: int) -> str | None:
    """Why the instruction copies the passage (a verbatim run of ``min_words`` words, or all of it), else None."""
    a, b = _WORD.findall(instruction.lower()), _WORD.findall(passage.lower())
    if not a:
        return None
    if normalize_text(instruction) in normalize_text(passage) and len(a) >= 3:
        return "the whole instruction is a span of the passage"
    match = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    if match.size >= min_words:
        return f"a verbatim run of {match.size} words from the passage: {' '.join(a[match.a:match.a + match.size])!r}"
    return None


def instruction_problem(text: str, finish_reason: str, passage: str, cfg: BacktranslateConfig,
                        first_line_done: bool = False, error: str | None = None) -> tuple[str, str] | None:
    """(reason, detail) when a generated instruction cannot be used, else None. A reply cut at max_tokens
    is fine when its first line, the instruction, ended before the cut."""
    if finish_reason == "error":
        return "model_error", error or "the backend gave no answer"
    if finish_reason == "length" and not first_line_done:
        return "truncated", f"the instruction hit max_tokens={cfg.params.max_tokens} before its line ended"
    if not text.strip():
        return "empty_instruction", "no instruction in the reply"
    n = len(text.split())
    if n < cfg.min_instruction_words:
        return "instruction_too_short", f"{n} words < {cfg.min_instruction_words}"
    if n > cfg.max_instruction_words:
        return "instruction_too_long", f"{n} words > {cfg.max_instruction_words}"
    copied = copies_passage(text, passage, cfg.copy_min_words)
    if copied:
        return "copies_passage", copied
    return None


def load_passages(cfg: BacktranslateConfig, ctx: StageContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(passages, rejects): rows with usable text, each with a content id; bad rows become rejects."""
    try:
        files = [(path, read_rows(path)) for path in expand(cfg.paths)]
    except InputFileError as exc:
        raise ValueError(f"stage {ctx.stage_name!r}: {exc}") from None
    passages: dict[str, dict[str, Any]] = {}
    rejects: list[dict[str, Any]] = []
    for path, rows in files:
        for line, row, raw, error in rows:
            where = {"source_file": str(path), "source_line": line, "raw": raw}
            text = row.get(cfg.text_field) if row is not None and error is None else None
            if error is None and not isinstance(text, str):
                error = f"field {cfg.text_field!r} is missing or not a string"
            if error is not None:
                rejects.append(reject(ctx, record_kind="passage", reason="bad_row", detail=f"{path}:{line}: {error}",
                                      **where))
                continue
            text = text.strip()
            source = str(row.get(cfg.source_field) or path.stem)
            pid = content_id("passage", normalize_text(text))
            n = len(text.split())
            why = (f"{n} words < {cfg.min_passage_words}" if n < cfg.min_passage_words else
                   f"{n} words > {cfg.max_passage_words}" if n > cfg.max_passage_words else
                   "the same passage appeared earlier" if pid in passages else None)
            if why is not None:
                reason = "duplicate" if pid in passages else "passage_length"
                rejects.append(reject(ctx, record_kind="passage", record_id=pid, reason=reason,
                                      detail=f"{path}:{line}: {why}", **where))
                continue
            passages[pid] = {"passage_id": pid, "text": text, "source": source,
                             "category": str(row.get(cfg.category_field) or cfg.default_category),
                             "where": f"{path}:{line}"}
    return list(passages.values()), rejects


@register(BacktranslateConfig)
def run(ctx: StageContext, cfg: BacktranslateConfig) -> StageOutput:
    passages, rejects = load_passages(cfg, ctx)
    passages.sort(key=lambda p: derived_seed(ctx.seed, "backtranslate-pick", p["passage_id"]))
    if cfg.max_passages is not None:
        passages = passages[:cfg.max_passages]
    records_in = len(passages) + len(rejects)  # the passages used (and the rows that could not be)
    if cfg.decontaminate and passages:
        hits = {o.row: o.describe() for o in find_overlaps([{"text": p["text"]} for p in passages])}
        for i in sorted(hits):
            p = passages[i]
            rejects.append(reject(ctx, record_kind="passage", record_id=p["passage_id"], reason="eval_overlap",
                                  raw=p["text"], detail=f"{p['where']}: {hits[i]}"))
        passages = [p for i, p in enumerate(passages) if i not in hits]
    model_id = ctx.backend.model_id if passages else ""

    # 1. self-augmentation: the instruction each passage answers
    requests = [ChatRequest.of(instruction_messages(p["text"]),
                               cfg.params.model_copy(update={"seed": derived_seed(ctx.seed, "bt", p["passage_id"])}))
                for p in passages]
    outs = ctx.generate(requests, description="instructions")
    candidates = []
    seen: set[str] = set()
    for p, req, out in zip(passages, requests, outs, strict=True):
        instruction = parse_instruction(out.text)
        tid = task_id(instruction) if instruction else None
        why = instruction_problem(instruction, out.finish_reason, p["text"], cfg,
                                  first_line_done="\n" in out.text.strip(), error=out.error)
        if why is None and tid in seen:
            why = ("duplicate", "another passage already gave this instruction")
        if why is not None:
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=tid, reason=why[0], raw=out.text,
                                  related_id=p["passage_id"], detail=f"passage {p['where']}: {why[1]}"))
            continue
        seen.add(tid)
        candidates.append({"passage": p, "instruction": instruction, "task_id": tid, "raw": out.text,
                           "params": req.params.model_dump()})
    if cfg.decontaminate and candidates:
        hits = {o.row: o.describe() for o in find_overlaps([{"instruction": c["instruction"]} for c in candidates])}
        for i in sorted(hits):
            c = candidates[i]
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=c["task_id"], reason="eval_overlap",
                                  raw=c["raw"], related_id=c["passage"]["passage_id"], detail=hits[i]))
        candidates = [c for i, c in enumerate(candidates) if i not in hits]

    # 2. self-curation: the model scores each (instruction, passage) pair
    jobs = []
    curated = candidates if cfg.curate else []
    constraint = score_constraint(cfg.curate_params.max_tokens) if cfg.structured else None
    curate_id, curate_template = ((CURATE_JSON_TEMPLATE_ID, CURATE_JSON_TEMPLATE) if cfg.structured
                                  else (CURATE_TEMPLATE_ID, CURATE_TEMPLATE))
    for c in curated:
        prompt = curate_template.format(instruction=c["instruction"], passage=c["passage"]["text"])
        for r in range(cfg.curate_k):
            params = cfg.curate_params.model_copy(update={"seed": derived_seed(ctx.seed, "curate", c["task_id"], r),
                                                          "constraint": constraint})
            jobs.append((c, ChatRequest.of([{"role": "user", "content": prompt}], params)))
    outs = ctx.generate([j[1] for j in jobs], description="self-curation")
    replies: dict[str, list[str]] = {}
    for (c, _), out in zip(jobs, outs, strict=True):
        replies.setdefault(c["task_id"], []).append(out.text)

    tasks, samples = [], []
    scores_seen: list[float] = []
    for c in candidates:
        raw = replies.get(c["task_id"], [])
        parsed = [s for s in (cfg.score_of(t) for t in raw) if s is not None]
        joined = "\n---\n".join(raw) if raw else None
        where = f"passage {c['passage']['where']}, instruction {c['instruction']!r}"
        score = statistics.fmean(parsed) if parsed else None
        if cfg.curate and score is None:
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=c["task_id"], reason="unparseable_score",
                                  raw=joined, related_id=c["passage"]["passage_id"],
                                  detail=f"{where}: no 1-5 score in {len(raw)} curation reply(ies)"))
            continue
        if score is not None:
            scores_seen.append(score)
        if score is not None and score < cfg.min_score:
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=c["task_id"], reason="low_score",
                                  raw=joined, related_id=c["passage"]["passage_id"], similarity=None,
                                  detail=f"{where}: curation score {score:.2f} < {cfg.min_score}"))
            continue
        p = c["passage"]
        tasks.append({"task_id": c["task_id"], "instruction": c["instruction"], "input": "", "gold_answer": None,
                      "category": p["category"], "source": "backtranslated", "op": "backtranslate",
                      "curate_score": None if score is None else round(score, 4),
                      **lineage(ctx, producer=model_id, parent_ids=[p["passage_id"]],
                                template_id=INSTRUCTION_TEMPLATE_ID, gen_params=c["params"])})
        samples.append({"sample_id": content_id("sample", c["task_id"], f"passage:{p['source']}", p["passage_id"]),
                        "task_id": c["task_id"], "sample_index": 0, "instruction": c["instruction"], "input": "",
                        "category": p["category"], "output": p["text"], "finish_reason": "stop",
                        "prompt_tokens": 0, "completion_tokens": 0,
                        "curate_score": None if score is None else round(score, 4),
                        "curate_raw": joined, "curate_template_id": curate_id if cfg.curate else None,
                        **lineage(ctx, producer=f"passage:{p['source']}", parent_ids=[c["task_id"], p["passage_id"]],
                                  gen_params=cfg.curate_params.model_copy(update={"constraint": constraint})
                                  .model_dump())})
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    ctx.log(f"{len(tasks)} (instruction, passage) pairs kept of {len(passages)} passages "
            f"({len(curated)} instructions curated, min_score {cfg.min_score})")
    return StageOutput(tables={"tasks": frame("task", tasks), "samples": frame("sample", samples)},
                       rejects=rejects, records_in=records_in,
                       metrics={"passages": len(passages), "instructions": len(candidates), "kept": len(tasks),
                                "curate_score_mean": round(statistics.fmean(scores_seen), 4) if scores_seen else None,
                                "reject_reasons": reasons})
