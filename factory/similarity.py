"""Text similarity shared by stages: ROUGE-L (the Self-Instruct novelty measure) over a growing pool."""

from __future__ import annotations

from collections.abc import Iterable

from rouge_score import rouge_scorer, tokenizers


class RougePool:
    """A pool of texts to which a candidate's highest ROUGE-L F1 (and the nearest text's id) is found.

    Texts are tokenised once when added, and each comparison runs the library's LCS on the tokens,
    so checking a candidate against a pool of n texts costs n LCS computations and no re-tokenising.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._ids: list[str] = []
        self._tokens: list[list[str]] = []
        for item_id, text in items:
            self.add(item_id, text)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_id: str, text: str) -> None:
        self._ids.append(item_id)
        self._tokens.append(self._tokenizer.tokenize(text))

    def nearest(self, text: str) -> tuple[float, str | None]:
        tokens = self._tokenizer.tokenize(text)
        best, best_id = 0.0, None
        for item_id, other in zip(self._ids, self._tokens, strict=True):
            score = rouge_scorer._score_lcs(other, tokens).fmeasure  # the scorer's own LCS, pre-tokenised
            if score > best:
                best, best_id = score, item_id
        return best, best_id


def rouge_l(a: str, b: str) -> float:
    return RougePool([("a", a)]).nearest(b)[0]
