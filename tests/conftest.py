"""Shared fixtures: the real embedded model (loaded once per session), warehouses and seed files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DEMO_SEEDS = ROOT / "data" / "seeds" / "demo_seeds.jsonl"


@pytest.fixture(scope="session")
def embedded_backend():
    """SmolLM2-135M-Instruct through transformers: the real default backend."""
    from factory.backends.transformers_backend import TransformersBackend, TransformersConfig

    return TransformersBackend(TransformersConfig(batch_size=8))


@pytest.fixture
def warehouse(tmp_path: Path):
    from factory.warehouse import Warehouse

    return Warehouse(tmp_path / "warehouse")


@pytest.fixture
def seed_rows() -> list[dict]:
    return [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
