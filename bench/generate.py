"""Self-label throughput: the factory's stage vs a bare batched ``model.generate`` loop, same prompts.

Three ways to answer the same prompts with the same loaded model, sampling settings and batch size:

* ``bare_sorted`` — a hand-written loop: chat template, sort by prompt length, left-pad, generate;
* ``factory``     — the ``self_label`` stage through the runner (fresh warehouse and call cache, so no
                    cache hits): request building, batching, checkpointing, Parquet + catalog writes;
* ``naive``       — the bare loop without length sorting (prompts in their given order).

Rounds alternate the three to spread machine noise; the best of each is reported. Figures are
tokens/second of generated tokens (up to EOS). Goal: factory/bare_sorted >= 0.95, sorted beats naive.

    python bench/generate.py [--prompts 64] [--max-tokens 48] [--batch-size 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from factory.backends.transformers_backend import TransformersBackend, TransformersConfig  # noqa: E402
from factory.config import parse_pipeline  # noqa: E402
from factory.records import task_prompt  # noqa: E402
from factory.runner import Runner  # noqa: E402


def load_prompts(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (ROOT / "data/seeds/demo_seeds.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(rows)
    while len(rows) < n:  # more prompts than seeds: vary them so every prompt is distinct
        rows += [{**r, "instruction": f"{r['instruction']} (variant {len(rows)})"} for r in rows]
    return rows[:n]


def bare_loop(backend: TransformersBackend, rows: list[dict], max_tokens: int, batch: int, sort: bool,
              seed: int) -> tuple[int, float]:
    """What a person would write by hand: no records, no cache, no files."""
    import torch

    tok, model = backend.tokenizer, backend.model
    prompts = [tok.apply_chat_template([{"role": "user", "content": task_prompt(r)}], tokenize=False,
                                       add_generation_prompt=True) for r in rows]
    if sort:
        prompts.sort(key=lambda p: len(tok(p, add_special_tokens=False).input_ids))
    eos = backend._eos_ids()
    tokens, began = 0, time.perf_counter()
    for start in range(0, len(prompts), batch):
        torch.manual_seed(seed + start)
        enc = tok(prompts[start:start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=True, temperature=0.7, top_p=0.95,
                                 pad_token_id=tok.pad_token_id)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            n = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            tokens += n
    return tokens, time.perf_counter() - began


def factory_stage(backend: TransformersBackend, rows: list[dict], max_tokens: int, round_: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        seeds = Path(tmp) / "seeds.jsonl"
        seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = parse_pipeline({
            "name": "bench", "warehouse": f"{tmp}/wh", "seed": round_,
            "backend": {"kind": "transformers", "batch_size": backend.batch_size},
            "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                       {"kind": "self_label", "keep_truncated": True,
                        "params": {"max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.95}}]})
        runner = Runner(cfg, show_progress=False)
        runner._backend = backend  # the same loaded model as the bare loops
        runner.run()
        stage = runner.warehouse.query("SELECT completion_tokens, seconds FROM stages WHERE stage='self_label'")
        return stage.row(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    backend = TransformersBackend(TransformersConfig(batch_size=args.batch_size))
    rows = load_prompts(args.prompts)
    bare_loop(backend, rows[: args.batch_size], 8, args.batch_size, True, 0)  # warm-up
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for name in ("bare_sorted", "factory", "naive"):
            if name == "factory":
                tokens, seconds = factory_stage(backend, rows, args.max_tokens, r)
            else:
                tokens, seconds = bare_loop(backend, rows, args.max_tokens, args.batch_size, name == "bare_sorted",
                                            1000 * r)
            rate = tokens / seconds
            best[name] = max(best.get(name, 0.0), rate)
            print(f"round {r}: {name:12s} {tokens:6d} tokens in {seconds:6.2f}s = {rate:7.1f} tok/s", flush=True)
    result = {
        "prompts": args.prompts, "max_tokens": args.max_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
        "tok_s_factory": round(best["factory"], 1), "tok_s_bare_sorted": round(best["bare_sorted"], 1),
        "tok_s_naive_unsorted": round(best["naive"], 1),
        "factory_over_bare": round(best["factory"] / best["bare_sorted"], 3),
        "sorted_over_naive": round(best["bare_sorted"] / best["naive"], 3),
    }
    print(f"factory / bare sorted loop: {result['factory_over_bare']:.3f} (goal >= 0.95); "
          f"sorted / naive: {result['sorted_over_naive']:.3f} (goal > 1)")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
