"""Error hierarchy and the exit codes they map to, in one place.

Exit codes (documented in docs/cli.md):

====  ==========================================================
0     success
1     a check failed (``compare`` thresholds)
2     bad input: usage, missing/corrupt files, mismatched masks
3     a task plugin is broken (import error, contract violation)
4     numerical failure during training (NaN/inf loss or logits)
130   interrupted by SIGINT (Ctrl-C); learned state was saved
143   terminated by SIGTERM; learned state was saved
70    a bug of maskprobe's (an unexpected exception; MASKPROBE_DEBUG=1 shows the traceback)
====  ==========================================================
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PLUGIN = 3
EXIT_NUMERICAL = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_INTERNAL = 70


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters): a library's multi-line exception
    quoted inside one of our one-line messages."""
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class MaskprobeError(Exception):
    """Base class: every error maskprobe raises on purpose. The CLI prints ``str(err)`` on one line.

    Attributes:
        exit_code: the process's exit code for this error (per class; RankFailed and Interrupted set their own).
        reported_by_rank0: under torchrun, rank 0 reports this same error (every rank met it at the same step,
            maskprobe.learning.distributed.agree_step); the other ranks stay quiet about it.
    """

    exit_code = EXIT_BAD_INPUT
    reported_by_rank0 = False


class BadInputError(MaskprobeError):
    """A file, argument or combination of them that cannot be used (exit 2, MaskprobeError's)."""


class CheckpointError(BadInputError):
    """A checkpoint that cannot be read, or that does not fit the architecture."""


class MaskFileError(BadInputError):
    """A mask file that is missing, corrupt, or does not fit the checkpoint or the other masks."""


class PluginError(MaskprobeError):
    """A task plugin that cannot be imported or violates the task contract."""

    exit_code = EXIT_PLUGIN


class NumericalError(MaskprobeError):
    """NaN or inf met during training; ``state`` is the last good training state (None: the logits themselves
    went bad, and the last good state is the last snapshot)."""

    exit_code = EXIT_NUMERICAL

    def __init__(self, message: str, state: Any = None):
        super().__init__(message)
        self.state = state


class CheckFailed(MaskprobeError):
    """One or more ``compare`` thresholds were violated."""

    exit_code = EXIT_CHECK_FAILED


class RankFailed(MaskprobeError):
    """Under torchrun: another rank of this run failed; carries that rank's exit code so that every rank exits
    with it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(MaskprobeError):
    """A command stopped by a signal; the message says what was kept (a training run saves what it learned)."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = signum
        self.exit_code = EXIT_SIGTERM if signum == 15 else EXIT_SIGINT


class Stopped(KeyboardInterrupt):
    """A signal that stops the work at once (raised by the CLI's signal handler, maskprobe.console.Signals).

    A KeyboardInterrupt, so that no ``except Exception`` on the way (a plugin's failure turned into a
    PluginError) mistakes it for an error; ``signum`` decides the exit code (130 or 143).
    """

    def __init__(self, signum: int = 2):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int | None) -> str:
    """``SIGINT`` / ``SIGTERM`` (what a user sent), ``signal N`` for any other."""
    return {2: "SIGINT", 15: "SIGTERM"}.get(signum or 2, f"signal {signum}")
