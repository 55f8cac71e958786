"""The training config: one pydantic model, filled from YAML (``--config``) and CLI flags.

It holds only what a training job needs (the release, a base model, hyperparameters), so the same
file trains the same model on any machine that has the release.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory.models import EMBEDDED_LLM
from factory.safe_yaml import read_yaml

#: fields that do not change the weights (where things go, how loudly, how often to checkpoint), and the
#: references whose *content* identifies the job instead (release content hash, base model id)
NOT_HYPERPARAMETERS = frozenset({"release", "base_model", "output", "name", "warehouse", "register_model", "quiet",
                                 "save_steps", "threads", "decontaminate"})


class TrainConfigError(ValueError):
    """A training config that cannot be used; the message names the file and the field."""


class LoraSpec(BaseModel):
    """Low-rank adapters (peft ``LoraConfig``); merged into the base weights when training ends."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (lora_alpha)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainConfig(BaseModel):
    """Everything ``factory train`` needs; every field can be given in YAML or as ``--flag``."""

    model_config = ConfigDict(extra="forbid")

    release: str = Field(description="NAME@VERSION (or NAME@latest) in the warehouse, a release folder, "
                         "or hf://ORG/NAME@VERSION on the Hub")
    method: Literal["sft", "dpo"] = "sft"
    base_model: str = Field(EMBEDDED_LLM, description="embedded name, a .gguf file, a model folder, "
                            "or a registered model name")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             description="registered model name (default: RELEASE-VERSION-METHOD)")
    output: Path | None = Field(None, description="model folder (default: WAREHOUSE/models/NAME)")
    warehouse: Path | None = Field(None, description="where the model is registered and NAME@VERSION is looked up "
                                   "(default: $FACTORY_WAREHOUSE, else ./warehouse)")
    register_model: bool = Field(True, description="add the model to the warehouse's `models` table")
    decontaminate: bool = Field(True, description="refuse rows that overlap the held-out eval suites (factory eval)")

    lora: LoraSpec | None = Field(None, description="train LoRA adapters instead of every weight")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(8, ge=1, description="examples per device step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    learning_rate: float | None = Field(None, gt=0, description="default 5e-5 (full) or 2e-4 (LoRA)")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_length: int = Field(512, ge=8, description="tokens per example (longer ones are truncated)")
    beta: float = Field(0.1, gt=0, description="DPO temperature (dpo only)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when present, else cpu")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    gradient_checkpointing: bool = Field(False, description="less memory, ~30% slower")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (resume point after a crash)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    quiet: bool = Field(False, description="no progress bar")

    @field_validator("release")
    @classmethod
    def _release_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give a release: NAME@VERSION, a release folder or hf://ORG/NAME@VERSION")
        return v.strip()

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.lora else 5e-5)

    def hyperparameters(self) -> dict[str, Any]:
        """What decides the weights, given the release and base model (training.json, the job hash)."""
        data = self.model_dump(mode="json", exclude=set(NOT_HYPERPARAMETERS))
        data["learning_rate"] = self.lr
        return data

    def config_hash(self, *identity: str) -> str:
        """Same hyperparameters, release content and base model: the same job (and work folder to resume)."""
        blob = json.dumps([self.hyperparameters(), *identity], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _errors(exc: ValidationError, source: str) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top)"
        got = f" (got {e['input']!r})" if e["type"] not in ("missing", "extra_forbidden") and "input" in e \
            and not isinstance(e["input"], dict) else ""
        parts.append(f"{loc}: {e['msg']}{got}")
    return f"{source}: " + "; ".join(parts)


def load_train_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """YAML file (if any) overlaid with the CLI values that were given (only those are in ``overrides``)."""
    data: dict[str, Any] = {}
    source = "train config"
    if path is not None:
        source = str(path)

        loaded = read_yaml(path, TrainConfigError)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: expected a mapping of fields, got {type(loaded).__name__}")
        data.update(loaded)
    data.update(overrides)
    if overrides:
        source = f"{source} + command line" if path is not None else "command line"
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError(_errors(exc, source)) from None
