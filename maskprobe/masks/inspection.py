"""What a file holds, for ``maskprobe inspect``: a mask file's tensors and record, or a checkpoint's parameters
and what would be masked. Library code: it returns data, :mod:`maskprobe.render.inspect` draws it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Selection


@dataclass
class MaskSummary:
    """A mask file: its metadata, and per tensor (in the model order recorded at train time) kept / numel."""

    path: Path
    metadata: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)  # {name, role, shape, numel, kept, density}

    @property
    def kept(self) -> int:
        return sum(c["kept"] for c in self.layers)

    @property
    def numel(self) -> int:
        return sum(c["numel"] for c in self.layers)


@dataclass
class CheckpointSummary:
    """A checkpoint: its format, its parameters with whether each would be masked (:class:`SelectedParameter`)."""

    path: Path
    format: str
    note: str
    rows: list[Any]


def is_mask_file(path: str | os.PathLike[str]) -> bool:
    """A safetensors file whose metadata says ``maskprobe.mask/...`` (anything unreadable: False)."""
    from ..loading.checkpoints import detect_format

    path = Path(path)
    try:
        if not path.is_file() or detect_format(path) != "safetensors":
            return False
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format", "").startswith("maskprobe.mask/")
    except Exception:  # noqa: BLE001 - MaskprobeError, OSError, and safetensors' own error types on damaged headers
        return False


def inspect_mask(path: str | os.PathLike[str]) -> MaskSummary:
    """Read a mask file tensor by tensor (plain or packed bits).

    Raises:
        MaskFileError: unreadable or damaged.
    """
    import numpy as np

    from .maskfile import open_masks
    from .masksets import mask_layout

    with open_masks(path) as r:
        layout = mask_layout([r], list(r.names))
        layers = []
        for name in layout.names:
            arr = r.get(name)
            kept, numel = int(np.count_nonzero(arr)), int(arr.size)
            layers.append({"name": name, "role": layout.roles[name], "shape": list(arr.shape), "numel": numel, "kept": kept,
                           "density": kept / numel if numel else 0.0})  # fmt: skip
        return MaskSummary(Path(path), dict(r.metadata), layers)


def inspect_checkpoint(
    path: str | os.PathLike[str],
    selection: Selection = Selection(),
    *,
    tasks: Any = (),
    model: str | None = None,
    model_args: dict[str, str] | None = None,
    trust: bool = False,
) -> CheckpointSummary:
    """A checkpoint's parameters and the selection's verdict on each. With ``tasks`` or ``model`` the module is
    built (the selection then knows embeddings, biases and norms by their modules); without, a file that holds a
    module is read as is and a weights-only file is judged by its tensor names.

    Raises:
        CheckpointError: unreadable, unsafe without ``trust``, or not fitting the architecture.
    """
    from ..learning.selection import describe_named, describe_selection
    from ..loading.checkpoints import load_checkpoint, read_contents

    if tasks or model:
        ckpt = load_checkpoint(path, tasks=tasks, model=model, model_args=model_args, trust=trust)
        rows = describe_selection(ckpt.model, selection, stored_dtypes=ckpt.dtypes)
        return CheckpointSummary(Path(path), ckpt.format, "architecture built", rows)
    fmt, contents = read_contents(path, trust=trust)
    if isinstance(contents, dict):
        note = "weights only: selection judged by names; pass --task or --model to build the module"
        return CheckpointSummary(Path(path), fmt, note, describe_named(contents.items(), selection))
    # the file holds its module: its parameters (no buffers, tied weights once), embeddings by type
    return CheckpointSummary(Path(path), fmt, "module in the file", describe_selection(contents, selection))
