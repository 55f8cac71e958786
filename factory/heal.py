"""What a run does on start, under its lock: tidy what a killed process left behind.

Above the storage layer (it registers release folders through factory.releases), below the runner.
"""

from __future__ import annotations

from factory.integrity import sweep_temporaries, sweep_unregistered
from factory.releases import sync_catalog
from factory.warehouse import Warehouse


def heal_on_start(wh: Warehouse, run_id: str) -> None:
    """Tidy what a killed process left (call it holding the run's lock): the run's temporary files of
    dead writers and its files written but never registered, and release folders moved into place but
    never registered (a kill between the rename and ``register``). ``factory repair`` sweeps every run."""
    sweep_temporaries(wh.root, run_id)
    sweep_unregistered(wh, run_id)
    if (wh.root / "releases").is_dir():
        sync_catalog(wh)
