"""Which backend answers the eval: the model argument, plus a YAML file and flags for everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from factory.backends.base import BackendConfig
from factory.evaluation.run import EvalError
from factory.registry import discriminated_union
from factory.safe_yaml import read_yaml


def backend_union() -> Any:
    from factory.backends import registered_backends

    return discriminated_union([b.config for b in registered_backends().values()])


def read_backend_yaml(path: Path) -> dict[str, Any]:
    """A YAML file holding backend options, either bare (``kind: openai …``) or as a ``backend:`` section
    (so a pipeline file can be passed as it is)."""

    data = read_yaml(path, EvalError, "backend config file")
    if isinstance(data, dict) and isinstance(data.get("backend"), dict):
        data = data["backend"]
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected a mapping of backend options (kind, model, batch_size…) or a "
                        "`backend:` section")
    return dict(data)


def backend_config(model: str, kind: str | None = None, config_file: Path | None = None,
                   overrides: dict[str, Any] | None = None) -> BackendConfig:
    """The backend for ``model``: options from ``config_file``, then ``kind`` and ``overrides``; the model
    argument always wins. Defaults to the embedded transformers backend."""
    data = read_backend_yaml(config_file) if config_file else {}
    if kind:
        data["kind"] = kind
    data.setdefault("kind", "transformers")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data["model"] = model
    source = str(config_file) if config_file else "backend"
    try:
        return TypeAdapter(backend_union()).validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'kind'}: {e['msg']}" for e in exc.errors())
        raise EvalError(f"{source}: {problems}") from None
