"""``factory train``: SFT or DPO (full or LoRA) of a base model on a release, with TRL.

What makes a run safe to start, kill and start again:

- every check that can fail on bad input (the release exists and matches its checksums, it has data
  for the method, the base model is found, the output folder is free and writable, the name is not
  taken) runs before anything is written;
- the job works in a hidden folder beside the output, named by the job's hash (hyperparameters,
  release content, base model): checkpoints land there every ``save_steps``, so the same command after
  a crash or ``kill -9`` resumes from the last complete checkpoint, and other settings start afresh;
- the finished model (weights, tokenizer, generation config, ``training.json``) is moved into place
  with one ``os.rename``, then registered in the ``models`` table: a model folder is whole or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from rich.console import Console

from factory.models import EMBEDDED_LLM
from factory.training import registry
from factory.training.config import TrainConfig
from factory.training.data import (
    ReleaseSource,
    TrainingError,
    check_decontaminated,
    check_method_data,
    dpo_dataset,
    load_rows,
    resolve_release,
    sft_dataset,
)
from factory.warehouse import Warehouse, now

TRAINING_JSON = "training.json"
CHECKPOINTS = "checkpoints"
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "dataset-factory")
#: what the loss curve keeps of each logged step
CURVE_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "num_tokens", "rewards/accuracies",
              "rewards/margins")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class BaseModelRef:
    """The model training starts from: as given, its id in lineage, and what ``load_causal_lm`` takes."""

    ref: str
    id: str
    spec: str


@dataclass
class TrainResult:
    path: Path
    entry: registry.ModelEntry
    created: bool  # False: the same job had already finished (nothing trained)
    registered: bool
    training: dict[str, Any]


# -- checks before anything is written -----------------------------------------------------------------


def resolve_base(model: str, wh: Warehouse) -> BaseModelRef:
    """The embedded name, a .gguf file, a model folder, or a name registered in ``wh``'s models table."""
    from factory.backends.base import BackendUnavailable
    from factory.models import resolve_llm

    spec = model
    if model != EMBEDDED_LLM and not Path(model).expanduser().exists():
        found = registry.find_model_folder(model, wh)
        spec = str(found) if found is not None else model
    try:
        folder, gguf = resolve_llm(spec)
    except BackendUnavailable as exc:
        raise TrainingError(f"base model not found: {exc}") from None
    if spec == EMBEDDED_LLM:
        return BaseModelRef(model, EMBEDDED_LLM, spec)
    if gguf is None and (folder / TRAINING_JSON).is_file():
        trained = json.loads((folder / TRAINING_JSON).read_text(encoding="utf-8"))
        return BaseModelRef(model, trained.get("model_id") or str(folder), str(folder))
    path = folder / gguf if gguf else folder
    return BaseModelRef(model, model if spec != model else str(path.resolve()), str(path))


def default_name(source: ReleaseSource, cfg: TrainConfig) -> str:
    return f"{source.name}-{source.version}-{cfg.method}" + ("-lora" if cfg.lora else "")


def _finished(output: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output / TRAINING_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _job_lock(output: Path) -> Iterator[None]:
    """One job per output folder at a time; a second one is refused at once rather than queued."""
    path = output.parent / f".{output.name}.lock"
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TrainingError(f"another `factory train` is writing {output}; wait for it or pick another --output") \
            from None
    try:
        yield
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            path.unlink()


def _prepare_parent(output: Path) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        probe = output.parent / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"output folder {output} is not writable: {exc.strerror or exc}") from None


# -- checkpoints ---------------------------------------------------------------------------------------


def last_checkpoint(folder: Path) -> Path | None:
    """The newest *complete* checkpoint; newer half-written ones (killed while saving) are removed.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint whose state file parses and names
    its own step is complete.
    """
    if not folder.is_dir():
        return None
    found = sorted(((int(m[1]), p) for p in folder.iterdir() if (m := _CHECKPOINT_RE.match(p.name))), reverse=True)
    for step, path in found:
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if state is not None and state.get("global_step") == step:
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None


def _has_checkpoint(work: Path) -> bool:
    folder = work / CHECKPOINTS
    return folder.is_dir() and any(_CHECKPOINT_RE.match(p.name) for p in folder.iterdir())


# -- the run -------------------------------------------------------------------------------------------


def weights_id(folder: Path) -> str:
    """Content hash of the weights (every safetensors file, in name order): the model's id."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda f=fh: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _device(cfg: TrainConfig) -> tuple[str, bool]:
    """(device, bf16): CUDA when asked or present; bf16 mixed precision on GPUs that have it."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise TrainingError("device: cuda was asked for but torch sees no GPU (use device: auto or cpu)")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    if cfg.dtype == "bfloat16":
        return device, True
    return device, cfg.dtype == "auto" and device == "cuda" and torch.cuda.is_bf16_supported()


@contextlib.contextmanager
def _quiet_library_bars() -> Iterator[None]:
    """datasets' map bars and transformers' load/save bars say nothing useful next to the training bar."""
    import datasets
    from transformers.utils import logging as hf_logging

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if was:
            datasets.enable_progress_bars()


def _trainer_args(cfg: TrainConfig, checkpoints: Path, device: str, bf16: bool) -> dict[str, Any]:
    return dict(
        output_dir=str(checkpoints), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, max_length=cfg.max_length, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        report_to="none", disable_tqdm=True, use_cpu=device == "cpu", bf16=bf16, fp16=False,
        activation_checkpointing=cfg.gradient_checkpointing, dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda")


def _build_trainer(cfg: TrainConfig, base: BaseModelRef, dataset: Any, checkpoints: Path, device: str, bf16: bool,
                   callbacks: list[Any]) -> tuple[Any, Any]:
    from factory.models import load_causal_lm

    model, tokenizer = load_causal_lm(base.spec)
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(f"base model {base.ref!r} has no chat template: training on chat turns needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    args = _trainer_args(cfg, checkpoints, device, bf16)
    if cfg.method == "sft":
        from trl import SFTConfig, SFTTrainer

        # prompt/completion data + completion_only_loss: the loss is on the assistant turn only
        trainer = SFTTrainer(model=model, args=SFTConfig(**args, completion_only_loss=True), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    else:
        from trl import DPOConfig, DPOTrainer

        # LoRA: the reference is the base with adapters off; full: a frozen second copy of the base
        ref = None if cfg.lora else load_causal_lm(base.spec)[0]
        trainer = DPOTrainer(model=model, ref_model=ref, args=DPOConfig(**args, beta=cfg.beta),
                             train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                             callbacks=callbacks)
    return trainer, tokenizer


def _save_model(trainer: Any, tokenizer: Any, folder: Path, lora: bool) -> None:
    from transformers import GenerationConfig

    shutil.rmtree(folder, ignore_errors=True)
    model = trainer.model
    if lora:
        model.save_pretrained(folder / "adapter")  # the adapter alone, for peft users
        model = model.merge_and_unload()  # backends load a plain model folder
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not (folder / "generation_config.json").is_file():
        GenerationConfig.from_model_config(model.config).save_pretrained(folder)


def _fsync_tree(folder: Path) -> None:
    for p in [*folder.rglob("*"), folder]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _curve(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in CURVE_KEYS if k in row} for row in log_history if "loss" in row]


def train(cfg: TrainConfig, console: Console | None = None) -> TrainResult:
    """Train (or resume, or find already trained) the model ``cfg`` describes, and register it."""
    started = time.monotonic()
    wh = registry.default_warehouse(cfg.warehouse)
    source = resolve_release(cfg.release, wh)
    config_name = check_method_data(source, cfg.method)
    if cfg.decontaminate:
        check_decontaminated(source, config_name)
    base = resolve_base(cfg.base_model, wh)
    name = cfg.name or default_name(source, cfg)
    output = Path(cfg.output or wh.root / registry.MODELS_DIR / name).expanduser().absolute()
    job = cfg.config_hash(source.content_hash, base.id)

    def entry_of(model_id: str) -> registry.ModelEntry:
        return registry.ModelEntry(name, model_id, output, cfg.method, base.id, source.ref, source.content_hash)

    def already_done() -> TrainResult | None:
        if not output.exists():
            return None
        done = _finished(output)
        if done is None or done.get("job_hash") != job:
            raise TrainingError(f"output folder {output} already exists and holds another model; pick another "
                                "--output or --name, or remove it")
        entry = entry_of(done["model_id"])  # the same job finished before: make sure it is registered
        registered = registry.register(entry, wh) if cfg.register_model else False
        return TrainResult(output, entry, False, registered, done)

    if (done := already_done()) is not None:
        return done
    if cfg.register_model:
        registry.check_name_free(entry_of(""), wh)
    _prepare_parent(output)
    with _job_lock(output):
        if (done := already_done()) is not None:  # finished by another process while we checked
            return done
        work = output.parent / f".{output.name}.train-{job[:12]}"
        work.mkdir(exist_ok=True)
        try:
            training = _run(cfg, source, config_name, base, work, name, job, console)
        except BaseException:
            if not _has_checkpoint(work):  # nothing worth resuming from: leave nothing behind
                shutil.rmtree(work, ignore_errors=True)
            raise
        training["wall_time_s"] = round(time.monotonic() - started, 2)
        final = work / "model"
        (final / TRAINING_JSON).write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(final)
        os.rename(final, output)  # the one step that makes the model visible
        shutil.rmtree(work, ignore_errors=True)
    entry = entry_of(training["model_id"])
    registered = registry.register(entry, wh) if cfg.register_model else False
    return TrainResult(output, entry, True, registered, training)


def _run(cfg: TrainConfig, source: ReleaseSource, config_name: str, base: BaseModelRef, work: Path, name: str,
         job: str, console: Console | None) -> dict[str, Any]:
    """Train in ``work`` (resuming from its checkpoints) and save the model to ``work/model``."""
    import torch
    from transformers import PrinterCallback

    from factory.training.progress import LossProgress

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, bf16 = _device(cfg)
    checkpoints = work / CHECKPOINTS
    resume = last_checkpoint(checkpoints)
    callbacks = [] if cfg.quiet else [LossProgress(f"{cfg.method} {name}", console)]
    with _quiet_library_bars():
        rows = load_rows(source, config_name, work / "datasets")
        dataset = sft_dataset(rows) if cfg.method == "sft" else dpo_dataset(rows)
        trainer, tokenizer = _build_trainer(cfg, base, dataset, checkpoints, device, bf16, callbacks)
        trainer.remove_callback(PrinterCallback)  # the bar shows the loss; training.json keeps every step
        out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final = work / "model"
        _save_model(trainer, tokenizer, final, cfg.lora is not None)
    curve = _curve(trainer.state.log_history)
    tokens = max((row.get("num_tokens", 0) for row in trainer.state.log_history), default=0)
    runtime = float(out.metrics.get("train_runtime", 0.0))
    resumed = int(resume.name.split("-")[1]) if resume else 0
    return {
        "model_id": weights_id(final), "name": name, "method": cfg.method, "lora": cfg.lora is not None,
        "base_model": {"ref": base.ref, "id": base.id},
        "release": {"ref": source.ref, "name": source.name, "version": source.version,
                    "content_hash": source.content_hash, "config": config_name, "origin": source.origin,
                    "rows": source.rows(config_name), "examples": len(dataset)},
        "hyperparameters": cfg.hyperparameters(), "seed": cfg.seed, "job_hash": job,
        "config": cfg.model_dump(mode="json"),
        "steps": trainer.state.global_step, "epochs": round(float(trainer.state.epoch or 0), 4),
        "resumed_from_step": resumed, "loss_curve": curve,
        "first_loss": curve[0]["loss"] if curve else None, "final_loss": curve[-1]["loss"] if curve else None,
        # this process's share when resumed (the Trainer restarts its clock and token count)
        "train_runtime_s": round(runtime, 2), "train_tokens": int(tokens),
        "tokens_per_s": round(tokens / runtime, 1) if runtime else None,
        "device": device, "precision": "bf16" if bf16 else "fp32",
        "torch_threads": torch.get_num_threads(), "libraries": library_versions(),
        "created_at": now().isoformat(timespec="seconds") + "Z",
    }
