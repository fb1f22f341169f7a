"""Which device a run uses (``--device``) and how many CPU threads (``--threads``)."""

from __future__ import annotations

import copy
import io
import os
import warnings

import torch
from torch import nn

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


def on_device(module: nn.Module, device: torch.device | str) -> bool:
    """Every parameter and buffer of ``module`` is on ``device``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda": the current CUDA device, where .to("cuda") puts it
        device = torch.device("cuda", torch.cuda.current_device())
    return all(t.device == device for t in [*module.parameters(), *module.buffers()])


def module_on(module: nn.Module, device: torch.device | str, *, copy_module: bool = True) -> nn.Module:
    """``module`` on ``device``: itself when it is there already, else a copy moved there (``copy_module=False``:
    ``module`` itself moved, where the caller no longer needs it elsewhere).

    A TorchScript module is never moved by ``nn.Module.to`` or copied by ``copy.deepcopy``: deepcopy clones its
    parameters with autograd history (non-leaf tensors, so freezing them fails with "you can only change
    requires_grad flags of leaf variables"), and ``.to`` across devices stops at parameters that are not
    ``nn.Parameter`` objects. It is serialised and loaded again with ``map_location`` (the documented way to put
    an archive on a device), which gives leaf tensors on ``device`` with the same ``requires_grad`` flags and mode.
    """
    device = torch.device(device)
    if on_device(module, device):
        return module
    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # torch.jit's deprecation notices are not the user's problem
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(module, buffer)
            buffer.seek(0)
            return torch.jit.load(buffer, map_location=device)
    return (copy.deepcopy(module) if copy_module else module).to(device)


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
