"""Progress for long work, on stderr: a rich bar on a terminal, plain periodic lines otherwise (CI)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console


def interactive(console: Console) -> bool:
    return console.is_terminal and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


class TrainProgress:
    """Context manager giving a ``callback(StepEvent)`` for :func:`maskprobe.training.train_mask`.

    Plain mode prints one line at most every ``plain_every`` seconds (and at the end).
    """

    def __init__(self, console: Console, task: str, steps: int, start: int = 0, quiet: bool = False, plain_every: float = 5.0):
        self.console, self.task, self.steps, self.start = console, task, steps, start
        self.quiet, self.plain_every = quiet, plain_every
        self._bar: Any = None
        self._last_plain = 0.0

    def __enter__(self) -> Callable[[Any], None]:
        if not self.quiet and interactive(self.console):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "task loss {task.fields[loss]:>9}  density {task.fields[density]:>6}  {task.fields[metric]}  "
                    "{task.fields[rate]:>9}"
                ),  # fmt: skip
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._id = self._bar.add_task(self.task, total=self.steps, completed=self.start, loss="-", density="-", metric="",
                                          rate="-")  # fmt: skip
        return self.update

    def update(self, ev: Any) -> None:
        if self.quiet:
            return
        rate = (ev.step - self.start) / ev.elapsed if ev.elapsed > 0 else 0.0
        # the task's own loss and metric, not the total: the regulariser dominates the total and hides a collapse
        metric = f"{ev.metric_name or 'metric'} {ev.metric:.4f}" if ev.metric is not None else ""
        if self._bar is not None:
            self._bar.update(self._id, completed=ev.step, loss=f"{ev.task_loss:.4f}", density=f"{ev.density:.3f}", metric=metric,
                             rate=f"{rate:.1f} it/s")  # fmt: skip
            return
        now = time.monotonic()
        if now - self._last_plain >= self.plain_every or ev.step == ev.steps:
            self._last_plain = now
            self.console.print(
                f"{ev.task}: step {ev.step}/{ev.steps} task loss {ev.task_loss:.4f} (total {ev.loss:.4f}) density "
                f"{ev.density:.4f}{'  ' + metric if metric else ''} {rate:.1f} steps/s",
                markup=False,
                highlight=False,
            )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def status_line(console: Console, quiet: bool = False) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            console.print(f"[dim]{msg}[/dim]" if interactive(console) else msg)

    return say
