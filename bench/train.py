"""SFT training tokens/s through ``factory train`` vs a bare TRL script, on the same release and settings.

Both arms run as fresh processes on the same release folder (the demo seed set's reference answers,
published with ``include_gold``), the same base model (the embedded SmolLM2-135M-Instruct, converted
once), the same batch, sequence length, learning rate, steps and seed, fp32 on the CPU, no checkpoint
inside the measured steps. The bare arm is what a TRL user would write by hand: ``load_dataset`` on the
folder, prompt/completion conversations, ``SFTTrainer``. ``factory train`` adds the checksum check,
the decontamination check, the progress bar, the atomic save, ``training.json`` and registration.

Tokens/s is TRL's own count of trained tokens (``num_tokens``: non-padding tokens) over the training
loop's runtime (``train_runtime``); the end-to-end figure divides the same tokens by the whole process's
wall time (imports, model load, data preparation, save). The arms alternate (bare, factory, bare, …)
so that a busy neighbour slows both alike; each arm's median is compared. Goal: ratio >= 0.95.

    .venv/bin/python bench/train.py [--steps 6] [--batch-size 4] [--rounds 2] [--max-length 512]

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def make_release(wh_root: Path) -> Path:
    """The seed set's reference answers as a release (no model calls)."""
    from factory.config import parse_pipeline
    from factory.runner import run_pipeline

    spec = {"name": "bench-seeds", "warehouse": str(wh_root), "seed": 0,
            "backend": {"kind": "transformers"},
            "stages": [{"kind": "seeds", "paths": [str(ROOT / "data" / "seeds")]},
                       {"kind": "publish", "dataset": "bench-seeds", "include_gold": True}]}
    run_pipeline(parse_pipeline(spec), show_progress=False)
    return wh_root / "releases" / "bench-seeds" / "1.0.0"


def bare_worker(args: argparse.Namespace) -> None:
    """The hand-written TRL script (run in its own process by the benchmark)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from factory.models import load_causal_lm

    started = time.monotonic()
    rows = datasets.load_dataset(args.release, "sft", split="train", cache_dir=str(Path(args.out) / "ds"))
    ds = rows.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                  remove_columns=rows.column_names)
    model, tok = load_causal_lm("smollm2-135m-instruct")
    config = SFTConfig(output_dir=str(Path(args.out) / "ck"), per_device_train_batch_size=args.batch_size,
                       learning_rate=5e-5, max_steps=args.steps, max_length=args.max_length, seed=0, data_seed=0,
                       logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                       bf16=False, activation_checkpointing=False, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    trainer.save_model(str(Path(args.out) / "model"))
    tokens = max(r.get("num_tokens", 0) for r in trainer.state.log_history)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    print("WORKER " + json.dumps({"tokens": tokens, "runtime": out.metrics["train_runtime"], "losses": losses,
                                  "process_s": time.monotonic() - started}))


def run_bare(release: Path, out: Path, args: argparse.Namespace) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--bare-worker", "--release", str(release), "--out", str(out),
                           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                           "--max-length", str(args.max_length)], capture_output=True, text=True, env=ENV, cwd=ROOT)
    wall = time.monotonic() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WORKER ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"bare TRL arm failed:\n{proc.stderr[-3000:]}")
    got = json.loads(line.removeprefix("WORKER "))
    return {"tokens": got["tokens"], "runtime": got["runtime"], "wall": wall, "losses": got["losses"]}


def run_factory(release: Path, out: Path, wh: Path, args: argparse.Namespace) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "factory.cli", "train", str(release), "-w", str(wh), "-o", str(out),
                           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
                           str(args.max_length), "--lr", "5e-5", "--seed", "0", "--device", "cpu",
                           "--save-steps", str(args.steps + 1), "--no-register", "-q"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    wall = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"factory train failed:\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    t = json.loads((out / "training.json").read_text())
    return {"tokens": t["train_tokens"], "runtime": t["train_runtime_s"], "wall": wall,
            "losses": [r["loss"] for r in t["loss_curve"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2, help="runs per arm, alternating")
    ap.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--release", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_worker:
        bare_worker(args)
        return

    from factory.models import load_causal_lm

    load_causal_lm("smollm2-135m-instruct")  # convert the GGUF once, outside both arms
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        release = make_release(tmp_path / "wh")
        bare, ours = [], []
        for i in range(args.rounds):
            bare.append(run_bare(release, tmp_path / f"bare-{i}", args))
            ours.append(run_factory(release, tmp_path / f"factory-{i}", tmp_path / "wh", args))
            print(f"round {i + 1}: bare {bare[-1]['tokens'] / bare[-1]['runtime']:.1f} tok/s "
                  f"({bare[-1]['wall']:.0f} s), factory {ours[-1]['tokens'] / ours[-1]['runtime']:.1f} tok/s "
                  f"({ours[-1]['wall']:.0f} s)", flush=True)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r["tokens"] / r[key] for r in runs)

    same_losses = all(abs(a - b) < 1e-4 for x, y in zip(bare, ours, strict=True)
                      for a, b in zip(x["losses"], y["losses"], strict=True))
    result = {
        "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "rounds": args.rounds,
        "tokens_per_run": ours[0]["tokens"], "bare_tokens_per_s": round(med(bare, "runtime"), 1),
        "factory_tokens_per_s": round(med(ours, "runtime"), 1),
        "ratio": round(med(ours, "runtime") / med(bare, "runtime"), 3),
        "bare_end_to_end_tokens_per_s": round(med(bare, "wall"), 1),
        "factory_end_to_end_tokens_per_s": round(med(ours, "wall"), 1),
        "end_to_end_ratio": round(med(ours, "wall") / med(bare, "wall"), 3),
        "bare_wall_s": [round(r["wall"], 1) for r in bare], "factory_wall_s": [round(r["wall"], 1) for r in ours],
        "same_loss_curve": same_losses, "goal_ratio": 0.95, "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(f"factory train {result['factory_tokens_per_s']} tok/s vs bare TRL {result['bare_tokens_per_s']} tok/s: "
          f"ratio {result['ratio']} (end to end {result['end_to_end_ratio']}); same loss curve: {same_losses}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
