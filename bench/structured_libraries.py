"""Grammar libraries on CPU, without the model: compile time and per-token mask time for the factory's schemas.

Why the transformers backend uses llguidance: this replays a valid answer token by token through each
library's matcher (mask for the next token, then accept the token) with SmolLM2's tokenizer, for the
judge verdict and the self-instruct task list. llguidance is a dependency; xgrammar and outlines are not
(xgrammar pulls triton, ~290 MB, on Linux), so they are measured when importable, e.g. after
``pip install --no-deps --target /tmp/xgr xgrammar apache-tvm-ffi`` and ``--extra-path /tmp/xgr``.
The ratio is xgrammar's per-token mask time over llguidance's, measured in the same run.

    python bench/structured_libraries.py [--extra-path DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from factory.models import load_causal_lm  # noqa: E402
from stages.judge import verdict_constraint  # noqa: E402
from stages.self_instruct import SelfInstructConfig, tasks_constraint  # noqa: E402

ANSWERS = {
    "verdict": {"justification": "The response is relevant and correct but very short, so it earns three points.",
                "score": 3},
    "tasks": {"tasks": [{"instruction": "Write a short poem about the first snow of winter.", "input": "",
                         "category": "writing"},
                        {"instruction": "Summarise the paragraph in one sentence.",
                         "input": "Bees visit flowers to collect nectar, and pollinate them as they go.",
                         "category": "writing"}]},
}


def schemas() -> dict[str, str]:
    return {"verdict": verdict_constraint(64).json_schema or "",
            "tasks": tasks_constraint(SelfInstructConfig(), ["advice", "writing"]).json_schema or ""}


def bench_llguidance(tok, schema: str, tokens: list[int], eos: int) -> tuple[float, float]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lln

    ll_tok = llguidance.hf.from_tokenizer(tok)
    began = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
    compile_s = time.perf_counter() - began
    mask = lln.allocate_token_bitmask(1, ll_tok.vocab_size)
    began = time.perf_counter()
    for t in [*tokens, eos]:
        lln.fill_next_token_bitmask(matcher, mask, 0)
        assert matcher.consume_token(t), matcher.get_error()
    return compile_s, (time.perf_counter() - began) / (len(tokens) + 1)


def bench_xgrammar(tok, schema: str, tokens: list[int], eos: int, vocab: int) -> tuple[float, float]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    began = time.perf_counter()
    compiled = xgr.GrammarCompiler(info, cache_enabled=False).compile_json_schema(schema, any_whitespace=False,
                                                                                separators=(",", ":"))
    matcher = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - began
    mask = xgr.allocate_token_bitmask(1, vocab)
    began = time.perf_counter()
    for t in [*tokens, eos]:
        matcher.fill_next_token_bitmask(mask, 0)
        assert matcher.accept_token(t)
    return compile_s, (time.perf_counter() - began) / (len(tokens) + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extra-path", action="append", default=[], help="folder with optional libraries")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path[1:1] = args.extra_path
    model, tok = load_causal_lm("smollm2-135m-instruct")
    vocab, eos = model.config.vocab_size, tok.eos_token_id
    libraries = {"llguidance": lambda s, t: bench_llguidance(tok, s, t, eos)}
    try:
        import xgrammar  # noqa: F401

        libraries["xgrammar"] = lambda s, t: bench_xgrammar(tok, s, t, eos, vocab)
    except ImportError:
        print("xgrammar not importable: measuring llguidance only (see --extra-path)")
    result: dict[str, float | int] = {}
    for name, schema in schemas().items():
        tokens = tok(json.dumps(ANSWERS[name], separators=(",", ":")), add_special_tokens=False).input_ids
        for lib, fn in libraries.items():
            runs = [fn(schema, tokens) for _ in range(args.repeats)]
            compile_ms = min(r[0] for r in runs) * 1000
            mask_us = min(r[1] for r in runs) * 1e6
            result[f"{lib}_{name}_compile_ms"] = round(compile_ms, 2)
            result[f"{lib}_{name}_mask_us_per_token"] = round(mask_us, 1)
            print(f"{name:8s} {lib:10s} compile {compile_ms:8.2f} ms, mask+accept {mask_us:8.1f} us/token "
                  f"({len(tokens)} tokens)")
        if "xgrammar" in libraries:
            result[f"{name}_mask_xgrammar_over_llguidance"] = round(
                result[f"xgrammar_{name}_mask_us_per_token"] / result[f"llguidance_{name}_mask_us_per_token"], 3)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
