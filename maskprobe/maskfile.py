"""Mask files: safetensors with one bool tensor per masked parameter (spec: docs/mask-format.md).

Tensor names are exactly the model's ``named_parameters()`` names, dtype ``bool``, the parameter's
shape, so anyone can ``safetensors.torch.load_file`` a mask and multiply. ``__metadata__`` is a
string-to-string map; the keys in :data:`JSON_KEYS` hold JSON.

API: :func:`save_masks`, :func:`load_masks`, :func:`open_masks` (streaming, tensor by tensor).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .errors import MaskFileError

FORMAT = "maskprobe.mask/1"
JSON_KEYS = frozenset(
    {
        "task",
        "checkpoint",
        "hparams",
        "selection",
        "density",
        "metric_full",
        "metric_masked",
        "versions",
        "steps",
        "seed",
        "final_loss",
        "history",
    }
)


def encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    out = {"format": FORMAT}
    for key, value in metadata.items():
        if key == "format":
            continue
        out[key] = value if (isinstance(value, str) and key not in JSON_KEYS) else json.dumps(value, sort_keys=True)
    out.setdefault("created", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


def decode_metadata(raw: Mapping[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key in JSON_KEYS:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        else:
            out[key] = value
    return out


def save_masks(path: str | os.PathLike[str], masks: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``masks`` (name -> bool tensor) with ``metadata`` atomically; returns the path.

    Non-bool tensors are converted with ``!= 0``. Values of :data:`JSON_KEYS` are JSON-encoded.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, t in masks.items():
        t = torch.as_tensor(t)
        tensors[name] = (t if t.dtype == torch.bool else t != 0).detach().to("cpu").contiguous()
    meta = encode_metadata(metadata or {})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return Path(path)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise MaskFileError(f"mask file not found: {path}")
    if path.is_dir():
        raise MaskFileError(f"{path} is a folder, not a mask file")


def _safe_open(path: Path, framework: str):
    from safetensors import safe_open

    _check_readable(path)
    try:
        return safe_open(str(path), framework=framework)
    except Exception as exc:
        raise MaskFileError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None


@dataclass
class MaskSet:
    """A loaded mask file: ``masks`` maps parameter names to bool tensors; ``metadata`` is decoded."""

    path: Path
    masks: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def task_name(self) -> str:
        task = self.metadata.get("task")
        return task.get("name", "?") if isinstance(task, dict) else self.path.stem

    @property
    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def numel(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def density(self) -> float:
        return self.kept / self.numel if self.numel else 0.0


# a bool byte other than 0/1 counts as 2, 7... in sums: a damaged or forged file, not a mask
_NOT_BOOL = "{path}: tensor {name!r} holds bytes that are not 0 or 1; the file is damaged"


def _check_format(path: Path, raw: Mapping[str, str] | None) -> None:
    fmt = (raw or {}).get("format")
    if fmt != FORMAT:
        found = f"format {fmt!r}" if fmt else "no maskprobe metadata"
        raise MaskFileError(f"{path} is not a maskprobe mask file ({found}; expected {FORMAT!r})")


def load_masks(path: str | os.PathLike[str]) -> MaskSet:
    """Read a whole mask file into memory.

    Raises:
        MaskFileError: missing, corrupt, not a maskprobe mask, or holding non-bool tensors.
    """
    import torch

    path = Path(path)
    with _safe_open(path, "pt") as f:
        raw = f.metadata()
        _check_format(path, raw)
        masks = {}
        try:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.dtype != torch.bool:
                    raise MaskFileError(f"{path}: tensor {name!r} has dtype {t.dtype}, expected bool")
                if t.numel() and int(t.view(torch.uint8).max()) > 1:
                    raise MaskFileError(_NOT_BOOL.format(path=path, name=name))
                masks[name] = t
        except MaskFileError:
            raise
        except Exception as exc:
            raise MaskFileError(f"{path} is corrupt ({type(exc).__name__}: {exc})") from None
    return MaskSet(path, masks, decode_metadata(raw))


class MaskReader:
    """Streaming access to a mask file, one tensor at a time as numpy bool arrays."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._handle = _safe_open(self.path, "numpy")
        self._f = self._handle.__enter__()
        raw = self._f.metadata()
        _check_format(self.path, raw)
        self.metadata = decode_metadata(raw)
        self.names: list[str] = list(self._f.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(name).get_shape())

    def get(self, name: str):
        try:
            arr = self._f.get_tensor(name)
        except Exception as exc:
            raise MaskFileError(f"{self.path} is corrupt at {name!r} ({type(exc).__name__}: {exc})") from None
        if arr.dtype != bool:
            raise MaskFileError(f"{self.path}: tensor {name!r} has dtype {arr.dtype}, expected bool")
        if arr.size and int(arr.view("uint8").max()) > 1:
            raise MaskFileError(_NOT_BOOL.format(path=self.path, name=name))
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    @property
    def task_name(self) -> str:
        task = self.metadata.get("task")
        return task.get("name", "?") if isinstance(task, dict) else self.path.stem

    def close(self) -> None:
        self._handle.__exit__(None, None, None)

    def __enter__(self) -> MaskReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_masks(path: str | os.PathLike[str]) -> MaskReader:
    """Open a mask file for streaming (use as a context manager)."""
    return MaskReader(path)
