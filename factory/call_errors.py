"""How many failed model calls a stage tolerates, and which finished stages have failed calls to retry.

A model call that fails after the backend's own retries comes back as a ``Completion`` with
``finish_reason == "error"``; stages turn it into a ``model_error`` reject. One such reject is bad luck,
but a stage where *every* call failed (a broken server, a wrong model name) or most calls failed has
produced nothing worth keeping, and "done" would hide that. So the context keeps a tally per stage and
stops the run with :class:`ModelErrors` (one line: the stage, the count, the first error text). Nothing is
lost: answers that did arrive were committed to the call cache batch by batch, errors never are, and the
stopped stage is not marked done, so the next run resumes it and asks again only for what failed.

``backend.max_error_fraction`` (default 0.5) is the share of a stage's answers (cached ones included)
that may be errors. It is checked after every batch once :data:`MIN_ANSWERS_TO_JUDGE` answers are in, so a
mostly failing server stops the run early instead of costing every call, and again when the stage ends.
A stage where every call failed always stops the run, whatever the fraction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory.backends.base import Completion
    from factory.warehouse import Warehouse

#: below this many answers a stage is judged only at its end (two failures of the first three calls are
#: not yet a pattern)
MIN_ANSWERS_TO_JUDGE = 16
DEFAULT_MAX_ERROR_FRACTION = 0.5
#: how much of a server's error text is kept in a reject's detail and in the run's one-line error
ERROR_TEXT_CHARS = 300


class ModelErrors(RuntimeError):
    """A stage whose model calls failed, all of them or more than ``backend.max_error_fraction``."""


def short_error(text: str | None, limit: int = ERROR_TEXT_CHARS) -> str:
    """One line of at most ``limit`` characters (server error bodies can be pages of HTML)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


@dataclass
class ErrorTally:
    """Answers and failed calls of one stage, and the rule that stops it."""

    stage: str
    max_fraction: float = DEFAULT_MAX_ERROR_FRACTION
    answers: int = 0
    errors: int = 0
    first_error: str | None = None

    def add(self, outs: Iterable[Completion]) -> None:
        for out in outs:
            self.answers += 1
            if out.finish_reason == "error":
                self.errors += 1
                if self.first_error is None:
                    self.first_error = short_error(out.error or "the backend gave no answer")

    def check(self, final: bool = False) -> None:
        """Raise :class:`ModelErrors` when the stage is failing (``final``: the stage has all its answers)."""
        if self.errors == 0 or (not final and self.answers < MIN_ANSWERS_TO_JUDGE):
            return
        resume = ("answers that arrived are cached and the stage is not marked done: `factory run` again "
                  "resumes it and asks only for what failed")
        if self.errors == self.answers:
            which = f"all {self.errors} model calls" if final else f"the first {self.errors} model calls all"
            raise ModelErrors(f"stage {self.stage!r}: {which} failed (first error: {self.first_error}); fix the "
                              "backend and run again")
        if self.errors > self.max_fraction * self.answers:
            raise ModelErrors(f"stage {self.stage!r}: {self.errors} of {self.answers} model calls failed "
                              f"({self.errors / self.answers:.0%} > backend.max_error_fraction "
                              f"{self.max_fraction:g}; first error: {self.first_error}); {resume}, or raise "
                              "backend.max_error_fraction to keep the failures as model_error rejects")


def stages_with_model_errors(wh: Warehouse, run_id: str) -> dict[str, int]:
    """Finished stages of ``run_id`` with failed calls, and how many: ``model_error`` rejects, or the
    ``model_errors`` metric for stages (like the judge) that keep a failed call as an unparsed verdict."""
    import polars as pl

    found: dict[str, int] = {}
    rejects = wh.read("rejects", run_id=run_id)
    if not rejects.is_empty():
        counts = rejects.filter(pl.col("reason") == "model_error").group_by("stage").len()
        found.update(dict(counts.iter_rows()))
    with wh.connect(read_only=True) as con:
        rows = con.execute("SELECT stage, metrics FROM stages WHERE run_id = ? AND status = 'done'",
                           [run_id]).fetchall()
    for stage, metrics in rows:
        n = int((json.loads(metrics) if metrics else {}).get("model_errors") or 0)
        if n:
            found[stage] = max(found.get(stage, 0), n)
    return found
