"""The NLL suite: how likely a model finds reference answers to held-out instructions.

A measure of general ability that training on narrow data should not make worse. It needs logits, so
it runs on a transformers model (``factory.models.load_causal_lm``, or the transformers backend's own
loaded model); other backends do not expose them and the suite is reported as unsupported.

Each item is scored as the model would see it at generation time: the chat-templated prompt with the
generation prompt, then the reference answer and the template's end-of-turn marker (so knowing when
to stop counts too). Only those answer tokens are scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from factory.records import content_id

HELDOUT_QA = Path(__file__).resolve().parents[2] / "data" / "eval" / "heldout_qa.jsonl"


class HeldoutError(ValueError):
    """The held-out file is unusable; the message names the file, line and field."""


@dataclass(frozen=True)
class HeldoutItem:
    id: str
    instruction: str
    answer: str

    @property
    def item_id(self) -> str:
        return content_id("nll", self.id, self.instruction, self.answer)


def load_heldout(path: Path = HELDOUT_QA) -> list[HeldoutItem]:
    """The held-out instruction/answer pairs, each line checked (``id``, ``instruction``, ``answer``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HeldoutError(f"{path}: cannot read the held-out set ({exc.strerror})") from None
    items, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise HeldoutError(f"{path}:{number}: invalid JSON ({exc})") from None
        for key in ("id", "instruction", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise HeldoutError(f"{path}:{number}: field {key!r} must be a non-empty string")
        if row["id"] in seen:
            raise HeldoutError(f"{path}:{number}: id {row['id']!r} appears twice")
        seen.add(row["id"])
        items.append(HeldoutItem(row["id"], row["instruction"], row["answer"]))
    return items


def answer_token_ids(tokenizer, instruction: str, answer: str) -> tuple[list[int], int]:
    """(prompt + answer token ids, number of prompt tokens) as the model sees them when generating."""
    user = [{"role": "user", "content": instruction}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=False)
    rest = full[len(prompt):] if full.startswith(prompt) else answer + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(rest.rstrip(), add_special_tokens=False).input_ids
    return prompt_ids + answer_ids, len(prompt_ids)


def answer_nll(model, tokenizer, instruction: str, answer: str) -> tuple[float, int]:
    """(sum of -log p over the answer's tokens, their number) under ``model``."""
    import torch

    ids, n_prompt = answer_token_ids(tokenizer, instruction, answer)
    inputs = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=inputs).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = inputs[0, 1:]
    picked = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)[n_prompt - 1:]
    return float(-picked.double().sum()), int(picked.numel())
