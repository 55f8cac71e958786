"""The pipeline file: one YAML document, validated with pydantic before any model loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from factory.backends import registered_backends
from factory.backends.base import BackendConfig
from factory.evolve_config import EvolveConfig
from factory.executors import registered_executors
from factory.executors.base import ExecutorConfig
from factory.executors.local import LocalExecutorConfig
from factory.names import Name
from factory.records import canonical_json
from factory.registry import discriminated_union
from factory.safe_yaml import read_yaml
from factory.stage import StageConfig, registered


class ConfigError(ValueError):
    """A pipeline file that cannot be used; the message names the file, field path and expectation."""


class PipelineBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: str = ""
    warehouse: Path = Path("warehouse")
    seed: int = 0
    round: int = Field(0, ge=0)
    backend: BackendConfig | None = None
    stages: list[StageConfig] = Field(min_length=1)
    evolve: EvolveConfig | None = Field(None, description="rounds of generate → train → evaluate (factory evolve)")
    #: where map stages run (factory/executors/): not part of the data, so left out of the config hash
    executor: ExecutorConfig = Field(default_factory=LocalExecutorConfig, description="local | ray")

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineBase:
        names = [s.stage_name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)} (set `name:`)")
        made: set[str] = set()
        for i, stage in enumerate(self.stages):
            missing = [t for t in stage.consumes if t not in made]
            if missing:
                raise ValueError(f"stages.{i} ({stage.stage_name}) reads {', '.join(missing)}, which no earlier stage "
                                 "makes: put it after one that does (seeds/self_instruct make tasks, self_label "
                                 "makes samples)")
            made.update(stage.produces)
        if self.backend is None and any(s.uses_backend for s in self.stages):
            needing = [s.stage_name for s in self.stages if s.uses_backend]
            raise ValueError(f"stages {needing} need an LLM: add a `backend:` section")
        return self

    @property
    def config_hash(self) -> str:
        """Hash of what defines the data (not where it is stored): run ids and sampling derive from it,
        so moving the warehouse or overriding it with ``--warehouse`` neither forks a run nor changes it."""
        data = self.model_dump(mode="json", exclude={"warehouse": True, "evolve": True, "executor": True,
                                                     "backend": {"max_error_fraction": True}})
        return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def pipeline_model() -> type[PipelineBase]:
    """The pipeline model with every registered stage and backend in its discriminated unions."""
    stage_union = discriminated_union([s.config for s in registered().values()])
    backend_union = discriminated_union([b.config for b in registered_backends().values()])
    executor_union = discriminated_union([e.config for e in registered_executors().values()])
    return create_model("PipelineConfig", __base__=PipelineBase,
                        backend=(backend_union | None, None),
                        executor=(executor_union, Field(default_factory=LocalExecutorConfig)),
                        stages=(list[stage_union], Field(min_length=1)))


def format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the pipeline file:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  - {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def parse_pipeline(data: Any, source: str = "<pipeline>") -> PipelineBase:
    """Validate strictly, as the JSON the YAML stands for: ``seed: true`` or ``n: "3"`` is an error, not 1 or 3
    (JSON mode still reads paths, enums and dates from strings)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with `name`, `backend` and `stages`, got "
                          f"{type(data).__name__}")
    try:
        return pipeline_model().model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None


def load_pipeline(path: str | Path) -> PipelineBase:
    """Read and validate a pipeline YAML file; relative paths in it are kept relative to the CWD."""
    return parse_pipeline(read_yaml(path, ConfigError, "pipeline file"), str(path))
