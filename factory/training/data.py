"""Reading a release for training: only the release folder (or its Hub repo at a tag), checked first.

``datasets.load_dataset`` reads the folder the way any Hub user would; before that, every file is
checked against ``manifest.json``'s sha256 (``factory.releases.Release.verify``, which needs nothing but
the folder), so a tampered release never reaches the trainer. Rows become TRL's conversational
formats: prompt/completion for SFT (the loss falls on the assistant turn only) and
prompt/chosen/rejected for DPO. Releases made before the conversational columns existed are converted
from their string columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory import releases
from factory.conversations import messages_of_row, preference_of_row
from factory.release_card import SPLIT
from factory.warehouse import Warehouse

HUB_PREFIX = "hf://"
#: the release config each method trains on
METHOD_CONFIG = {"sft": "sft", "dpo": "preference"}


class TrainingError(RuntimeError):
    """A training job that cannot start or go on; the message is one line saying what to fix."""


@dataclass(frozen=True)
class ReleaseSource:
    """A verified release folder and what training.json records about it."""

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    origin: str  # warehouse | folder | hub

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def configs(self) -> list[str]:
        return list(self.manifest.get("configs", {}))

    def rows(self, config: str) -> int:
        return int(self.manifest.get("configs", {}).get(config, {}).get("rows", 0))


def _open_folder(folder: Path, origin: str) -> ReleaseSource:
    if not (folder / "manifest.json").exists():
        raise TrainingError(f"{folder} is not a release folder (no manifest.json)")
    try:
        manifest = releases.load_manifest(folder)  # a corrupted or invalid one is one line naming the file
        release = releases.Release(manifest["name"], manifest["version"], folder, manifest)
        release.verify()
    except releases.ReleaseError as exc:
        raise TrainingError(str(exc)) from None
    return ReleaseSource(manifest["name"], manifest["version"], folder.resolve(), manifest, origin)


def _from_hub(ref: str) -> ReleaseSource:
    repo, _, version = ref.removeprefix(HUB_PREFIX).removeprefix("datasets/").partition("@")
    if repo.count("/") != 1 or not version:
        raise TrainingError(f"hub release {ref!r} must be hf://ORG/NAME@VERSION (the version is the repo's tag)")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, repo_type="dataset", revision=version)
    except Exception as exc:  # offline, no such repo or tag, refused token: one line, never the headers
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TrainingError(f"cannot fetch {repo}@{version} from the Hub: {type(exc).__name__}: {first}") from None
    return _open_folder(Path(folder), "hub")


def resolve_release(ref: str, warehouse: Warehouse) -> ReleaseSource:
    """``hf://ORG/NAME@VERSION``, a release folder, or NAME@VERSION / NAME@latest in the warehouse."""
    if ref.startswith(HUB_PREFIX):
        return _from_hub(ref)
    path = Path(ref).expanduser()
    if "@" not in ref and (path.is_dir() or os.sep in ref):
        if not path.is_dir():
            raise TrainingError(f"no release folder {path}")
        return _open_folder(path, "folder")
    try:
        rel = releases.open(ref, warehouse)
    except releases.ReleaseError as exc:
        raise TrainingError(str(exc)) from None
    return ReleaseSource(rel.name, rel.version, rel.path.resolve(), rel.manifest, "warehouse")


def check_method_data(source: ReleaseSource, method: str) -> str:
    """The release config ``method`` trains on, or a clear error when the release has none of it."""
    config = METHOD_CONFIG[method]
    if config not in source.configs or source.rows(config) == 0:
        hint = (" (DPO needs chosen/rejected pairs: publish a run whose judge stage has pairwise: true)"
                if method == "dpo" else "")
        raise TrainingError(f"release {source.ref} has no {config} data for {method}; it has: "
                            f"{', '.join(source.configs) or 'nothing'}{hint}")
    return config


def check_decontaminated(source: ReleaseSource, config: str) -> None:
    """Refuse training rows that overlap the held-out eval suites (``factory eval``'s decontamination check)."""
    import polars as pl

    from factory.evaluation.decontam import ContaminationError, assert_decontaminated

    rows = pl.read_parquet([source.path / p for p in source.manifest["configs"][config]["files"]])
    try:
        assert_decontaminated(rows, f"release {source.ref} ({config})")
    except ContaminationError as exc:
        raise TrainingError(f"{exc} (--no-decontaminate trains anyway)") from None


def load_rows(source: ReleaseSource, config: str, cache_dir: Path):
    """The config's train split through ``datasets.load_dataset`` on the (verified) folder."""
    import datasets

    try:
        return datasets.load_dataset(str(source.path), config, split=SPLIT, cache_dir=str(cache_dir))
    except Exception as exc:  # a card or shard `datasets` cannot read
        raise TrainingError(f"datasets cannot load {source.ref} ({config}): {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None


def _sft_example(row: dict[str, Any]) -> dict[str, Any]:
    messages = messages_of_row(row)
    if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        return {"prompt": messages[:-1] or messages, "completion": [], "keep": False}
    return {"prompt": messages[:-1], "completion": messages[-1:], "keep": True}


def sft_dataset(rows):
    """prompt/completion conversations: TRL masks the prompt, so the loss is on the assistant turn only."""
    ds = rows.map(_sft_example, remove_columns=rows.column_names, desc="conversations")
    ds = ds.filter(lambda r: r["keep"]).remove_columns("keep")
    if len(ds) == 0:
        raise TrainingError("the release's sft rows have no assistant answers to train on")
    return ds


def dpo_dataset(rows):
    """prompt/chosen/rejected as conversations (the chat template is applied by DPOTrainer)."""
    ds = rows.map(preference_of_row, remove_columns=rows.column_names, desc="conversations")
    if len(ds) == 0:
        raise TrainingError("the release's preference config has no pairs")
    return ds
