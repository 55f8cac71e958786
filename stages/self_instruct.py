"""Self-Instruct bootstrap: the model invents new tasks from demonstrations drawn from a growing pool.

Each prompt shows demonstrations of one category (default 6 human seeds + 2 machine-made tasks), asks
for more, and the numbered list that comes back is parsed, filtered by rules (length, blocked words,
truncation, non-ASCII start, dangling references) and by novelty: a candidate whose ROUGE-L to any
task in the whole pool exceeds the threshold is rejected, with the nearest task and score recorded.
Accepted tasks join the pool at once. The loop ends at a target count or a budget of model calls.
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from factory.backends.base import ChatRequest, Completion, GenParams
from factory.context import StageContext
from factory.records import frame, lineage, reject, task_id
from factory.similarity import RougePool
from factory.stage import StageConfig, StageOutput, register
from factory.structured import OutputConstraint

TEMPLATE_ID = "self_instruct/bootstrap@1"
JSON_TEMPLATE_ID = "self_instruct/bootstrap-json@1"
PROMPT = """Come up with {k} new, diverse tasks in the category "{category}". Each task is one \
instruction that an AI assistant can answer with text alone, written on a single line.

Here are some examples:
{demos}

Write {k} new tasks that are different from the examples, as a numbered list starting at {next}."""

JSON_PROMPT = PROMPT.rsplit("\n\n", 1)[0] + """

Write {k} new tasks that are different from the examples. Reply with a JSON object: \
{{"tasks": [{{"instruction": "<the task>", "input": "<text it works on, or empty>", "category": "{category}"}}]}}"""

BLOCKED = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
           "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]
DANGLING = re.compile(r"\b(the following|the above|above|given (text|paragraph|passage|sentence|list|code)|below|"
                      r"this (text|paragraph|passage|sentence|list|code))\b", re.I)
ITEM = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*\u2022]|(?:task|instruction)\s*\d*\s*[:.])\s*(.*\S)\s*$", re.I)
INLINE_NUMBER = re.compile(r"(?<=\S)\s+(?=\d{1,3}[.)]\s+[A-Za-z])")
LEAD_IN = re.compile(r"^(here (is|are)|the \w+ task is|sure\b)", re.I)
PREFIX = re.compile(r"^(?:task|instruction|new task)\s*\d*\s*[:.-]\s*", re.I)


class SelfInstructConfig(StageConfig):
    kind: Literal["self_instruct"] = "self_instruct"
    target_tasks: int = Field(20, ge=1, description="stop after accepting this many new tasks")
    max_calls: int = Field(40, ge=1, description="budget of model calls")
    seed_demos: int = Field(6, ge=0)
    machine_demos: int = Field(2, ge=0)
    tasks_per_call: int = Field(4, ge=1, description="how many new tasks each prompt asks for")
    prompts_per_batch: int = Field(8, ge=1, description="prompts sent together between pool updates")
    rouge_threshold: float = Field(0.7, gt=0, le=1)
    min_words: int = Field(3, ge=1)
    max_words: int = Field(60, ge=1)
    blocked_words: list[str] = Field(default_factory=lambda: list(BLOCKED))
    params: GenParams = GenParams(max_tokens=200, temperature=0.9, top_p=0.95)
    # left out of dumps at their defaults: the config hash (so the run id, which seeds the demo sampling)
    # of a pipeline written before these existed stays the same, and its cached calls still hit
    structured: bool = Field(False, exclude_if=lambda v: v is False,
                             description="ask for a JSON list of {instruction, input, category} under a "
                             "schema instead of parsing a numbered list")
    instruction_chars: int = Field(200, ge=20, exclude_if=lambda v: v == 200,
                                   description="maxLength of a structured task's instruction")
    input_chars: int = Field(200, ge=0, exclude_if=lambda v: v == 200,
                             description="maxLength of a structured task's input")

    consumes = ("tasks",)
    produces = ("tasks",)
    uses_backend = True

    @model_validator(mode="after")
    def _schema_compiles(self) -> SelfInstructConfig:
        if self.params.constraint is not None:
            raise ValueError("params.constraint is set by self_instruct itself (see `structured`); remove it")
        tasks_constraint(self, ["placeholder"])  # a schema that cannot compile fails now, before the model loads
        return self


def tasks_constraint(cfg: SelfInstructConfig, categories: list[str]) -> OutputConstraint:
    """``{"tasks": [{"instruction", "input", "category"}]}``: at most ``tasks_per_call`` tasks, bounded
    strings (so the JSON closes within ``max_tokens``), and a category from the pool."""
    task = {"type": "object",
            "properties": {"instruction": {"type": "string", "minLength": 1, "maxLength": cfg.instruction_chars},
                           "input": {"type": "string", "maxLength": cfg.input_chars},
                           "category": {"type": "string", "enum": sorted(categories)}},
            "required": ["instruction", "input", "category"], "additionalProperties": False}
    return OutputConstraint.from_schema({
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": task, "minItems": 1, "maxItems": cfg.tasks_per_call}},
        "required": ["tasks"], "additionalProperties": False})


def parse_json_tasks(text: str, constraint: OutputConstraint) -> list[dict[str, str]] | None:
    """The tasks of a structured answer, stripped, or None when the answer violates the schema."""
    value = constraint.parse(text)
    if value is None:
        return None
    return [{"instruction": t["instruction"].strip(), "input": t["input"].strip(), "category": t["category"]}
            for t in value["tasks"]]


def parse_numbered_list(text: str) -> list[str]:
    """Candidate instructions from a model's numbered (or bulleted) list; [] when there is no list."""
    text = INLINE_NUMBER.sub("\n", text.replace("\r", ""))
    items = []
    for line in text.split("\n"):
        match = ITEM.match(line)
        if match:
            item = PREFIX.sub("", match.group(1)).strip().strip('"').strip()
            if item:
                items.append(item)
    return items


def rule_violation(text: str, cfg: SelfInstructConfig, has_input: bool = False) -> tuple[str, str] | None:
    """(reason, detail) when a candidate breaks a rule filter, else None (a task that carries its own
    input may refer to "the following text")."""
    words = text.split()
    if len(words) < cfg.min_words:
        return "too_short", f"{len(words)} words < {cfg.min_words}"
    if len(words) > cfg.max_words:
        return "too_long", f"{len(words)} words > {cfg.max_words}"
    lowered = f" {text.lower()} "
    for word in cfg.blocked_words:
        if re.search(rf"\b{re.escape(word.lower())}\b", lowered):
            return "blocked_word", f"contains {word!r}"
    if not text[0].isascii() or not (text[0].isalnum()):
        return "non_ascii_start", f"starts with {text[0]!r}"
    if text.lower().startswith(("write a program", "write a code")) and len(words) < 5:
        return "too_vague", "program request without a subject"
    if text.rstrip().endswith((":", ",", ";")) or LEAD_IN.match(text):
        return "incomplete", "a lead-in, not a task"
    if not has_input and DANGLING.search(text):
        return "dangling_reference", "refers to an input the task does not carry"
    return None


@register(SelfInstructConfig)
def run(ctx: StageContext, cfg: SelfInstructConfig) -> StageOutput:
    pool_df = ctx.inputs("tasks")
    if pool_df.is_empty():
        raise ValueError(f"stage {ctx.stage_name!r}: no tasks to bootstrap from (put a `seeds` stage first)")
    pool_rows: list[dict[str, Any]] = pool_df.to_dicts()
    categories = sorted({r["category"] for r in pool_rows})
    novelty = RougePool((r["task_id"], r["instruction"]) for r in pool_rows)
    model_id = ctx.backend.model_id
    constraint = tasks_constraint(cfg, categories) if cfg.structured else None
    template_id, template = (JSON_TEMPLATE_ID, JSON_PROMPT) if cfg.structured else (TEMPLATE_ID, PROMPT)
    gen_params = cfg.params.model_copy(update={"constraint": constraint}).model_dump()
    accepted: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    calls = candidates = recategorised = 0
    with ctx.progress("tasks accepted", total=cfg.target_tasks) as advance:
        while len(accepted) < cfg.target_tasks and calls < cfg.max_calls:
            batch = []
            for _ in range(min(cfg.prompts_per_batch, cfg.max_calls - calls)):
                rng = random.Random(f"{ctx.seed}/{ctx.run_id}/{ctx.stage_name}/{calls}")
                category = categories[calls % len(categories)]
                demos = sample_demos(pool_rows, category, cfg, rng)
                prompt = template.format(k=cfg.tasks_per_call, category=category, next=len(demos) + 1,
                                         demos="\n".join(f"{i}. {d['instruction']}" for i, d in enumerate(demos, 1)))
                params = cfg.params.model_copy(update={"seed": rng.randrange(2**31), "constraint": constraint})
                batch.append((category, demos, ChatRequest.of([{"role": "user", "content": prompt}], params)))
                calls += 1
            outs = ctx.generate([b[2] for b in batch], description=f"prompts (call {calls}/{cfg.max_calls})")
            for (category, demos, _), out in zip(batch, outs, strict=True):
                items = _candidates(out, category, constraint)
                if out.finish_reason == "error" or not items:
                    reason = "model_error" if out.finish_reason == "error" else "unparseable"
                    if reason == "unparseable" and constraint is not None:
                        detail = _violation(out.text, constraint, out.finish_reason)
                    else:
                        detail = out.error or "no numbered list in the model's answer"
                    rejects.append(reject(ctx, record_kind="model_output", reason=reason, raw=out.text, detail=detail))
                    continue
                if out.finish_reason == "length" and constraint is None:  # the last item may be cut mid-sentence
                    rejects.append(reject(ctx, record_kind="task_candidate", reason="truncated",
                                          raw=items[-1]["instruction"], detail="last item of an answer that hit "
                                          "max_tokens"))
                    items = items[:-1]
                for item in items:
                    text, task_input = item["instruction"], item["input"]
                    recategorised += item["category"] != category
                    candidates += 1
                    tid = task_id(text)
                    if len(accepted) >= cfg.target_tasks:
                        rejects.append(reject(ctx, record_kind="task_candidate", reason="target_reached",
                                              raw=text, record_id=tid, detail="target count already met"))
                        continue
                    broken = rule_violation(text, cfg, has_input=bool(task_input))
                    if broken:
                        rejects.append(reject(ctx, record_kind="task_candidate", reason=broken[0], raw=text,
                                              record_id=tid, detail=broken[1]))
                        continue
                    score, nearest = novelty.nearest(text)
                    if score > cfg.rouge_threshold:
                        rejects.append(reject(ctx, record_kind="task_candidate", reason="too_similar", raw=text,
                                              record_id=tid, related_id=nearest, similarity=round(score, 4),
                                              detail=f"ROUGE-L {score:.3f} > {cfg.rouge_threshold} to {nearest}"))
                        continue
                    task = {"task_id": tid, "instruction": text, "input": task_input, "gold_answer": None,
                            "category": item["category"], "source": "self_instruct", "op": "bootstrap",
                            "novelty_score": round(score, 4), "novelty_nearest_id": nearest,
                            **lineage(ctx, producer=model_id, parent_ids=[d["task_id"] for d in demos],
                                      template_id=template_id, gen_params=gen_params)}
                    accepted.append(task)
                    pool_rows.append(task)
                    novelty.add(tid, text)
                    advance(1)
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    ctx.log(f"{len(accepted)} tasks accepted from {candidates} candidates in {calls} calls")
    return StageOutput(tables={"tasks": frame("task", accepted)}, rejects=rejects, records_in=len(pool_df),
                       metrics={"calls": calls, "candidates": candidates, "reject_reasons": reasons,
                                "structured": cfg.structured, "recategorised": recategorised})


def _candidates(out: Completion, category: str, constraint: OutputConstraint | None) -> list[dict[str, str]]:
    """Candidate tasks of one answer: the JSON tasks under a constraint, else the numbered list's items."""
    if constraint is not None:
        return parse_json_tasks(out.text, constraint) or []
    return [{"instruction": t, "input": "", "category": category} for t in parse_numbered_list(out.text)]


def _violation(text: str, constraint: OutputConstraint, finish_reason: str) -> str:
    try:
        constraint.check(text)
    except ValueError as exc:
        cut = " (the answer hit max_tokens before the JSON closed)" if finish_reason == "length" else ""
        return f"answer violates the task schema: {exc}{cut}"
    return "no tasks in the answer"


def sample_demos(pool: list[dict[str, Any]], category: str, cfg: SelfInstructConfig,
                 rng: random.Random) -> list[dict[str, Any]]:
    """Demonstrations of one category: human seeds first (inputless preferred), then machine tasks."""
    in_cat = [r for r in pool if r["category"] == category]
    seeds = [r for r in in_cat if r["source"] == "seed"]
    seeds.sort(key=lambda r: bool(r["input"]))  # tasks that stand alone teach the format best
    plain = [r for r in seeds if not r["input"]]
    chosen = rng.sample(plain, min(cfg.seed_demos, len(plain)))
    if len(chosen) < cfg.seed_demos:
        rest = [r for r in seeds if r["input"]]
        chosen += rng.sample(rest, min(cfg.seed_demos - len(chosen), len(rest)))
    machine = [r for r in in_cat if r["source"] != "seed"]
    chosen += rng.sample(machine, min(cfg.machine_demos, len(machine)))
    if not chosen:  # a category with no demos of its own borrows from the whole pool
        chosen = rng.sample(pool, min(cfg.seed_demos + cfg.machine_demos, len(pool)))
    rng.shuffle(chosen)
    return chosen
