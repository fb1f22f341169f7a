"""Which device a run uses (``--device``) and how many CPU threads (``--threads``)."""

from __future__ import annotations

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
