"""Answer checkers: the arithmetic answer extractor and the IFEval-style constraint checkers.

Every checker is a plain function ``(answer, **params) -> bool`` registered by name, so an eval row can
be re-graded later from its stored ``check`` JSON. Two rules hold for all of them:

- an empty (or whitespace-only) answer is never correct: "do not use the word X" is not satisfied by
  saying nothing;
- tolerance is limited to formatting the instruction did not ask about (a code fence around JSON,
  trailing whitespace), never to the constraint itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

Checker = Callable[..., bool]
CHECKERS: dict[str, Checker] = {}

# a number: optional minus, digits with optional thousands separators, optional decimals
_NUMBER = re.compile(r"(?<![\d.,])-?\d+(?:,\d{3})*(?:\.\d+)?(?!\d)")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_BULLET = re.compile(r"^\s*(?:[-*•])\s+\S", re.M)
_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n?(.*?)\n?\s*```\s*$", re.S)


def extract_number(answer: str) -> float | None:
    """The *last* number in the answer (``1,234`` and ``-5`` and ``2.50`` are numbers), or None.

    Tolerant: "27 + 82 = 109", "The answer is 109." and "**109**" all give 109. Honest: only the last
    number counts, so "109 or 110" gives 110, and restating the question without answering gives one of
    its operands (wrong).
    """
    found = _NUMBER.findall(answer.replace("\u2212", "-"))
    if not found:
        return None
    token = found[-1].replace(",", "")
    try:
        return float(token)
    except ValueError:
        return None


def arithmetic_correct(answer: str, expected: int) -> tuple[bool, str | None]:
    """(correct, extracted text): the last number in the answer equals ``expected`` exactly."""
    value = extract_number(answer)
    if value is None:
        return False, None
    shown = str(int(value)) if value == int(value) else str(value)
    return value == expected, shown


def register(name: str) -> Callable[[Checker], Checker]:
    def deco(fn: Checker) -> Checker:
        CHECKERS[name] = fn
        return fn
    return deco


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _nonempty(fn: Checker) -> Checker:
    def wrapped(answer: str, **params: Any) -> bool:
        return bool(answer and answer.strip()) and fn(answer, **params)
    wrapped.__doc__ = fn.__doc__
    wrapped.__name__ = fn.__name__
    return wrapped


def check(answer: str, name: str, params: dict[str, Any]) -> bool:
    """Grade ``answer`` with the checker ``name``; unknown names are a programming error."""
    return CHECKERS[name](answer, **params)


@register("bullets")
@_nonempty
def bullets(answer: str, n: int) -> bool:
    """Exactly ``n`` markdown bullet lines (``-``, ``*`` or ``•`` then a space); numbered lists do not count."""
    return len(_BULLET.findall(answer)) == n


@register("max_words")
@_nonempty
def max_words(answer: str, n: int) -> bool:
    """At most ``n`` words (runs of letters/digits, with inner apostrophes or hyphens)."""
    return 0 < len(words(answer)) <= n


@register("min_words")
@_nonempty
def min_words(answer: str, n: int) -> bool:
    """At least ``n`` words."""
    return len(words(answer)) >= n


def _word_forms(word: str) -> re.Pattern[str]:
    """The word as a whole word, any case, with or without a plural -s/-es (so include and avoid agree)."""
    return re.compile(rf"\b{re.escape(word)}(?:s|es)?\b", re.I)


@register("include_word")
@_nonempty
def include_word(answer: str, word: str) -> bool:
    """The word (or its plural) appears as a whole word, any case."""
    return _word_forms(word).search(answer) is not None


@register("avoid_word")
@_nonempty
def avoid_word(answer: str, word: str) -> bool:
    """Neither the word nor its plural appears as a whole word, in any case."""
    return _word_forms(word).search(answer) is None and len(words(answer)) > 0


@register("json_keys")
@_nonempty
def json_keys(answer: str, keys: list[str]) -> bool:
    """The whole answer is one JSON object with exactly these keys (a surrounding code fence is allowed)."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == set(keys)


@register("lowercase")
@_nonempty
def lowercase(answer: str) -> bool:
    """Some letters, none of them capital."""
    return any(c.isalpha() for c in answer) and answer == answer.lower()


@register("uppercase")
@_nonempty
def uppercase(answer: str) -> bool:
    """Some letters, none of them small."""
    return any(c.isalpha() for c in answer) and answer == answer.upper()


_TRAILING_MARKUP = " \t\r\n*_\"'`"


@register("end_phrase")
@_nonempty
def end_phrase(answer: str, phrase: str) -> bool:
    """The answer ends with the phrase (any case; trailing spaces, quotes and emphasis marks ignored)."""
    return answer.strip(_TRAILING_MARKUP).lower().endswith(phrase.strip(_TRAILING_MARKUP).lower())


@register("start_word")
@_nonempty
def start_word(answer: str, word: str) -> bool:
    """The first word is ``word`` (any case; leading quotes, emphasis and headings ignored)."""
    first = words(answer.lstrip(_TRAILING_MARKUP + "#"))
    return bool(first) and first[0].lower() == word.lower()


@register("no_commas")
@_nonempty
def no_commas(answer: str) -> bool:
    """Not a single comma, and at least one word."""
    return "," not in answer and "，" not in answer and len(words(answer)) > 0


@register("title")
@_nonempty
def title(answer: str) -> bool:
    """A title in double angular brackets: ``<<like this>>``."""
    return re.search(r"<<[^<>\n]*\w[^<>\n]*>>", answer) is not None


@register("quoted")
@_nonempty
def quoted(answer: str) -> bool:
    """The whole answer wrapped in double quotation marks (straight or curly), with something inside."""
    text = answer.strip()
    return len(text) > 2 and text[0] in "\"“" and text[-1] in "\"”" and bool(words(text))


@register("postscript")
@_nonempty
def postscript(answer: str) -> bool:
    """A postscript starting with ``P.S.`` after some main text."""
    match = re.search(r"(?:^|\n)\s*\**P\.\s?S\.", answer)
    return match is not None and bool(words(answer[:match.start()]))
