"""The ``factory train`` command: flags and ``--config`` into a ``TrainConfig``, errors as one line."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer


def train(
    release: Annotated[str | None, typer.Argument(help="NAME@VERSION, NAME@latest, a release folder, or "
                                                  "hf://ORG/NAME@VERSION (or `release:` in --config)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of training fields; "
                                                "flags override it")] = None,
    method: Annotated[str | None, typer.Option(help="sft (the release's sft rows) or dpo (its preference "
                                               "pairs)")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", "-m", help="embedded name, .gguf, model folder "
                                                   "or registered model name")] = None,
    name: Annotated[str | None, typer.Option(help="registered model name (default: RELEASE-VERSION-METHOD)")]
    = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="model folder (default: "
                                                "WAREHOUSE/models/NAME)")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapters (merged at the end) or every "
                                              "weight")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (implies --lora)")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the data")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after N optimizer steps (overrides epochs)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="examples per step")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="gradient accumulation steps")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="default 5e-5 full, 2e-4 LoRA")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example")] = None,
    beta: Annotated[float | None, typer.Option(help="DPO beta")] = None,
    seed: Annotated[int | None, typer.Option(help="seed (same seed, same weights)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto (bf16 on GPU), float32 or bfloat16")] = None,
    save_steps: Annotated[int | None, typer.Option(help="checkpoint every N steps")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    register: Annotated[bool | None, typer.Option("--register/--no-register", help="add to the models table")]
    = None,
    decontaminate: Annotated[bool | None, typer.Option("--decontaminate/--no-decontaminate", help="refuse rows "
                                                       "that overlap the eval suites (default: on)")] = None,
    quiet: Annotated[bool | None, typer.Option("--quiet", "-q", help="no progress bar")] = None,
    warehouse: Annotated[Path | None, typer.Option("--warehouse", "-w", envvar="FACTORY_WAREHOUSE",
                                                   help="where NAME@VERSION is found and the model registered")]
    = None,
) -> None:
    """Fine-tune a model on a release (SFT or DPO, full or LoRA); resumes after a crash; registers it."""
    from factory.terminal import err, fail, out
    from factory.training.config import TrainConfigError, load_train_config

    overrides: dict[str, Any] = {
        "release": release, "method": method, "base_model": base_model, "name": name, "output": output,
        "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "grad_accum": grad_accum,
        "learning_rate": learning_rate, "max_length": max_length, "beta": beta, "seed": seed, "device": device,
        "dtype": dtype, "save_steps": save_steps, "threads": threads, "register_model": register, "quiet": quiet,
        "decontaminate": decontaminate,
        "warehouse": warehouse}
    given = {k: v for k, v in overrides.items() if v is not None}
    if lora_r is not None:
        given["lora"] = {"r": lora_r}
    elif lora is not None:
        given["lora"] = {} if lora else None  # --full overrides a config's lora section
    try:
        cfg = load_train_config(config, given)
    except TrainConfigError as exc:
        raise fail(str(exc)) from None
    from factory.training.data import TrainingError
    from factory.training.registry import ModelNameTaken
    from factory.training.trainer import train as run_training

    try:
        with warnings.catch_warnings():  # deprecation notices between TRL, peft and transformers: not the user's
            warnings.simplefilter("ignore", FutureWarning)
            result = run_training(cfg, console=err)
    except (TrainingError, ModelNameTaken) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # a failure inside TRL/torch: one line, the traceback with FACTORY_DEBUG=1
        if os.environ.get("FACTORY_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise fail(f"training failed: {type(exc).__name__}: {first} (FACTORY_DEBUG=1 shows the traceback; "
                   "the same command resumes from the last checkpoint)") from None
    t = result.training
    verb = "trained" if result.created else "already trained (nothing to do):"
    loss = f"loss {t['first_loss']:.4f} -> {t['final_loss']:.4f}, " if t.get("final_loss") is not None else ""
    out.print(f"{verb} [bold]{result.entry.name}[/] (id {result.entry.id}) from {t['base_model']['ref']} on "
              f"{t['release']['ref']}: {t['steps']} steps, {loss}{t['wall_time_s']:.0f} s\n{result.path}"
              + ("" if result.registered or not cfg.register_model else "\n(already in the models table)"))
