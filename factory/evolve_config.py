"""The ``evolve:`` section of a pipeline: rounds, stopping rule, replay, training and evaluation.

Its own module, below the pipeline config that holds it and the loop (factory/evolve.py) that runs it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factory.names import Name

VERIFIABLE = ("arithmetic", "ifeval")


class EvolveTrain(BaseModel):
    """How each round's model is trained (``options`` are ``factory train`` fields: epochs, lora…)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["sft", "dpo", "sft+dpo"] = "sft"
    start_from: Literal["base", "previous"] = Field(
        "base", description="base: every round fine-tunes the base model on the round's data (as ReST-EM "
        "restarts); previous: continue from model_r")
    options: dict[str, Any] = Field(default_factory=dict, description="factory train fields (epochs, lora, …)")

    @field_validator("options")
    @classmethod
    def _valid_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        from factory.training.config import TrainConfig

        reserved = {"release", "method", "base_model", "name", "output", "warehouse"} & set(value)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))}: set by evolve for each round; remove it")
        TrainConfig(release="check@1.0.0", **value)  # errors name the field
        return value


class EvolveEval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    suites: list[Literal["arithmetic", "ifeval", "nll"]] = ["arithmetic", "ifeval", "nll"]
    n: int | None = Field(None, ge=1, description="items per suite (default: each suite's own)")
    seed: int = 0


class EvolveConfig(BaseModel):
    """The ``evolve:`` section of a pipeline."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(2, ge=1, le=100)
    patience: int = Field(1, ge=1, description="stop after this many rounds in a row without a significant gain")
    release: Name | None = Field(None, description="release name (default: PIPELINE-evolve-HASH6, the hash of "
                                "what decides the rounds, so another setup never collides with these versions)")
    include_gold: bool = Field(False, description="also publish the seed tasks' reference answers (source seed: "
                               "human text replayed every round, so training on the model's own answers does not "
                               "drift; the problems' bare reference answers are never added)")
    train: EvolveTrain = EvolveTrain()
    eval: EvolveEval = EvolveEval()

    @model_validator(mode="after")
    def _verifiable(self) -> EvolveConfig:
        if not set(self.eval.suites) & set(VERIFIABLE):
            raise ValueError("eval.suites needs arithmetic or ifeval: the stopping rule is the gain on them")
        return self
