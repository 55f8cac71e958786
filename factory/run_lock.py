"""One process at a time per run id: a second ``factory run`` of the same run refuses (or waits).

Two processes running the same run used to both pay for every call, and the later writer replaced the
earlier one's files. The lock is an OS file lock (``filelock``, released by the kernel when its holder
dies, ``kill -9`` included) at ``<warehouse>/locks/run-<run_id>.lock``; beside it the holder writes its
pid and host so the refusal can say who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from factory.warehouse import Warehouse


class RunBusy(RuntimeError):
    """Another live process holds the run's lock; the message is the one line shown to the user."""


def lock_paths(wh: Warehouse, run_id: str) -> tuple[Path, Path]:
    folder = wh.root / "locks"
    return folder / f"run-{run_id}.lock", folder / f"run-{run_id}.holder.json"


def holder(wh: Warehouse, run_id: str) -> str:
    """``pid P on host H`` of the process holding the run's lock (as it wrote it), or ``pid ?``."""
    info_path = lock_paths(wh, run_id)[1]
    for _ in range(20):  # the holder writes its note right after it acquires: give it a moment
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "pid ? on host ?"


@contextmanager
def run_lock(wh: Warehouse, run_id: str, wait: bool = False,
             log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``run_id``'s lock for the block; raise :class:`RunBusy` (or, with ``wait``, wait for it)."""
    lock_path, info_path = lock_paths(wh, run_id)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        busy = f"run {run_id} is already running ({holder(wh, run_id)})"
        if not wait:
            raise RunBusy(busy + "; wait for it with `factory run --wait`, or stop it") from None
        if log is not None:
            log(busy + "; waiting for it to finish")
        lock.acquire(timeout=-1)
    try:
        info_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}), encoding="utf-8")
        yield
    finally:
        info_path.unlink(missing_ok=True)
        lock.release()
