"""Structured generation: constrained vs free decoding with the transformers backend, same prompts.

The prompts are the structured judge's (``judge/additive5-json@1``) over demo seeds and their reference
answers, so both runs are asked for the same JSON verdict; one decodes freely, the other under the
verdict schema (a llguidance logits processor). Figures per mode: generated tokens/second (up to EOS),
seconds per call, and the share of outputs that validate against the schema. A third, cheaper line
reports the free-text judge prompt (``Score: N``) with its regex parser, the path the schema replaces.
Rounds alternate the modes and the best rate of each is kept. Goal: constrained/free tokens/s >= 0.8.

    python bench/structured.py [--prompts 32] [--max-tokens 64] [--batch-size 16] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from factory.backends.base import ChatRequest, GenParams  # noqa: E402
from factory.backends.transformers_backend import TransformersBackend, TransformersConfig  # noqa: E402
from stages.judge import ADDITIVE_JSON_TEMPLATE, ADDITIVE_TEMPLATE, parse_score, verdict_constraint  # noqa: E402


def judge_prompts(n: int) -> list[tuple[str, str]]:
    """(question, answer) pairs from the demo seeds: reference answers, half of them cut short."""
    rows = [json.loads(line) for line in (ROOT / "data/seeds/demo_seeds.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("output")]
    random.Random(0).shuffle(rows)
    pairs = []
    for i, r in enumerate(rows[:n]):
        question = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        words = r["output"].split()
        pairs.append((question, " ".join(words[: max(3, len(words) // 4)]) if i % 2 else r["output"]))
    return pairs


def run(backend: TransformersBackend, pairs: list[tuple[str, str]], mode: str, max_tokens: int,
        seed: int) -> dict[str, float]:
    constraint = verdict_constraint(max_tokens)
    template = ADDITIVE_TEMPLATE if mode == "free_text" else ADDITIVE_JSON_TEMPLATE
    reqs = [ChatRequest.of([{"role": "user", "content": template.format(question=q, answer=a)}],
                           GenParams(max_tokens=max_tokens, temperature=0.7, top_p=0.95, seed=seed + i,
                                     constraint=constraint if mode == "constrained" else None))
            for i, (q, a) in enumerate(pairs)]
    began = time.perf_counter()
    outs = backend.generate(reqs)
    seconds = time.perf_counter() - began
    tokens = sum(o.completion_tokens for o in outs)
    if mode == "free_text":
        valid = sum(parse_score(o.text) is not None for o in outs)
    else:
        valid = sum(constraint.parse(o.text) is not None for o in outs)
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds, "valid_share": valid / len(outs),
            "s_per_call": seconds / len(outs), "truncated_share": sum(o.finish_reason == "length" for o in outs)
            / len(outs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    args = ap.parse_args()

    backend = TransformersBackend(TransformersConfig(batch_size=args.batch_size, threads=args.threads))
    pairs = judge_prompts(args.prompts)
    run(backend, pairs[:4], "constrained", 8, 0)  # warm-up: llguidance's tokenizer view is built once (~2 s)
    best: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for mode in ("free", "constrained", "free_text"):
            figures = run(backend, pairs, mode, args.max_tokens, 1000 * r)
            if mode not in best or figures["tok_s"] > best[mode]["tok_s"]:
                best[mode] = figures
            print(f"round {r}: {mode:11s} {figures['tokens']:5d} tokens in {figures['seconds']:6.2f}s = "
                  f"{figures['tok_s']:6.1f} tok/s, {figures['s_per_call']:.2f} s/call, valid "
                  f"{figures['valid_share']:.0%}, hit max_tokens {figures['truncated_share']:.0%}", flush=True)
    ratio = best["constrained"]["tok_s"] / best["free"]["tok_s"]
    result = {"prompts": args.prompts, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
              "rounds": args.rounds, "threads": args.threads, "library": "llguidance",
              "tok_s_free": round(best["free"]["tok_s"], 1),
              "tok_s_constrained": round(best["constrained"]["tok_s"], 1),
              "constrained_over_free": round(ratio, 3),
              "s_per_call_free": round(best["free"]["s_per_call"], 3),
              "s_per_call_constrained": round(best["constrained"]["s_per_call"], 3),
              "valid_share_free": round(best["free"]["valid_share"], 3),
              "valid_share_constrained": round(best["constrained"]["valid_share"], 3),
              "truncated_share_free": round(best["free"]["truncated_share"], 3),
              "truncated_share_constrained": round(best["constrained"]["truncated_share"], 3),
              "parsed_share_free_text_judge": round(best["free_text"]["valid_share"], 3),
              "tok_s_free_text_judge": round(best["free_text"]["tok_s"], 1)}
    print(f"constrained / free tokens/s: {ratio:.3f} (goal >= 0.8); valid: free "
          f"{result['valid_share_free']:.0%}, constrained {result['valid_share_constrained']:.0%}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
