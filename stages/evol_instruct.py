"""Evol-Instruct (WizardLM): the model rewrites kept tasks into harder or new ones, and weak rewrites die.

Each parent task (of the configured ``sources``) is evolved once, with one operation drawn from the run
seed and the task id (so a rerun draws the same): **in-depth** (``add_constraints``, ``deepen``,
``concretize``, ``increase_reasoning``, ``complicate_input``) makes the task harder; **in-breadth**
(``breadth``, rarer by default) writes a new task in the same domain. Templates are versioned
(``evol/<op>@1``) and were written for this project.

The elimination filter drops, with the raw text and a reason code:

- ``truncated`` / ``empty`` / ``too_short`` / ``too_long``: the rewrite hit ``max_tokens`` (unless the
  model had already moved on to answering it: "Answer: …" is cut off, the task is whole) or has the
  wrong length;
- ``copies_prompt``: it copies the evolving prompt's own words ("new task:", "given prompt",
  "#Rewritten Prompt#"…), the paper's fourth rule;
- ``no_information_gain``: it is the parent again (same text after normalising, ROUGE-L to the parent
  >= ``gain_threshold``, or no word the parent lacks). The paper asks ChatGPT whether the two are
  equal; a 135M model cannot judge that, so the check is lexical;
- ``duplicate``: another parent (or a pool task) already became this exact task;
- the model **fails to answer** it (optional, ``check_answer``): the paper judges this on the evolved
  task's answer, so the stage answers each survivor once (``answer_params``, short) and drops it when
  the answer is empty (``answer_empty``), a refusal, "sorry"/"as an AI" in fewer than
  ``refusal_max_words`` words (``answer_refusal``, the paper's rule), only punctuation and stop words
  (``answer_no_content``), or cut at ``max_tokens`` with fewer than ``min_answer_words`` words
  (``answer_degenerate``). A complete answer (it stopped by itself, and self-labelling's echo rule
  passes) is kept as a ``samples`` row, so the evolved task is SFT data without another pass.
- ``eval_overlap``: the evolved task overlaps an eval suite (``factory.evaluation.decontam``).

Kept tasks: source ``evol``, ``op`` = the operation, ``parent_ids`` = [parent task id], the parent's
category, ``evol_depth`` = the parent's depth + 1.
"""

from __future__ import annotations

import random
import re
from functools import cache
from typing import Any, Literal

from pydantic import Field, field_validator

from factory.backends.base import ChatRequest, GenParams
from factory.context import StageContext
from factory.evaluation.decontam import find_overlaps
from factory.records import content_id, derived_seed, frame, lineage, normalize_text, reject, task_id, task_prompt
from factory.similarity import rouge_l
from factory.stage import StageConfig, StageOutput, register
from stages.self_label import TEMPLATE_ID as ANSWER_TEMPLATE_ID
from stages.self_label import SelfLabelConfig, problem

IN_DEPTH = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
IN_BREADTH = ("breadth",)
OPS = IN_DEPTH + IN_BREADTH

_DEPTH_HEAD = """I want you to rewrite a task for an AI assistant so that it is harder to answer well. \
The rewritten task must still make sense on its own, be answerable with text alone, and keep the \
topic of the original. {how} Add at most {words} words to the original. Do not answer the task."""

_BREADTH_HEAD = """I want you to invent a brand-new task for an AI assistant, taking the task below \
as inspiration. The new task must belong to the same domain but be about a different, less common \
topic, with about the same length and difficulty. It must make sense on its own and be answerable \
with text alone. Do not answer it."""

_TAIL = """

Original task:
{task}

Reply with the new task only, starting with "New task:"."""

HOW = {
    "add_constraints": "Add one more requirement the answer must meet: a word limit, a format, an audience, "
                       "or something it must mention.",
    "deepen": "Ask about the topic in more depth: for reasons, causes, trade-offs or consequences instead "
              "of a plain fact.",
    "concretize": "Replace general ideas with specific, concrete ones: a named situation, a particular "
                  "object, a real setting.",
    "increase_reasoning": "Make the task need several explicit steps of reasoning, and ask for the steps "
                          "to be shown.",
    "complicate_input": "Give the task a short concrete input to work on, such as a small table, a list, "
                        "or a few lines of text, and make the instruction use it.",
}

TEMPLATES: dict[str, str] = {op: _DEPTH_HEAD.replace("{how}", how) + _TAIL for op, how in HOW.items()}
TEMPLATES["breadth"] = _BREADTH_HEAD + _TAIL


def template_id(op: str) -> str:
    return f"evol/{op}@1"


#: the evolving prompt's own words, and the WizardLM prompt's; a rewrite that contains them copied the prompt
COPY_PHRASES = ["new task:", "original task", "rewritten task", "rewritten prompt", "given prompt",
                "#rewritten prompt#", "#given prompt#", "#created prompt#", "created prompt", "the task above",
                "add at most", "do not answer the task"]
#: a label the model puts before the rewrite, as it was asked to ("New task:") or in its own words; stripped
_LABEL = re.compile(r"^\s*(?:(?:sure|okay|ok|here)\b[^:\n]{0,40}?)?[#*\s]*(?:(?:the|a|my|your)\s+)?"
                    r"(?:new|rewritten|evolved|created|harder)\s+(?:task|prompt|instruction)\s*[#*]*\s*[:\-]\s*[#*]*\s*",
                    re.I)
#: a lead-in on a line of its own ("Sure! Here it is:")
_LEAD_IN = re.compile(r"^\s*(?:sure|okay|ok|here)\b[^\n]{0,60}:\s*\n", re.I)
#: where a model goes on to answer its own task
_ANSWER_START = re.compile(r"^\s*[#*]*\s*(?:answer|response|solution|output)\s*[#*]*\s*:", re.I | re.M)
REFUSAL = re.compile(r"\b(sorry|as an ai\b|i cannot|i can't|i am unable|i'm unable|i apologi[sz]e)", re.I)
_WORD = re.compile(r"[A-Za-z0-9]+")


class EvolInstructConfig(StageConfig):
    kind: Literal["evol_instruct"] = "evol_instruct"
    sources: list[str] | None = Field(None, description="evolve only tasks of these sources (default: all)")
    max_tasks: int | None = Field(None, ge=1, description="evolve at most this many parents (a seeded choice)")
    ops: dict[str, float] = Field(
        default_factory=lambda: {**dict.fromkeys(IN_DEPTH, 1.0), "breadth": 0.5},
        description="operation -> weight of the seeded draw (in-breadth is rarer by default)")
    params: GenParams = GenParams(max_tokens=128, temperature=0.7, top_p=0.95)
    max_added_words: int = Field(20, ge=1, description="the prompt asks for at most this many added words")
    min_words: int = Field(4, ge=1)
    max_words: int = Field(150, ge=1)
    gain_threshold: float = Field(0.9, gt=0, le=1, description="ROUGE-L to the parent at which a rewrite "
                                  "counts as no information gain")
    copy_phrases: list[str] = Field(default_factory=lambda: list(COPY_PHRASES))
    check_answer: bool = Field(True, description="answer each evolved task once and drop those the model "
                               "fails to answer (the paper's second rule)")
    answer_params: GenParams = GenParams(max_tokens=128, temperature=0.7, top_p=0.95)
    min_answer_words: int = Field(5, ge=1, description="an answer cut at max_tokens with fewer words is degenerate")
    refusal_max_words: int = Field(80, ge=1, description="'sorry' in an answer shorter than this is a refusal")
    emit_samples: bool = Field(True, description="keep complete check answers as samples of the evolved tasks")
    decontaminate: bool = Field(True, description="drop evolved tasks that overlap an eval suite")

    consumes = ("tasks",)
    produces = ("tasks", "samples")
    uses_backend = True

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise ValueError(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(OPS)}")
        if any(w < 0 for w in ops.values()) or not any(w > 0 for w in ops.values()):
            raise ValueError("operation weights must be >= 0 with at least one > 0")
        return ops


def choose_op(seed: int, parent_id: str, ops: dict[str, float]) -> str:
    """The operation for one parent: a weighted draw from the run seed and the task id (reproducible)."""
    names = [op for op in OPS if ops.get(op, 0) > 0]
    rng = random.Random(derived_seed(seed, "evol-op", parent_id))
    return rng.choices(names, weights=[ops[n] for n in names], k=1)[0]


def evol_prompt(op: str, parent: dict[str, Any], max_added_words: int) -> str:
    return TEMPLATES[op].format(task=task_prompt(parent), words=max_added_words)


def parse_evolved(text: str) -> str:
    """The rewritten task from a model's reply: the "New task:" label and quotes stripped, cut where the
    model starts answering its own task."""
    text = text.replace("\r", "").strip()
    text = _LABEL.sub("", _LEAD_IN.sub("", text, count=1), count=1).strip()
    cut = _ANSWER_START.search(text)
    if cut:
        text = text[:cut.start()].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


@cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (installed with sentence-transformers), loaded on first use."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def task_ended(reply: str) -> bool:
    """Whether the model went on to answer its own task ("Answer: …"), so the task itself ended in full
    even if the reply was cut at max_tokens."""
    return _ANSWER_START.search(_LABEL.sub("", reply.replace("\r", "").strip(), count=1)) is not None


def elimination(evolved: str, parent_text: str, finish_reason: str, cfg: EvolInstructConfig,
                ended: bool = False, error: str | None = None) -> tuple[str, str] | None:
    """(reason, detail) when an evolved task is eliminated before it is answered, else None."""
    if finish_reason == "error":
        return "model_error", error or "the backend gave no answer"
    if finish_reason == "length" and not ended:
        return "truncated", f"the rewrite hit max_tokens={cfg.params.max_tokens}"
    if not evolved.strip():
        return "empty", "no task in the reply"
    n = len(evolved.split())
    if n < cfg.min_words:
        return "too_short", f"{n} words < {cfg.min_words}"
    if n > cfg.max_words:
        return "too_long", f"{n} words > {cfg.max_words}"
    lowered = evolved.lower()
    for phrase in cfg.copy_phrases:
        if phrase.lower() in lowered:
            return "copies_prompt", f"contains the evolving prompt's words {phrase!r}"
    if normalize_text(evolved) == normalize_text(parent_text):
        return "no_information_gain", "the same text as its parent"
    score = rouge_l(parent_text, evolved)
    if score >= cfg.gain_threshold:
        return "no_information_gain", f"ROUGE-L {score:.3f} to its parent >= {cfg.gain_threshold}"
    if not set(_words(evolved)) - set(_words(parent_text)):
        return "no_information_gain", "adds no word its parent lacks"
    return None


def answer_failure(text: str, finish_reason: str, cfg: EvolInstructConfig,
                   error: str | None = None) -> tuple[str, str] | None:
    """(reason, detail) when the model fails to answer the evolved task, else None."""
    if finish_reason == "error":
        return "model_error", error or "the backend gave no answer"
    words = text.split()
    if not words:
        return "answer_empty", "the model's answer is empty"
    if REFUSAL.search(text) and len(words) < cfg.refusal_max_words:
        return "answer_refusal", f"a refusal ({REFUSAL.search(text).group(0)!r}) in {len(words)} words"
    content = [w for w in _words(text) if w not in stop_words()]
    if not content:
        return "answer_no_content", "the answer is only punctuation and stop words"
    if finish_reason == "length" and len(words) < cfg.min_answer_words:
        return "answer_degenerate", (f"cut at max_tokens={cfg.answer_params.max_tokens} with {len(words)} words "
                                     f"< {cfg.min_answer_words}")
    return None


def _overlapping(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Row index -> what it overlaps in the eval suites."""
    return {o.row: o.describe() for o in find_overlaps(rows)}


@register(EvolInstructConfig)
def run(ctx: StageContext, cfg: EvolInstructConfig) -> StageOutput:
    pool = ctx.inputs("tasks")
    parents_df = pool.filter(pool["source"].is_in(cfg.sources)) if cfg.sources is not None else pool
    parents = sorted(parents_df.to_dicts(), key=lambda t: derived_seed(ctx.seed, "evol-pick", t["task_id"]))
    if cfg.max_tasks is not None:
        parents = parents[:cfg.max_tasks]
    model_id = ctx.backend.model_id if parents else ""
    jobs = []
    for parent in parents:
        op = choose_op(ctx.seed, parent["task_id"], cfg.ops)
        params = cfg.params.model_copy(update={"seed": derived_seed(ctx.seed, "evol", parent["task_id"], op)})
        prompt = evol_prompt(op, parent, cfg.max_added_words)
        jobs.append((parent, op, ChatRequest.of([{"role": "user", "content": prompt}], params)))
    outs = ctx.generate([j[2] for j in jobs], description="evolving")

    known = set(pool["task_id"].to_list())
    rejects: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    for (parent, op, req), out in zip(jobs, outs, strict=True):
        evolved = parse_evolved(out.text)
        tid = task_id(evolved) if evolved else None
        why = elimination(evolved, task_prompt(parent), out.finish_reason, cfg, ended=task_ended(out.text),
                          error=out.error)
        if why is None and tid in known:
            why = ("duplicate", "the same task as one already in the pool or evolved from another parent")
        if why is not None:
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=tid, reason=why[0], raw=out.text,
                                  related_id=parent["task_id"], detail=f"{op} of {parent['task_id']}: {why[1]}"))
            continue
        known.add(tid)
        candidates.append({
            "task_id": tid, "instruction": evolved, "input": "", "gold_answer": None,
            "category": parent["category"], "source": "evol", "op": op,
            "novelty_score": round(rouge_l(task_prompt(parent), evolved), 4), "novelty_nearest_id": parent["task_id"],
            "evol_depth": int(parent.get("evol_depth") or 0) + 1,
            **lineage(ctx, producer=model_id, parent_ids=[parent["task_id"]], template_id=template_id(op),
                      gen_params=req.params.model_dump())})

    if cfg.decontaminate and candidates:
        hits = _overlapping(candidates)
        for i in sorted(hits):
            c = candidates[i]
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=c["task_id"], reason="eval_overlap",
                                  raw=c["instruction"], related_id=c["parent_ids"][0], detail=hits[i]))
        candidates = [c for i, c in enumerate(candidates) if i not in hits]

    kept, samples = candidates, []
    if cfg.check_answer and candidates:
        kept, samples = _answer_check(ctx, cfg, candidates, model_id, rejects)
    ops_kept: dict[str, int] = {}
    for t in kept:
        ops_kept[t["op"]] = ops_kept.get(t["op"], 0) + 1
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    ctx.log(f"{len(kept)} evolved tasks kept of {len(jobs)} parents ({len(samples)} answers kept as samples)")
    tables = {"tasks": frame("task", kept), "samples": frame("sample", samples)}
    return StageOutput(tables=tables, rejects=rejects, records_in=len(parents),
                       metrics={"parents": len(parents), "kept_by_op": ops_kept, "reject_reasons": reasons,
                                "answer_checked": cfg.check_answer})


def _answer_check(ctx: StageContext, cfg: EvolInstructConfig, candidates: list[dict[str, Any]], model_id: str,
                  rejects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Answer every candidate once; drop the ones the model fails to answer, keep good answers as samples."""
    requests = [ChatRequest.of([{"role": "user", "content": task_prompt(c)}],
                               cfg.answer_params.model_copy(update={"seed": derived_seed(ctx.seed, c["task_id"], 0)}))
                for c in candidates]
    outs = ctx.generate(requests, description="answer check")
    label_cfg = SelfLabelConfig(params=cfg.answer_params)
    kept, samples = [], []
    for c, req, out in zip(candidates, requests, outs, strict=True):
        failed = answer_failure(out.text, out.finish_reason, cfg, error=out.error)
        if failed is not None:
            rejects.append(reject(ctx, record_kind="task_candidate", record_id=c["task_id"], reason=failed[0],
                                  raw=c["instruction"], related_id=c["parent_ids"][0],
                                  detail=f"{failed[1]}; answer: {out.text[:300]!r}"))
            continue
        kept.append(c)
        if not cfg.emit_samples:
            continue
        params = req.params.model_dump()
        sid = content_id("sample", c["task_id"], model_id, params, 0, out.text)
        bad = problem(out.text, out.finish_reason, c, label_cfg)
        if bad is not None:  # the task stays; this answer is not good SFT data (self_label's rules)
            rejects.append(reject(ctx, record_kind="sample", record_id=sid, reason=bad[0], raw=out.text,
                                  related_id=c["task_id"], detail=f"answer check of {c['task_id']}: {bad[1]}"))
            continue
        samples.append({"sample_id": sid, "task_id": c["task_id"], "sample_index": 0, "instruction": c["instruction"],
                        "input": c["input"], "category": c["category"], "output": out.text,
                        "finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
                        "completion_tokens": out.completion_tokens,
                        **lineage(ctx, producer=model_id, parent_ids=[c["task_id"]], template_id=ANSWER_TEMPLATE_ID,
                                  gen_params=params)})
    return kept, samples
