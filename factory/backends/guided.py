"""Constrained decoding for the transformers backend: a llguidance logits processor.

llguidance was chosen over xgrammar and outlines (figures in the README, "Structured generation"): a
3 MB wheel with no dependencies (xgrammar pulls triton, ~290 MB, on Linux; outlines pulls five packages),
JSON Schema, regex and choices compiled lazily with no up-front index build (outlines-core builds a regex
DFA, slow for ``maxLength`` bounds), with per-token mask costs like xgrammar's. Rows of a batch
may carry different constraints, or none; left padding does not matter because each row's matcher only
sees the tokens generated after the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import LogitsProcessor

from factory.structured import OutputConstraint


class GrammarCompiler:
    """llguidance's view of one tokenizer (built once, ~2 s) and a fresh matcher per constrained row."""

    def __init__(self, hf_tokenizer: Any, eos_ids: Sequence[int]):
        import llguidance
        import llguidance.hf

        self._ll = llguidance
        self.eos_ids = sorted(set(eos_ids))
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, eos_token=self.eos_ids)
        self._fresh: dict[OutputConstraint, Any] = {}

    def matcher(self, constraint: OutputConstraint) -> Any:
        fresh = self._fresh.get(constraint)
        if fresh is None:
            fresh = self._ll.LLMatcher(self.tokenizer, constraint.llguidance_grammar(), log_level=0)
            if fresh.is_error():
                raise ValueError(f"{constraint.kind} cannot be compiled for this tokenizer: {fresh.get_error()}")
            self._fresh[constraint] = fresh
        return fresh.deep_copy()

    def processor(self, constraints: Sequence[OutputConstraint | None]) -> GrammarLogitsProcessor:
        return GrammarLogitsProcessor(self, [None if c is None else self.matcher(c) for c in constraints])


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each row's next-token logits to what its grammar allows; one instance per ``generate`` call.

    transformers applies custom processors before temperature and top-p, so sampling only ever sees
    allowed tokens. A row whose matcher has stopped (it accepted EOS) or failed is left alone: the first
    is finished (transformers pads it), the second is caught when its output is validated.
    """

    def __init__(self, compiler: GrammarCompiler, matchers: list[Any]):
        from llguidance.numpy import allocate_token_bitmask

        self.compiler = compiler
        self.matchers = matchers
        self.bitmask = allocate_token_bitmask(len(matchers), compiler.tokenizer.vocab_size)
        self.eos_only = np.zeros(self.bitmask.shape[1], dtype=np.int32)
        for token in compiler.eos_ids:
            self.eos_only[token // 32] |= np.int32(1 << (token % 32)) if token % 32 < 31 else np.int32(-(1 << 31))
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        from llguidance.numpy import fill_next_token_bitmask

        if self.started:  # feed each row the token sampled at the previous step
            last = input_ids[:, -1].tolist()
            for matcher, token in zip(self.matchers, last, strict=True):
                if matcher is not None and not matcher.is_stopped() and not matcher.is_error():
                    matcher.consume_token(token)
        self.started = True
        # One bitmask row per batch row, one in-place masked_fill_ for the batch: on a busy 2-core machine
        # every tensor copy per step shows, and llguidance's thread pool (LLExecutor) was slower than
        # filling the rows one by one (0.3 ms for 16 rows).
        for i, matcher in enumerate(self.matchers):
            if matcher is None:
                self.bitmask[i] = -1  # unconstrained: every token allowed
            elif matcher.is_stopped() or matcher.is_error():
                # stopped: nothing more can follow ("A" of choices A/B), only EOS may come; a failed matcher
                # ends its row too, and the output is rejected when it is validated
                self.bitmask[i] = self.eos_only
            else:
                fill_next_token_bitmask(matcher, self.bitmask, i)
        blocked = ~np.unpackbits(self.bitmask.view(np.uint8), axis=1, bitorder="little").astype(bool)
        vocab = scores.shape[1]
        if blocked.shape[1] < vocab:  # the model's embedding is padded past the tokenizer's vocabulary
            blocked = np.pad(blocked, ((0, 0), (0, vocab - blocked.shape[1])), constant_values=True)
        scores.masked_fill_(torch.from_numpy(blocked[:, :vocab]), float("-inf"))
        return scores
