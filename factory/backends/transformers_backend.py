"""The embedded default backend: a causal LM through transformers, on CPU, with no network."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import groupby
from typing import Literal

from pydantic import Field

from factory.backends.base import BackendConfig, ChatRequest, Completion, GenParams, register_backend
from factory.models import EMBEDDED_LLM, load_causal_lm


class TransformersConfig(BackendConfig):
    kind: Literal["transformers"] = "transformers"
    model: str = Field(EMBEDDED_LLM, description="embedded name, a .gguf file, or a local model folder")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(16, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")


class TransformersBackend:
    """Batched generation with left padding; the caller sorts by prompt length, and so do we."""

    def __init__(self, config: TransformersConfig):
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.model_id = config.model
        self.batch_size = config.batch_size
        self.model, self.tokenizer = load_causal_lm(config.model, config.dtype)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._grammars = None  # llguidance's tokenizer view, built on the first constrained request

    def _logits_processors(self, params: list[GenParams]) -> list:
        """A grammar mask when any row of the batch carries an output constraint (factory/structured.py)."""
        if all(p.constraint is None for p in params):
            return []
        from factory.backends.guided import GrammarCompiler

        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, sorted(self._eos_ids()))
        return [self._grammars.processor([p.constraint for p in params])]

    def prompt_text(self, request: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(request.message_dicts(), tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        prompts = [self.prompt_text(r) for r in requests]
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        results: list[Completion | None] = [None] * len(requests)

        def same_sampling(i: int) -> tuple:
            p = requests[i].params
            return (p.temperature, p.top_p, p.max_tokens)

        # requests with the same sampling settings share batches; batches are length-sorted
        by_params = sorted(order, key=same_sampling)
        for _, group in groupby(by_params, key=same_sampling):
            members = sorted(group, key=lambda i: lengths[i])
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                outs = self._generate_batch([prompts[i] for i in chunk], [requests[i].params for i in chunk])
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
        return [r for r in results if r is not None]

    def _generate_batch(self, prompts: list[str], params: list[GenParams]) -> list[Completion]:
        import torch

        p = params[0]
        seed = int.from_bytes(hashlib.sha256(repr([q.seed for q in params]).encode()).digest()[:4], "big")
        torch.manual_seed(seed)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p} if p.temperature > 0 \
            else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=p.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      logits_processor=self._logits_processors(params), **sampling)
        new = out[:, enc.input_ids.shape[1]:]
        eos = self._eos_ids()
        results = []
        for row, prompt_len in zip(new.tolist(), enc.attention_mask.sum(dim=1).tolist(), strict=True):
            n, stopped = len(row), False
            for j, tok in enumerate(row):
                if tok in eos:
                    n, stopped = j, True
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append(Completion(text=text.strip(), finish_reason="stop" if stopped else "length",
                                      prompt_tokens=int(prompt_len), completion_tokens=n + int(stopped)))
        return results

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        return {i for i in [*ids, self.tokenizer.eos_token_id] if i is not None}


@register_backend(TransformersConfig)
def load(config: TransformersConfig) -> TransformersBackend:
    return TransformersBackend(config)
