"""Where the CLI's output goes: results on stdout, everything else on stderr, and signals turned into a flag.

* :func:`results_only_on_stdout` — while a command runs, stdout carries its results only: ``sys.stdout`` and,
  in a real process, file descriptor 1 point to stderr (a plugin's ``print``, a C library's output), and
  :func:`out` writes to a duplicate of the real stdout, so that ``--json`` stays one JSON document whatever a
  task plugin prints;
* :func:`out` (results: tables, JSON) and :func:`err` (progress, messages) — rich consoles; without a
  terminal (CI, a pipe) they print plain text, full layer names, no colour codes;
* :class:`Signals` — SIGINT/SIGTERM as a flag the training loop polls at step boundaries (a second Ctrl-C
  stops at once).

The commands import this module; nothing here imports a command.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

_RESULTS: list[Any] = []  # while a command runs: the stream its results go to
WIDTH_WITHOUT_TERMINAL = 200  # columns of a table written to a pipe or a file (rich's default would be 80)


def results_stream() -> Any:
    """The stream for a command's results: the real stdout even while ``sys.stdout`` points to stderr."""
    return _RESULTS[-1] if _RESULTS else sys.stdout


def out() -> Any:
    """A rich console on the results stream."""
    from rich.console import Console

    stream = results_stream()
    width = None if stream.isatty() or os.environ.get("COLUMNS") else WIDTH_WITHOUT_TERMINAL
    return Console(file=stream, highlight=False, soft_wrap=False, width=width)


def err() -> Any:
    """A rich console on stderr (progress, messages)."""
    from .progress import err_console

    return err_console()


def print_json(text: str) -> None:
    stream = results_stream()
    stream.write(text + "\n")
    stream.flush()


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """See the module docstring."""
    real = sys.stdout
    try:
        fd = real.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: no descriptor to move
        fd = None
    saved = None
    stream = real
    if fd == 1:
        real.flush()
        saved = os.dup(1)
        raw = io.BufferedWriter(io.FileIO(saved, "w", closefd=False))  # a stream, not a file: nothing to write atomically
        stream = io.TextIOWrapper(raw, encoding=getattr(real, "encoding", None) or "utf-8", errors="replace")
        os.dup2(2, 1)
    _RESULTS.append(stream)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        _RESULTS.pop()
        try:
            stream.flush()
        finally:
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)


def results_guard(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` run inside :func:`results_only_on_stdout` (applied to every command, after parsing, so that
    ``--help`` still prints on stdout)."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with results_only_on_stdout():
            return command(*args, **kwargs)

    return guarded


class Signals:
    """Turn SIGINT/SIGTERM into a flag the training loop polls at step boundaries; ``signum`` says which."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
