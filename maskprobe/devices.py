"""Which device a run uses (``--device``) and how many CPU threads (``--threads``)."""

from __future__ import annotations

import os

import torch

from .errors import BadInputError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; anything else must name an available device.

    Raises:
        BadInputError: not a device, or CUDA asked for without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInputError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for but no CUDA device is available")
    return dev


def default_threads() -> int:
    """The cores that were idle when the run started: the cores this process may use minus the 1-minute load
    average (at least 1, at most torch's default).

    Why: torch's OpenMP threads spin-wait for each other, so a thread placed on a core another process holds
    stalls every parallel region; with 2 threads on 2 cores and one busy, steps ran ~10x slower than with one
    thread (docs/benchmarks.md, "Threads"). ``OMP_NUM_THREADS`` or ``--threads`` override it.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(torch.get_num_threads(), cores - busy))


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (torch's and the mask kernels', which follow ``torch.get_num_threads()``);
    None: ``OMP_NUM_THREADS`` when set, else :func:`default_threads`. Returns the number set."""
    if threads is None:
        threads = torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else default_threads()
    threads = max(1, int(threads))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
