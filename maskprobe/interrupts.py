"""How a signal stops library work: at once where nothing would be lost, at a step boundary in the training loop.

A caller's ``should_stop`` is a callable that returns True once a stop was asked for. The CLI passes a
:class:`maskprobe.console.Signals`, whose signal handler raises :class:`~maskprobe.errors.Stopped` (a
KeyboardInterrupt) at once, except inside the two regions the library marks with these helpers:

* :func:`polled` — the training loop: the first signal only sets the flag, polled at every step boundary (the
  state saved there resumes bitwise); a second one raises at once;
* :func:`held` — a few lines that must finish to keep what was learned (the optimiser update, saving a state
  file, writing a mask): every signal only sets the flag, and the code checks it afterwards.

A plain callable (a notebook's ``lambda: done``) or None has neither region; the helpers then do nothing, and a
KeyboardInterrupt from Python's own SIGINT handler stops the work where it is.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .errors import signal_name


def polled(should_stop: Any) -> Any:
    """A context in which ``should_stop``'s first signal only sets its flag (see the module docstring)."""
    region = getattr(should_stop, "polled", None)
    return region() if callable(region) else contextlib.nullcontext()


def held(should_stop: Any) -> Any:
    """A context in which no signal of ``should_stop`` interrupts the code (see the module docstring)."""
    region = getattr(should_stop, "held", None)
    return region() if callable(region) else contextlib.nullcontext()


def signum_of(should_stop: Any, exc: BaseException | None = None) -> int:
    """The signal that stopped the work: the exception's, else ``should_stop``'s first, else SIGINT (2)."""
    return int(getattr(exc, "signum", None) or getattr(should_stop, "signum", None) or 2)


def by(should_stop: Any, exc: BaseException | None = None) -> str:
    """``SIGINT`` / ``SIGTERM``: the signal that stopped the work, for a message."""
    return signal_name(signum_of(should_stop, exc))
