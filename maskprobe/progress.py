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


ETA_WIDTH = 8  # "10:00:00"; rich writes "-:--:--" before its first estimate
BAR_WIDTH = (10, 40)  # the bar shrinks to 10 columns before any number is left out


def shorten(label: str, width: int) -> str:
    """``label`` cut to ``width`` columns, keeping what tells runs apart: ``keep-outputs beta=1e-05`` becomes
    ``keep-ou… beta=1e-05`` (the settings after the first space survive; the task name is cut)."""
    if len(label) <= width:
        return label
    name, _, settings = label.partition(" ")
    if settings and len(settings) + 3 <= width:
        return name[: width - len(settings) - 2] + "… " + settings
    return label[: max(width - 1, 0)] + "…"


def stats_text(room: int, task_loss: float | None, density: float | None, metric_name: str = "", metric: float | None = None,
               rate: float | None = None) -> str:  # fmt: skip
    """The numbers beside the bar, in the longest form that fits ``room`` columns: all of them spelled out, then
    abbreviated, then without the rate, the task loss, the metric; "" when not even the density fits. Numbers have
    fixed widths, so that the bar does not jump while it runs."""
    loss = "-" if task_loss is None else f"{task_loss:.4g}"
    dens = "-" if density is None else f"{100 * density:.1f}%"
    met = "" if metric is None else (f"{metric:.4f}" if abs(metric) < 10 else f"{metric:.1f}")
    speed = "-" if rate is None else f"{rate:.1f}"
    shown = f" {metric_name or 'metric'} {met:>7}" if met else ""
    forms = [
        f"task loss {loss:>8}  density {dens:>6}{' ' if met else ''}{shown}  {speed:>6} it/s",
        f"loss {loss:>8} dens {dens:>6}{shown} {speed:>5}/s",
        f"loss {loss:>8} dens {dens:>6}{shown}",
        f"dens {dens:>6}{shown}",
        f"dens {dens:>6}",
    ]
    return next((f for f in forms if len(f) <= room), "")


def bar_layout(width: int, label: str, steps: int, stats: str) -> tuple[str, int, str]:
    """``(label, bar width, stats)`` for one progress line of at most ``width`` columns: the step counter and the
    ETA always, the label up to a third of the line, the bar between :data:`BAR_WIDTH`, the numbers in what is left
    (their shorter forms via :func:`stats_text` are the caller's; here they are only dropped when nothing fits)."""
    counter = 2 * len(str(steps)) + 1
    lab = shorten(label, max(12, width // 3))
    fixed = len(lab) + counter + ETA_WIDTH + 3  # three single-space gaps between label, bar, counter, ETA
    rest = width - fixed - 1  # the gap before the numbers
    bar = max(BAR_WIDTH[0], min(BAR_WIDTH[1], rest - len(stats)))
    if len(stats) > rest - bar:
        stats = ""
        bar = max(1, min(BAR_WIDTH[1], rest + 1))
    return lab, bar, stats


class TrainProgress:
    """Context manager giving a ``callback(StepEvent)`` for :func:`maskprobe.learning.training.train_mask`.

    ``task`` is the run's label (the task's name, plus ``beta=``/``seed=`` in a sweep): every line says it. On a
    terminal, one bar line that fits the terminal's width: label, bar, step counter, ETA, then as many of task loss,
    density, metric and steps/s as fit (:func:`bar_layout`). Otherwise plain lines, at most one every
    ``plain_every`` seconds (and at the end).
    """

    def __init__(self, console: Console, task: str, steps: int, start: int = 0, quiet: bool = False, plain_every: float = 5.0):
        self.console, self.task, self.steps, self.start = console, task, steps, start
        self.quiet, self.plain_every = quiet, plain_every
        self._bar: Any = None
        self._last_plain = 0.0

    def _fields(self, ev: Any = None, rate: float | None = None) -> dict[str, Any]:
        """Label, stats and (as a side effect) the bar's width for the console's current width."""
        width = self.console.width
        counter = 2 * len(str(self.steps)) + 1
        room = width - len(shorten(self.task, max(12, width // 3))) - counter - ETA_WIDTH - 4 - BAR_WIDTH[0]
        if ev is None:
            stats = stats_text(room, None, None)
        else:
            stats = stats_text(room, ev.task_loss, ev.density, ev.metric_name, ev.metric, rate)
        label, bar, stats = bar_layout(width, self.task, self.steps, stats)
        self._bar_column.bar_width = bar
        return {"label": label, "stats": stats}

    # the bars open at once (train --together): one rich Progress, one line each (rich < 15 refuses a second live
    # display); [progress, bar column, users] while any is open
    _shared: list[Any] | None = None

    def __enter__(self) -> Callable[[Any], None]:
        if not self.quiet and interactive(self.console):
            shared = TrainProgress._shared
            if shared is not None and shared[0].console is self.console:
                self._bar, self._bar_column = shared[0], shared[1]
                shared[2] += 1
            else:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
                from rich.table import Column

                counter = 2 * len(str(self.steps)) + 1
                self._bar_column = BarColumn(bar_width=BAR_WIDTH[1])
                self._bar = Progress(
                    TextColumn("{task.fields[label]}", markup=False, table_column=Column(no_wrap=True)),
                    self._bar_column,
                    MofNCompleteColumn(table_column=Column(width=counter, justify="right", no_wrap=True)),
                    TimeRemainingColumn(table_column=Column(width=ETA_WIDTH, no_wrap=True)),
                    TextColumn("{task.fields[stats]}", markup=False, table_column=Column(no_wrap=True)),
                    console=self.console,
                    transient=False,
                )
                self._bar.start()
                TrainProgress._shared = [self._bar, self._bar_column, 1]
            self._id = self._bar.add_task(self.task, total=self.steps, completed=self.start, **self._fields())
        return self.update

    def update(self, ev: Any) -> None:
        if self.quiet:
            return
        rate = (ev.step - self.start) / ev.elapsed if ev.elapsed > 0 else 0.0
        if self._bar is not None:
            # the task's own loss and metric, not the total: the regulariser dominates the total and hides a collapse
            self._bar.update(self._id, completed=ev.step, **self._fields(ev, rate))
            return
        now = time.monotonic()
        if now - self._last_plain >= self.plain_every or ev.step == ev.steps:
            self._last_plain = now
            metric = f"  {ev.metric_name or 'metric'} {ev.metric:.4f}" if ev.metric is not None else ""
            eta = f" eta {_clock((ev.steps - ev.step) / rate)}" if rate > 0 and ev.step < ev.steps else ""
            self.console.print(
                f"{self.task}: step {ev.step}/{ev.steps} task loss {ev.task_loss:.4f} (total {ev.loss:.4f}) density "
                f"{ev.density:.4f}{metric} {rate:.1f} steps/s{eta}",
                markup=False,
                highlight=False,
            )

    def __exit__(self, *exc: object) -> None:
        shared = TrainProgress._shared
        if self._bar is None or shared is None or shared[0] is not self._bar:
            return
        shared[2] -= 1
        if shared[2] == 0:
            TrainProgress._shared = None
            self._bar.stop()


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def status_line(console: Console, quiet: bool = False) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            console.print(f"[dim]{msg}[/dim]" if interactive(console) else msg)

    return say
