"""Generation throughput of the evolve loop's workload at several batch sizes of the transformers backend.

The workload is what ``rest_em`` asks in ``data/evolve.yaml``: train-stream arithmetic and ifeval problems,
k samples each at temperature 0.8 with per-request seeds, max_tokens 48 / 128. The baseline is the
backend's default batch size (16), measured in the same run; rounds alternate the sizes to spread machine
noise and the best round of each is kept. Figures are generated tokens per second (up to EOS).

    .venv/bin/python bench/batch_size.py [--problems 24] [--k 4] [--sizes 16,32,64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from factory.backends.base import ChatRequest, GenParams  # noqa: E402
from factory.backends.transformers_backend import TransformersBackend, TransformersConfig  # noqa: E402
from factory.evaluation import problems  # noqa: E402

MAX_TOKENS = {"arithmetic": 48, "ifeval": 128}


def requests(n: int, k: int) -> list[ChatRequest]:
    out = []
    for family, max_tokens in MAX_TOKENS.items():
        for j, p in enumerate(problems.generate(family, n, stream="train", seed=7)):
            for i in range(k):
                params = GenParams(max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=1000 * j + i)
                out.append(ChatRequest.of([{"role": "user", "content": p.prompt}], params))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=24, help="problems per family")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--sizes", default="16,32,64", help="batch sizes; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    reqs = requests(args.problems, args.k)
    backend = TransformersBackend(TransformersConfig(batch_size=sizes[0]))
    backend.generate(reqs[:4])  # warm-up: first-call allocations out of the timings
    best: dict[int, float] = {}
    for r in range(args.rounds):
        for size in sizes if r % 2 == 0 else sizes[::-1]:
            backend.batch_size = size
            began = time.perf_counter()
            outs = backend.generate(reqs)
            seconds = time.perf_counter() - began
            rate = sum(o.completion_tokens for o in outs) / seconds
            best[size] = max(best.get(size, 0.0), rate)
            print(f"round {r} batch {size}: {len(reqs)} requests, {rate:.1f} tokens/s")
    base = best[sizes[0]]
    for size in sizes:
        print(f"batch {size:>3}: {best[size]:7.1f} tokens/s  {best[size] / base:.2f}x batch {sizes[0]}")
    print("RESULT " + json.dumps({"requests": len(reqs), "baseline_batch": sizes[0],
                                  "tokens_per_second": {str(s): round(best[s], 1) for s in sizes},
                                  "ratio_to_baseline": {str(s): round(best[s] / base, 3) for s in sizes}}))


if __name__ == "__main__":
    main()
