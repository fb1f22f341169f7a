"""Where the CLI's output goes: results on stdout, everything else on stderr, and signals turned into a flag.

* :func:`results_only_on_stdout` — while a command runs, stdout carries its results only: ``sys.stdout`` and,
  in a real process, file descriptor 1 point to stderr (a plugin's ``print``, a C library's output), and
  :func:`out` writes to a duplicate of the real stdout, so that ``--json`` stays one JSON document whatever a
  task plugin prints;
* :func:`out` (results: tables, JSON) and :func:`err` (progress, messages) — rich consoles; without a
  terminal (CI, a pipe) they print plain text, full layer names, no colour codes;
* :class:`Signals` — SIGINT/SIGTERM stop a command at once, except inside the training loop, which polls them
  as a flag at step boundaries (a second Ctrl-C stops at once), and while what was learned is being saved.

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
    """``command`` run inside :func:`results_only_on_stdout` and :class:`Signals` (applied to every command, after
    parsing, so that ``--help`` still prints on stdout); a signal becomes one :class:`~maskprobe.errors.Interrupted`."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        from .errors import Interrupted, signal_name

        try:
            with results_only_on_stdout(), Signals():  # a signal stops every command at once (train: see Signals)
                return command(*args, **kwargs)
        except KeyboardInterrupt as exc:  # one line and 130/143 (click would turn it into its Abort, 130 only)
            signum = getattr(exc, "signum", None) or 2
            raise Interrupted(f"interrupted by {signal_name(signum)} before {command.__name__} finished", signum) from None

    return guarded


class Signals:
    """SIGINT/SIGTERM while a command runs; ``signum`` says which came first, calling the object whether one came.

    By default a signal stops the command at once: the handler raises :class:`~maskprobe.errors.Stopped` (a
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it; the CLI prints one line and exits
    130 or 143). Two regions the library marks (:mod:`maskprobe.interrupts`) change that:

    * :meth:`polled` (the training loop): the first signal only sets the flag, which the loop polls at every step
      boundary to save a state that resumes bitwise; a second one (Ctrl-C twice) raises at once;
    * :meth:`held` (saving a state file, writing a mask, the optimiser update): every signal only sets the flag,
      and the code checks it when the region ends.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0  # signals received
        self._old: dict[int, Any] = {}
        self._modes: list[str] = []  # the regions entered, innermost last

    def __enter__(self) -> Signals:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        from .errors import Stopped

        first = self.signum is None
        self.count += 1
        if first:
            self.signum = signum
        mode = self._modes[-1] if self._modes else "raise"
        if mode == "hold" or (mode == "poll" and first):
            return
        raise Stopped(self.signum or signum)

    @contextlib.contextmanager
    def _region(self, mode: str) -> Iterator[None]:
        self._modes.append(mode)
        try:
            yield
        finally:
            self._modes.pop()

    def polled(self) -> Any:
        """The first signal only sets the flag (a second one raises)."""
        return self._region("poll")

    def held(self) -> Any:
        """No signal interrupts; each only sets the flag."""
        return self._region("hold")

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
