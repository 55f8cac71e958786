"""Verifiable problem generators shared by the eval suites and the training families, on disjoint streams.

``generate(family, n, stream="eval" | "train", seed=0)`` makes ``n`` problems of a family
(``arithmetic`` or ``ifeval``), each with a program that grades an answer. The two streams can never
produce the same problem, whatever the seeds, by construction:

- **arithmetic**: every problem has a canonical key (``add:27:82``, operands of ``+``/``×`` sorted; word
  problems by template and numbers). A fixed hash of the key, independent of any seed, assigns it to
  the eval stream (one key in four) or to the train stream; each generator keeps only its own stream's
  keys. So ``27 + 82`` is either an eval problem or a training problem, for ever.
- **ifeval**: the eval stream and the train stream draw their topics from two disjoint lists
  (``EVAL_TOPICS`` / ``TRAIN_TOPICS``); the constraints and their checkers are shared.

Item ``i`` depends only on the seed and the items before it, so the first ``n`` problems are the same
for every larger ``n`` (a suite at ``--n 50`` is a prefix of the suite at ``--n 200``). A second guard
for any training data, wherever it came from, is ``factory.evaluation.decontam``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from factory.evaluation import checkers
from factory.records import content_id

Stream = Literal["eval", "train"]
STREAMS: tuple[Stream, ...] = ("eval", "train")
FAMILIES = ("arithmetic", "ifeval")
#: the most items a generated suite may have (ifeval: 20 topics for each of its 14 constraint kinds);
#: decontamination checks against this many per family
MAX_ITEMS = {"arithmetic": 1000, "ifeval": 280}
ARITHMETIC_SUFFIX = "Answer with just the number."


@dataclass(frozen=True)
class Problem:
    """One verifiable problem: what the model is asked, and how its answer is graded."""

    family: str
    kind: str
    key: str  # canonical identity: equal keys are the same problem, whatever the wording
    prompt: str
    reference: str  # the expected number, or the constraint in words
    checker: str  # a name in checkers.CHECKERS, or "number"
    params: dict[str, Any] = field(default_factory=dict)
    stream: Stream = "eval"

    @property
    def item_id(self) -> str:
        return content_id(self.family, self.key)

    def grade(self, answer: str) -> tuple[bool, str | None]:
        """(correct, what was extracted or checked): see checkers for the rules."""
        if self.checker == "number":
            return checkers.arithmetic_correct(answer, int(self.params["expected"]))
        ok = checkers.check(answer, self.checker, self.params)
        return ok, None

    def as_record(self) -> dict[str, Any]:
        """The problem as a task row for a training generator (``gold_answer`` is set for arithmetic)."""
        return {"instruction": self.prompt, "input": "", "category": self.family, "kind": self.kind,
                "key": self.key, "stream": self.stream, "checker": self.checker, "params": self.params,
                "gold_answer": self.reference if self.checker == "number" else None}


def stream_of_key(key: str) -> Stream:
    """The stream a canonical arithmetic key belongs to: a fixed hash, one key in four is eval's."""
    return "eval" if int(hashlib.sha256(f"stream|{key}".encode()).hexdigest()[:8], 16) % 4 == 0 else "train"


# -- arithmetic ------------------------------------------------------------------------------------

NAMES = ["Maya", "Tariq", "Lena", "Oskar", "Priya", "Diego", "Hana", "Samuel", "Ines", "Kofi", "Yuki", "Marta"]
THINGS = ["marbles", "stickers", "pencils", "cards", "shells", "stamps", "buttons", "beads"]


@dataclass(frozen=True)
class WordTemplate:
    text: str
    draw: Callable[[random.Random], tuple[int, ...]]
    solve: Callable[..., int]


def _pair(lo: int, hi: int, lo2: int, hi2: int) -> Callable[[random.Random], tuple[int, int]]:
    return lambda r: (r.randint(lo, hi), r.randint(lo2, hi2))


def _less(lo: int, hi: int) -> Callable[[random.Random], tuple[int, int]]:
    def draw(r: random.Random) -> tuple[int, int]:
        a = r.randint(lo, hi)
        return a, r.randint(1, a - 1)
    return draw


def _change(r: random.Random) -> tuple[int, int, int]:
    a, b = r.randint(2, 15), r.randint(2, 9)
    return a, b, (a * b // 10 + 1 + r.randint(0, 3)) * 10


def _harvest(r: random.Random) -> tuple[int, int, int]:
    a, b = r.randint(10, 80), r.randint(10, 80)
    return a, b, r.randint(1, a + b - 1)


WORD_TEMPLATES: list[WordTemplate] = [
    WordTemplate("{name} has {a} {things}. {name} gets {b} more. How many {things} does {name} have now?",
                 _pair(10, 99, 10, 99), lambda a, b: a + b),
    WordTemplate("{name} had {a} {things} and gave {b} of them to a friend. How many {things} does {name} have "
                 "left?", _less(20, 99), lambda a, b: a - b),
    WordTemplate("A shop packs {things} in bags of {a}. How many {things} are in {b} full bags?",
                 _pair(3, 12, 3, 25), lambda a, b: a * b),
    WordTemplate("{name} reads {a} pages on Monday and {b} pages on Tuesday. How many pages does {name} read "
                 "on the two days together?", _pair(10, 99, 10, 99), lambda a, b: a + b),
    WordTemplate("A school has {a} students and {b} of them are away on a trip. How many students are at "
                 "school?", _less(100, 999), lambda a, b: a - b),
    WordTemplate("A ferry carries {a} people on each crossing and makes {b} crossings a day. How many people "
                 "does it carry in a day?", _pair(12, 60, 2, 9), lambda a, b: a * b),
    WordTemplate("A farmer picks {a} apples in the morning and {b} in the afternoon, then sells {c} of them. "
                 "How many apples are left?", _harvest, lambda a, b, c: a + b - c),
    WordTemplate("Tickets cost {a} dollars each. {name} buys {b} tickets and pays with {c} dollars. How many "
                 "dollars of change does {name} get?", _change, lambda a, b, c: c - a * b),
]


def _bare(kind: str, r: random.Random) -> tuple[str, str, int]:
    """(key, prompt, answer) for a bare two-operand problem."""
    if kind == "add":
        a, b = r.randint(10, 999), r.randint(10, 999)
        return f"add:{min(a, b)}:{max(a, b)}", f"What is {a} + {b}?", a + b
    if kind == "sub":
        a = r.randint(100, 999)
        b = r.randint(10, a - 1)
        return f"sub:{a}:{b}", f"What is {a} - {b}?", a - b
    a = r.randint(10, 99)
    b = r.randint(2, 9) if r.random() < 0.5 else r.randint(10, 99)
    return f"mul:{min(a, b)}:{max(a, b)}", f"What is {a} × {b}?", a * b


def _arithmetic_item(i: int, r: random.Random) -> tuple[str, str, str, int]:
    """(kind, key, prompt, answer) of item ``i``: the kinds take turns add, sub, mul, word."""
    kind = ("add", "sub", "mul", "word")[i % 4]
    if kind != "word":
        key, prompt, answer = _bare(kind, r)
        return kind, key, f"{prompt} {ARITHMETIC_SUFFIX}", answer
    t = r.randrange(len(WORD_TEMPLATES))
    template = WORD_TEMPLATES[t]
    numbers = template.draw(r)
    names = dict(zip("abc", numbers, strict=False))
    text = template.text.format(name=r.choice(NAMES), things=r.choice(THINGS), **names)
    return kind, f"word:{t}:" + ":".join(map(str, numbers)), f"{text} {ARITHMETIC_SUFFIX}", template.solve(*numbers)


def arithmetic(n: int, stream: Stream = "eval", seed: int = 0) -> list[Problem]:
    """``n`` distinct arithmetic problems of one stream: multi-digit +, -, × and short word problems."""
    out: list[Problem] = []
    seen: set[str] = set()
    for i in range(n):
        r = random.Random(f"arithmetic|{stream}|{seed}|{i}")
        while True:
            kind, key, prompt, answer = _arithmetic_item(i, r)
            if key not in seen and stream_of_key(key) == stream:
                break
        seen.add(key)
        out.append(Problem("arithmetic", kind, key, prompt, str(answer), "number", {"expected": answer}, stream))
    return out


# -- instruction following (IFEval-style) ------------------------------------------------------------

#: (instruction, a word to include that fits the topic, the topic's obvious word to avoid)
EVAL_TOPICS: list[tuple[str, str, str]] = [
    ("Explain why leaves change colour in autumn.", "chlorophyll", "leaves"),
    ("Describe how to brew a good cup of tea.", "kettle", "tea"),
    ("Give advice to someone running their first marathon.", "pace", "marathon"),
    ("Explain how a refrigerator keeps food cold.", "compressor", "cold"),
    ("Describe a quiet morning at a fishing harbour.", "gulls", "boats"),
    ("Explain why people should back up their computer files.", "drive", "files"),
    ("Give tips for keeping a houseplant alive.", "sunlight", "water"),
    ("Describe what makes a good neighbour.", "trust", "neighbour"),
    ("Explain how bees make honey.", "nectar", "honey"),
    ("Suggest how a family could spend a rainy Sunday at home.", "puzzle", "rain"),
    ("Explain why cats purr.", "vibration", "cat"),
    ("Describe how to prepare for a job interview.", "research", "interview"),
    ("Explain what a budget is and why it helps.", "savings", "money"),
    ("Describe the sounds of a busy train station.", "announcement", "trains"),
    ("Give reasons to learn a second language.", "travel", "language"),
    ("Explain how a bicycle's gears help on hills.", "chain", "bike"),
    ("Describe a good way to organise a small kitchen.", "shelves", "kitchen"),
    ("Explain why sleep matters for students.", "memory", "sleep"),
    ("Give advice for writing a polite complaint letter.", "calm", "complaint"),
    ("Describe the life cycle of a frog.", "tadpole", "frog"),
]
TRAIN_TOPICS: list[tuple[str, str, str]] = [
    ("Explain how rainbows form.", "prism", "rainbow"),
    ("Describe how to plant tomatoes in a garden.", "soil", "tomatoes"),
    ("Give tips for a long car journey with children.", "snacks", "car"),
    ("Explain why recycling glass is useful.", "furnace", "glass"),
    ("Describe a walk through a pine forest in winter.", "frost", "trees"),
    ("Explain how a library lends books.", "catalogue", "books"),
    ("Give advice for learning to swim as an adult.", "breathing", "swim"),
    ("Describe how volcanoes erupt.", "magma", "volcano"),
    ("Explain why people keep diaries.", "reflection", "diary"),
    ("Suggest ways to make a small flat feel bigger.", "mirrors", "space"),
    ("Explain how a camera lens focuses light.", "aperture", "camera"),
    ("Describe how to bake simple bread.", "yeast", "bread"),
    ("Give reasons to visit a museum.", "history", "museum"),
    ("Explain how tides work.", "moon", "ocean"),
    ("Describe a lively street market.", "stalls", "market"),
    ("Explain why exercise improves mood.", "endorphins", "exercise"),
    ("Give tips for saving electricity at home.", "insulation", "energy"),
    ("Describe how snow forms in clouds.", "crystals", "snow"),
    ("Explain how to care for a pet rabbit.", "hay", "rabbit"),
    ("Describe the job of a lighthouse keeper.", "lamp", "lighthouse"),
]
_JSON_KEYS = [("name", "reason"), ("title", "summary"), ("pros", "cons"), ("answer", "confidence"),
              ("topic", "points"), ("idea", "cost")]
_END_PHRASES = ["Is there anything else I can help with?", "That is all.", "Thanks for reading.",
                "Let me know what you think."]
_START_WORDS = ["Certainly", "Honestly", "First", "Today", "Imagine"]


def _constraint(kind: str, topic: tuple[str, str, str], r: random.Random) -> tuple[str, dict[str, Any], str]:
    """(instruction sentence, checker params, reference in words) for a constraint kind."""
    _, include, avoid = topic
    match kind:
        case "bullets":
            n = r.randint(2, 5)
            return (f"Your answer must contain exactly {n} bullet points, written as markdown bullets like "
                    "\"- point\".", {"n": n}, f"exactly {n} bullet points")
        case "max_words":
            n = r.choice([15, 25, 40])
            return f"Answer in at most {n} words.", {"n": n}, f"at most {n} words"
        case "min_words":
            n = r.choice([50, 70, 90])
            return f"Your answer must be at least {n} words long.", {"n": n}, f"at least {n} words"
        case "include_word":
            return f"Include the word \"{include}\" in your answer.", {"word": include}, f"includes '{include}'"
        case "avoid_word":
            return (f"Do not use the word \"{avoid}\" anywhere in your answer.", {"word": avoid},
                    f"avoids '{avoid}'")
        case "json_keys":
            keys = list(r.choice(_JSON_KEYS))
            return (f"Reply only with a JSON object that has exactly the keys \"{keys[0]}\" and \"{keys[1]}\", "
                    "and no other text.", {"keys": keys}, f"a JSON object with keys {keys}")
        case "lowercase":
            return ("Write your entire answer in lowercase letters; do not use any capital letters.", {},
                    "all lowercase")
        case "uppercase":
            return "Write your entire answer in capital letters only.", {}, "all capitals"
        case "end_phrase":
            phrase = r.choice(_END_PHRASES)
            return (f"Finish your answer with the exact phrase \"{phrase}\" and write nothing after it.",
                    {"phrase": phrase}, f"ends with '{phrase}'")
        case "start_word":
            word = r.choice(_START_WORDS)
            return f"Begin your answer with the word \"{word}\".", {"word": word}, f"starts with '{word}'"
        case "no_commas":
            return "Do not use any commas in your answer.", {}, "no commas"
        case "title":
            return ("Give your answer a title wrapped in double angular brackets, such as <<my title>>.", {},
                    "a <<title>>")
        case "quoted":
            return "Wrap your entire answer in double quotation marks.", {}, "wrapped in double quotes"
        case "postscript":
            return "At the end of your answer, add a postscript starting with P.S.", {}, "ends with a P.S."
    raise ValueError(f"unknown constraint kind {kind!r}")


IFEVAL_KINDS = ["bullets", "max_words", "include_word", "avoid_word", "json_keys", "lowercase", "end_phrase",
                "start_word", "no_commas", "title", "uppercase", "min_words", "quoted", "postscript"]
assert set(IFEVAL_KINDS) <= set(checkers.CHECKERS)


def ifeval(n: int, stream: Stream = "eval", seed: int = 0) -> list[Problem]:
    """``n`` distinct instruction-following problems: a topic plus one checkable constraint."""
    topics = EVAL_TOPICS if stream == "eval" else TRAIN_TOPICS
    out: list[Problem] = []
    seen: set[str] = set()
    for i in range(n):
        r = random.Random(f"ifeval|{stream}|{seed}|{i}")
        kind = IFEVAL_KINDS[i % len(IFEVAL_KINDS)]
        for _ in range(1000):
            topic = r.choice(topics)
            sentence, params, reference = _constraint(kind, topic, r)
            key = f"ifeval:{topic[0]}:{kind}:{sorted(params.items())}"
            if key not in seen:
                break
        else:  # the space of (topic, constraint) pairs for this kind is used up
            raise ValueError(f"ifeval: cannot make {n} distinct items (kind {kind!r} ran out at item {i})")
        seen.add(key)
        out.append(Problem("ifeval", kind, key, f"{topic[0]} {sentence}", reference, kind, params, stream))
    return out


GENERATORS: dict[str, Callable[[int, Stream, int], list[Problem]]] = {"arithmetic": arithmetic, "ifeval": ifeval}


def generate(family: str, n: int, stream: Stream = "eval", seed: int = 0) -> list[Problem]:
    """``n`` problems of ``family`` from ``stream``; training generators must pass ``stream="train"``."""
    if family not in GENERATORS:
        raise ValueError(f"unknown problem family {family!r}; choose from {', '.join(GENERATORS)}")
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; choose eval or train")
    if not 0 <= n <= MAX_ITEMS[family]:
        raise ValueError(f"{family}: n must be between 0 and {MAX_ITEMS[family]} (got {n})")
    return GENERATORS[family](n, stream, seed)
