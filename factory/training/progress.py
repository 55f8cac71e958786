"""A rich progress bar for the trainer: steps done, the latest loss, time left."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class LossProgress(TrainerCallback):
    """Replaces the Trainer's tqdm bar: one line with the step count and the running loss.

    On resume the bar starts at the checkpoint's step, so the count and time left stay right. Where
    the output is not a terminal (a log file, a CI job) a bar cannot redraw, so a plain line is
    printed every ``every`` steps instead.
    """

    def __init__(self, description: str, console: Console | None = None, every: int = 10):
        self.description = description
        self.console = console or Console(stderr=True)
        self.every = every
        self.started = time.monotonic()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, completed=state.global_step,
                                           loss="…")

    def on_step_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.task is None or not logs or "loss" not in logs:
            return
        self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
        if not self.console.is_terminal and (state.global_step % self.every == 0 or state.global_step in
                                             (1, state.max_steps)):
            self.console.print(f"{self.description}: step {state.global_step}/{state.max_steps} loss "
                               f"{logs['loss']:.4f} ({time.monotonic() - self.started:.0f} s)", highlight=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.progress.update(self.task, completed=state.global_step)
        self.progress.stop()
