"""Paths in and out: inputs checked before anything opens them (a FIFO would block ``open()`` forever, a symlink
loop would read as "not found"; one-line errors for both, and for sockets, devices, broken symlinks), and where
``train --out`` puts each mask (:func:`output_paths`)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError


def input_kind(path: str | os.PathLike[str], missing: str, error: type[BadInputError] = BadInputError) -> str:
    """``"file"`` or ``"dir"`` for an existing regular file or folder (symlinks followed).

    Args:
        missing: the message when nothing is there, e.g. ``"checkpoint not found: x.pt"``.
        error: the exception class raised (a :class:`BadInputError` subclass).

    Raises:
        error: missing, a broken symlink, a symlink loop, or neither a regular file nor a folder (FIFO, socket,
            device).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{path} is a broken symlink (to {os.readlink(path)})") from None
        raise error(missing) from None
    except NotADirectoryError:
        raise error(missing) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path} is a symlink loop") from None
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    raise error(f"{path} is not a regular file or folder")


# suffixes of files, never of an output folder: --out with one of these is refused (masks are NAME.safetensors)
FILE_SUFFIXES = frozenset(
    ".pt .pth .bin .ckpt .pkl .pickle .json .npz .npy .h5 .hdf5 .onnx .msgpack .gguf .tar .zip .gz .txt .csv .safetensor".split()
)


@dataclass
class OutputPlan:
    """Where one mask goes: the mask file and its resumable state (``<name>.state.pt`` beside it)."""

    mask: Path
    state: Path


def output_paths(out: str | os.PathLike[str], task_names: Sequence[str]) -> list[OutputPlan]:
    """``--out x.safetensors`` for one mask; otherwise a folder with ``<name>.safetensors`` each.

    Raises:
        BadInputError: ``--out`` names another kind of file, a file for several masks, an existing non-folder, or
            two masks would get one name.
    """
    out = Path(out)
    if out.suffix.lower() in FILE_SUFFIXES:  # --out m.pt would become a folder named m.pt/
        raise BadInputError(f"--out {out} names a {out.suffix} file: give NAME.safetensors (one task) or a folder")
    if out.suffix == ".safetensors":
        if len(task_names) > 1:
            raise BadInputError("--out must be a folder when training several tasks")
        files = [out]
    else:
        if out.exists() and not out.is_dir():
            raise BadInputError(f"--out {out} exists and is not a folder")
        twice = next((n for i, n in enumerate(task_names) if n in task_names[:i]), None)
        if twice is not None:
            raise BadInputError(
                f"two tasks are both named {twice!r} (both masks would be {out / twice}.safetensors): rename one with "
                "--task-arg N:name=NEW, N its position among the --task options"
            )
        files = [out / f"{name}.safetensors" for name in task_names]
    return [OutputPlan(f, f.with_name(f.name.removesuffix(".safetensors") + ".state.pt")) for f in files]
