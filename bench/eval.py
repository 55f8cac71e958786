"""`factory eval` on the embedded model: wall time per suite, items/s, and the cost of the eval's bookkeeping.

For every suite, with one loaded model (SmolLM2-135M-Instruct, transformers backend, greedy):

* ``eval``     — ``factory.evaluation.evaluate`` in a fresh warehouse (no cache hits): items, requests
                 through ``StageContext.generate`` (call cache, batching), grading, Parquet + catalog rows,
                 summary with its CI;
* ``baseline`` — the same prompts with the same sampling settings straight into ``backend.generate``
                 (NLL: the same forward passes in a bare loop): no cache, no grading, no files.

Rounds alternate the two; the best of each is reported. ``eval_over_baseline`` is the speed ratio
(baseline seconds / eval seconds, goal ≥ 0.95). ``total_eval_s`` is what ``factory eval
smollm2-135m-instruct`` costs at these sizes, plus ``load_s`` to load the model once.

    python bench/eval.py [--n N] [--batch-size 16] [--threads T] [--rounds 1] [--suites arithmetic,ifeval,nll]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from factory.backends.base import ChatRequest  # noqa: E402
from factory.backends.transformers_backend import TransformersBackend, TransformersConfig  # noqa: E402
from factory.evaluation import nll, problems  # noqa: E402
from factory.evaluation.run import EvalConfig, evaluate  # noqa: E402


def baseline(backend: TransformersBackend, suite: str, cfg: EvalConfig) -> float:
    """Seconds for the bare work: generate the suite's prompts (or score its answers), nothing else."""
    began = time.perf_counter()
    if suite == "nll":
        for item in nll.load_heldout()[:cfg.items("nll")]:
            nll.answer_nll(backend.model, backend.tokenizer, item.instruction, item.answer)
    else:
        items = problems.generate(suite, cfg.items(suite), "eval", cfg.seed)
        backend.generate([ChatRequest.of([{"role": "user", "content": p.prompt}], cfg.params(suite)) for p in items])
    return time.perf_counter() - began


def timed_eval(backend: TransformersBackend, suite: str, cfg: EvalConfig) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        result = evaluate(backend.config, cfg.model_copy(update={"suites": [suite]}), Path(tmp) / "wh",
                          show_progress=False, backend=backend)
        seconds = time.perf_counter() - began
    return seconds, result.summaries.row(0, named=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="items per suite (default: the eval's defaults)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--suites", default="arithmetic,ifeval,nll")
    args = ap.parse_args()

    began = time.perf_counter()
    backend = TransformersBackend(TransformersConfig(batch_size=args.batch_size, threads=args.threads))
    load_s = time.perf_counter() - began
    cfg = EvalConfig(n=args.n)
    backend.generate([ChatRequest.of([{"role": "user", "content": "Hi"}], cfg.params("arithmetic"))])  # warm-up
    per_suite: dict[str, dict] = {}
    for suite in args.suites.split(","):
        best_eval = best_base = float("inf")
        summary: dict = {}
        for r in range(args.rounds):
            base_s = baseline(backend, suite, cfg)
            eval_s, summary = timed_eval(backend, suite, cfg)
            best_base, best_eval = min(best_base, base_s), min(best_eval, eval_s)
            print(f"round {r}: {suite:10s} n={summary['n']:4d} eval {eval_s:7.1f}s  baseline {base_s:7.1f}s  "
                  f"{summary['metric']} {summary['value']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]",
                  flush=True)
        per_suite[suite] = {
            "n": summary["n"], "metric": summary["metric"], "value": round(summary["value"], 4),
            "ci": [round(summary["ci_low"], 4), round(summary["ci_high"], 4)], "eval_s": round(best_eval, 2),
            "baseline_s": round(best_base, 2), "items_per_s": round(summary["n"] / best_eval, 3),
            "eval_over_baseline": round(best_base / best_eval, 3),
        }
    result = {"model": "smollm2-135m-instruct", "batch_size": args.batch_size, "threads": args.threads,
              "rounds": args.rounds,
              "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "load_s": round(load_s, 1),
              "total_eval_s": round(sum(s["eval_s"] for s in per_suite.values()), 1), "suites": per_suite}
    for suite, s in per_suite.items():
        print(f"{suite:10s} {s['eval_s']:7.1f}s  {s['items_per_s']:6.2f} items/s  eval/baseline speed "
              f"{s['eval_over_baseline']:.3f} (goal >= 0.95)")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
