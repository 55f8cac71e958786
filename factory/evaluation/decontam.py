"""Decontamination: training data must share nothing with the eval suites; any overlap fails loudly.

The generators already keep the train and eval streams disjoint (``problems``); this is the guard for
any training data, wherever it came from (a release, a JSONL file, a generator with a bug). Texts are
compared after normalising (lower case, words, numbers and arithmetic signs; punctuation dropped). A training row
overlaps an eval item when one of its texts

- **equals** an eval prompt (``exact_prompt``);
- poses one of the eval's **arithmetic problems** in any wording of the expression (``663 + 189``,
  ``189 plus 663``, ``66 × 4``; operands of + and × in either order) or one of its **word problems**
  (same template and numbers, any names) (``arithmetic``);
- **contains** a whole short eval text of 4+ words: a held-out question, an instruction-following topic
  (``contains_prompt``);
- shares a word **n-gram** (8 words by default) with a held-out question or reference answer (``ngram``;
  n-grams found in 3+ eval texts are phrasing, not content, and do not count).

Generated items are matched by their problem (numbers, topic), not by n-grams: their templates are
shared with the train stream on purpose, so template n-grams are not contamination.

``assert_decontaminated(rows)`` raises :class:`ContaminationError` naming the first overlaps;
``check_release("NAME@VERSION")`` runs it on a release's sft and preference rows (``factory decontam``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import polars as pl

from factory.evaluation import problems
from factory.evaluation.nll import load_heldout

DEFAULT_NGRAM = 8
MIN_SHORT_PROMPT = 4
_TOKEN = re.compile(r"[^\W_]+|[-+−×*/=<>%$]")
_EXPRESSION = re.compile(r"(\d+)\s*(\+|×|\*|\bplus\b|\btimes\b|\bmultiplied by\b)\s*(\d+)"
                         r"|(\d+)\s+(-|−|\bminus\b)\s+(\d+)", re.I)
TEXT_FIELDS = ("instruction", "input", "output", "prompt", "chosen", "rejected", "response", "answer",
               "completion", "gold_answer", "text")


class ContaminationError(ValueError):
    """Training data overlaps the eval suites; the message names the rows and the eval items."""


@dataclass(frozen=True)
class EvalText:
    """One text of an eval item (its prompt or its reference answer)."""

    suite: str
    item_id: str
    field: str  # prompt | reference
    text: str


@dataclass(frozen=True)
class Overlap:
    row: int  # index of the training row
    field: str  # the training row's field
    reason: str  # exact_prompt | contains_prompt | ngram | arithmetic
    suite: str
    item_id: str
    match: str  # the shared text

    def describe(self) -> str:
        return f"row {self.row} field {self.field!r}: {self.reason} with {self.suite} item {self.item_id}: " \
               f"{self.match[:80]!r}"


def normalize(text: str) -> list[str]:
    """Lower-cased words and numbers, plus the arithmetic signs (so ``3 + 4`` and ``3 - 4`` differ)."""
    return _TOKEN.findall(text.lower())


def ngrams(words: list[str], n: int) -> list[str]:
    """The word n-grams in text order (so the first match reported is the same on every run)."""
    return list(dict.fromkeys(" ".join(words[i:i + n]) for i in range(len(words) - n + 1)))


def _template_regex(text: str) -> re.Pattern[str]:
    """A word template as a regex: numbers captured in order, names and things any word."""
    out = []
    for part in re.split(r"(\{\w+\})", text):
        if part in ("{a}", "{b}", "{c}"):
            out.append(r"(\d+)")
        elif part.startswith("{"):
            out.append(r"[\w'-]+")
        else:
            out.append(re.escape(part).replace("\\ ", r"\s+"))
    return re.compile("".join(out), re.I)


WORD_PATTERNS = [_template_regex(t.text) for t in problems.WORD_TEMPLATES]


def problem_keys(text: str) -> set[str]:
    """The canonical keys (``add:189:663``, ``word:2:4:17``) of every arithmetic problem posed in ``text``."""
    keys = set()
    for m in _EXPRESSION.finditer(text):
        if m.group(1):
            a, op, b = int(m.group(1)), m.group(2).lower(), int(m.group(3))
            kind = "add" if op in ("+", "plus") else "mul"
            keys.add(f"{kind}:{min(a, b)}:{max(a, b)}")
        else:
            keys.add(f"sub:{int(m.group(4))}:{int(m.group(6))}")
    for t, pattern in enumerate(WORD_PATTERNS):
        for m in pattern.finditer(text):
            keys.add(f"word:{t}:" + ":".join(str(int(g)) for g in m.groups()))
    return keys


@dataclass
class EvalIndex:
    prompts: dict[str, EvalText]  # normalised full prompt -> item
    short: dict[str, EvalText]  # normalised short texts (4 to n-1 words) that must not be contained
    grams: dict[str, EvalText]  # distinctive n-grams of free text -> item
    arithmetic: dict[str, EvalText]  # canonical problem key -> item
    n: int


@lru_cache(maxsize=4)
def eval_index(n: int = DEFAULT_NGRAM, seed: int = 0) -> EvalIndex:
    """The eval suites indexed for lookups: every generated item up to ``MAX_ITEMS`` (so any ``--n``
    is covered) and the whole held-out set."""
    prompts: dict[str, EvalText] = {}
    short: dict[str, EvalText] = {}
    arithmetic: dict[str, EvalText] = {}
    free: list[EvalText] = []
    for p in problems.generate("arithmetic", problems.MAX_ITEMS["arithmetic"], "eval", seed):
        item = EvalText("arithmetic", p.item_id, "prompt", p.prompt)
        prompts[" ".join(normalize(p.prompt))] = arithmetic[p.key] = item
    for p in problems.generate("ifeval", problems.MAX_ITEMS["ifeval"], "eval", seed):
        prompts[" ".join(normalize(p.prompt))] = EvalText("ifeval", p.item_id, "prompt", p.prompt)
    for topic, _, _ in problems.EVAL_TOPICS:
        short[" ".join(normalize(topic))] = EvalText("ifeval", f"topic:{topic}", "prompt", topic)
    for q in load_heldout():
        prompts[" ".join(normalize(q.instruction))] = EvalText("nll", q.item_id, "prompt", q.instruction)
        free += [EvalText("nll", q.item_id, "prompt", q.instruction), EvalText("nll", q.item_id, "reference", q.answer)]
    for t in free:
        words = normalize(t.text)
        if MIN_SHORT_PROMPT <= len(words) < n and t.field == "prompt":
            short[" ".join(words)] = t
    counts: dict[str, set[str]] = {}
    owner: dict[str, EvalText] = {}
    for t in free:
        for g in ngrams(normalize(t.text), n):
            counts.setdefault(g, set()).add(t.item_id)
            owner.setdefault(g, t)
    grams = {g: owner[g] for g, items in counts.items() if len(items) < 3}
    short = {k: v for k, v in short.items() if len(k.split()) >= MIN_SHORT_PROMPT}
    return EvalIndex(prompts, short, grams, arithmetic, n)


def row_texts(row: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(field, text) of a training row: the usual text fields, and the contents of chat messages."""
    for key in TEXT_FIELDS:
        value = row.get(key)
        if isinstance(value, str) and value:
            yield key, value
        elif isinstance(value, list):  # conversational prompt/chosen/rejected
            yield from ((f"{key}.{i}", m["content"]) for i, m in enumerate(value)
                        if isinstance(m, Mapping) and isinstance(m.get("content"), str))
    messages = row.get("messages")
    if isinstance(messages, list):
        yield from ((f"messages.{i}", m["content"]) for i, m in enumerate(messages)
                    if isinstance(m, Mapping) and isinstance(m.get("content"), str))


def find_overlaps(rows: Iterable[Mapping[str, Any]] | pl.DataFrame, n: int = DEFAULT_NGRAM, seed: int = 0,
                  limit: int | None = None) -> list[Overlap]:
    """Every (row, field) of ``rows`` that overlaps an eval item, at most one finding per field."""
    index = eval_index(n, seed)
    lengths = sorted({len(k.split()) for k in index.short})
    iterable = rows.iter_rows(named=True) if isinstance(rows, pl.DataFrame) else rows
    found: list[Overlap] = []
    for i, row in enumerate(iterable):
        for field, text in row_texts(row):
            hit = _first_overlap(text, index, lengths)
            if hit is not None:
                reason, item, match = hit
                found.append(Overlap(i, field, reason, item.suite, item.item_id, match))
                if limit is not None and len(found) >= limit:
                    return found
    return found


def _first_overlap(text: str, index: EvalIndex, lengths: list[int]) -> tuple[str, EvalText, str] | None:
    words = normalize(text)
    joined = " ".join(words)
    if joined in index.prompts:
        return "exact_prompt", index.prompts[joined], text
    for key in problem_keys(text):
        if key in index.arithmetic:
            return "arithmetic", index.arithmetic[key], key
    for g in ngrams(words, index.n):
        if g in index.grams:
            return "ngram", index.grams[g], g
    for k in lengths:
        for g in ngrams(words, k):
            if g in index.short:
                return "contains_prompt", index.short[g], g
    return None


def assert_decontaminated(rows: Iterable[Mapping[str, Any]] | pl.DataFrame, source: str = "training data",
                          n: int = DEFAULT_NGRAM, seed: int = 0) -> None:
    """Raise :class:`ContaminationError` if any row overlaps the eval suites (the message lists the first)."""
    found = find_overlaps(rows, n, seed)
    if found:
        shown = "; ".join(o.describe() for o in found[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise ContaminationError(f"{source}: {len(found)} overlap(s) with the eval suites: {shown}{more}. "
                                 "Remove these rows, or generate training problems with stream='train'")


def check_release(ref: str, warehouse: Any = None, n: int = DEFAULT_NGRAM) -> int:
    """Check a release's sft and preference rows; returns how many rows were checked, raises on overlap."""
    from factory import releases

    rel = releases.open(ref, warehouse)
    checked = 0
    for config in ("sft", "preference"):
        try:
            df = rel.to_polars(config)
        except (releases.ReleaseError, KeyError, FileNotFoundError):
            continue
        assert_decontaminated(df, f"release {ref} ({config})", n)
        checked += df.height
    return checked
