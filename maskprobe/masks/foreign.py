"""Masks from other tools, read by ``open_masks(path, foreign=True)`` (what ``compare`` opens): a safetensors file
without maskprobe metadata holding bool or uint8 (0/1) tensors, or a numpy ``.npz`` archive of such arrays keyed by
parameter name, read with ``allow_pickle=False`` after its headers were checked: an archive holding Python objects is
refused, never unpickled (docs/checkpoints.md, "a mask file is data").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MaskFileError


def is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


FOREIGN_DTYPES = ("BOOL", "U8")
NOT_A_MASK = "{path}: {what} {name!r} is {dtype}: not a mask (a mask from another tool holds bool or uint8 0/1 {kind})"


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{name: (shape, dtype)}`` of a ``.npz`` archive, from each array's ``.npy`` header (no data read, nothing
    unpickled).

    Raises:
        MaskFileError: not a zip of ``.npy`` members, an unreadable header, Python objects, or a non-mask dtype.
    """
    import zipfile

    import numpy as np

    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                name = member.removesuffix(".npy")
                if name == member:
                    raise MaskFileError(f"{path} is a zip archive but not a .npz of arrays (it holds {member!r})")
                with zf.open(member) as fh:
                    version = fmt.read_magic(fh)
                    if version not in readers:
                        raise MaskFileError(f"{path}: array {name!r} is in .npy format {version}, which maskprobe does not read")
                    shape, _fortran, dtype = readers[version](fh)
                if dtype.hasobject:
                    raise MaskFileError(
                        f"{path}: array {name!r} holds Python objects (dtype {dtype}); refused: maskprobe never unpickles "
                        "a mask file (save bool or uint8 arrays)"
                    )
                if dtype not in (np.dtype(bool), np.dtype(np.uint8)):
                    raise MaskFileError(NOT_A_MASK.format(path=path, what="array", name=name, dtype=dtype, kind="arrays"))
                out[name] = (tuple(int(d) for d in shape), dtype)
    except MaskFileError:
        raise
    except Exception as exc:  # zipfile and numpy raise BadZipFile, OSError, ValueError ... on damaged archives
        raise MaskFileError(f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not out:
        raise MaskFileError(f"{path} holds no arrays")
    return out


def open_npz(path: Path) -> tuple[dict[str, tuple[int, ...]], Any]:
    """``({name: shape}, the open archive)`` of a ``.npz`` of masks, its headers checked before numpy opens it."""
    import numpy as np

    shapes = {n: shape for n, (shape, _) in npz_headers(path).items()}
    try:
        return shapes, np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MaskFileError(f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def check_foreign_safetensors(path: Path, f: Any) -> list[str]:
    """The tensor names of an open safetensors file without maskprobe metadata, each bool or uint8."""
    names = list(f.keys())
    for name in names:
        dtype = f.get_slice(name).get_dtype()
        if dtype not in FOREIGN_DTYPES:
            raise MaskFileError(NOT_A_MASK.format(path=path, what="tensor", name=name, dtype=dtype, kind="tensors"))
    if not names:
        raise MaskFileError(f"{path} holds no tensors")
    return names


def uint8_as_bool(path: Path, name: str, arr: Any) -> Any:
    """A foreign uint8 mask as bool, refused when it holds anything but 0 and 1."""
    if arr.size and int(arr.max()) > 1:
        raise MaskFileError(f"{path}: {name!r} holds values other than 0 and 1: not a mask")
    return arr.view(bool)
