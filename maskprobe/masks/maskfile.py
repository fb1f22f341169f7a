"""Mask files: safetensors with one bool tensor per masked parameter (spec: docs/mask-format.md).

Tensor names are exactly the model's ``named_parameters()`` names, dtype ``bool``, the parameter's
shape, so anyone can ``safetensors.torch.load_file`` a mask and multiply. ``__metadata__`` is a
string-to-string map; the keys in :data:`JSON_KEYS` hold JSON.

API: :func:`save_masks`, :func:`load_masks`, :func:`open_masks` (streaming, tensor by tensor).

``open_masks(path, foreign=True)`` (what ``compare`` opens) also reads masks from other tools
(:mod:`maskprobe.masks.foreign`: bool/uint8 safetensors without our metadata, ``.npz`` never unpickled). Such a
reader has no metadata (``foreign`` is True): its label is the file name, its task must be given.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import MaskFileError
from ..paths import input_kind
from .foreign import check_foreign_safetensors, is_zip, open_npz, uint8_as_bool

FORMAT = "maskprobe.mask/1"
_OBJECT, _INT, _NUMBER, _LIST = dict, int, (int, float), list
# the JSON keys and the type each must decode to (validated by decode_metadata, documented in docs/mask-format.md)
JSON_TYPES: dict[str, Any] = {"task": _OBJECT, "checkpoint": _OBJECT, "hparams": _OBJECT, "selection": _OBJECT,
                              "density": _OBJECT, "metric_full": _OBJECT, "metric_masked": _OBJECT, "versions": _OBJECT,
                              "engine": _OBJECT, "steps": _INT, "seed": _INT, "final_loss": _NUMBER, "history": _LIST,
                              "layers": _LIST, "packed": _OBJECT}  # fmt: skip
JSON_KEYS = frozenset(JSON_TYPES)
_TYPE_WORDS = {_OBJECT: "a JSON object", _INT: "a JSON integer", _NUMBER: "a JSON number", _LIST: "a JSON array"}
# packed-bit files (``save_masks(..., pack_bits=True)``): each tensor is uint8 holding ceil(numel/8) bytes of
# np.packbits(mask.reshape(-1), bitorder="little"); the shapes live in the "packed" metadata key
PACKED_BITORDER = "little"


def encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    out = {"format": FORMAT}
    for key, value in metadata.items():
        if key != "format":
            out[key] = value if (isinstance(value, str) and key not in JSON_KEYS) else json.dumps(value, sort_keys=True)
    out.setdefault("created", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


def _field_problem(key: str, value: Any) -> str | None:
    """Why ``value`` (decoded JSON) is not what ``key`` must hold, or None."""
    want = JSON_TYPES[key]
    if value is None and key == "final_loss":  # a run that took no step
        return None
    if isinstance(value, bool) or not isinstance(value, want):
        return f"must be {_TYPE_WORDS[want]}, got {type(value).__name__}"
    if key == "task":
        for sub in ("name", "ref"):
            if sub in value and not isinstance(value[sub], str):
                return f"'{sub}' must be a string, got {type(value[sub]).__name__}"
        if "args" in value and value["args"] is not None and not isinstance(value["args"], dict):
            return f"'args' must be a JSON object, got {type(value['args']).__name__}"
    if key == "checkpoint" and "sha256" in value and not isinstance(value["sha256"], str):
        return f"'sha256' must be a string, got {type(value['sha256']).__name__}"
    if key == "checkpoint" and "identity" in value:
        identity = value["identity"]
        if not isinstance(identity, dict) or not all(isinstance(identity.get(k), str) for k in ("weights", "architecture")):
            return "'identity' must be a JSON object with the strings 'weights' and 'architecture'"
    return None


def decode_metadata(raw: Mapping[str, str] | None, path: str | os.PathLike[str] = "mask file") -> dict[str, Any]:
    """The metadata with every key of :data:`JSON_TYPES` decoded and type-checked (other keys stay strings).

    Raises:
        MaskFileError: a known key that is not valid JSON or not of its type, naming ``path`` and the key.
    """
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key not in JSON_KEYS:
            out[key] = value
            continue
        try:
            decoded = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            raise MaskFileError(f"{path}: metadata field {key!r} is not valid JSON; the file is damaged") from None
        problem = _field_problem(key, decoded)
        if problem:
            raise MaskFileError(f"{path}: metadata field {key!r} {problem}; the file is damaged")
        out[key] = decoded
    return out


def save_masks(
    path: str | os.PathLike[str],
    masks: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    pack_bits: bool = False,
) -> Path:
    """Write ``masks`` (name -> bool tensor) with ``metadata`` atomically; returns the path.

    Non-bool tensors are converted with ``!= 0``. Values of :data:`JSON_KEYS` are JSON-encoded.
    ``pack_bits=True`` stores 8 weights per byte (docs/mask-format.md, "Packed bits"); every maskprobe
    reader unpacks such files transparently.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    tensors = {}
    shapes: dict[str, list[int]] = {}
    for name, t in masks.items():
        t = torch.as_tensor(t)
        t = (t if t.dtype == torch.bool else t != 0).detach().to("cpu").contiguous()
        if pack_bits:
            shapes[name] = list(t.shape)
            t = torch.from_numpy(np.packbits(t.numpy().reshape(-1), bitorder=PACKED_BITORDER))
        tensors[name] = t
    meta_in = dict(metadata or {})
    if pack_bits:
        meta_in["packed"] = {"bitorder": PACKED_BITORDER, "shapes": shapes}
    else:
        meta_in.pop("packed", None)
    meta = encode_metadata(meta_in)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_header_metadata(tmp)

    atomic_write(path, write)
    return Path(path)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite the safetensors header of ``path`` in place with ``__metadata__``'s keys sorted.

    safetensors writes the metadata map in a random order per process (a Rust ``HashMap``), so the same masks and
    metadata gave different bytes on every run. Sorted keys make a mask file a pure function of its content (the
    golden-bytes test, equal hashes for equal masks). The header keeps its length (the same strings, reordered), so
    only its bytes change; the tensors' data and offsets are untouched.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        if meta is None:
            return
        ordered = {"__metadata__": dict(sorted(meta.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # another escaping than the writer's: leave the valid header as written
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def _check_readable(path: Path) -> None:
    if input_kind(path, f"mask file not found: {path}", MaskFileError) == "dir":  # a FIFO must not block open()
        raise MaskFileError(f"{path} is a folder, not a mask file")


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


def _check_format(path: Path, raw: Mapping[str, str] | None) -> None:
    fmt = (raw or {}).get("format")
    if fmt != FORMAT:
        found = f"format {fmt!r}" if fmt else "no maskprobe metadata"
        raise MaskFileError(f"{path} is not a maskprobe mask file ({found}; expected {FORMAT!r})")


def packed_shapes(path: Path, metadata: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The logical shapes of a packed-bit file (None for a plain bool file)."""
    packed = metadata.get("packed")
    if packed is None:
        return None
    if not isinstance(packed, dict) or packed.get("bitorder") != PACKED_BITORDER or not isinstance(packed.get("shapes"), dict):
        raise MaskFileError(f"{path}: malformed 'packed' metadata (expected bitorder {PACKED_BITORDER!r} and shapes)")
    try:
        return {k: tuple(int(d) for d in v) for k, v in packed["shapes"].items()}
    except (TypeError, ValueError):
        raise MaskFileError(f"{path}: malformed shapes in the 'packed' metadata") from None


def unpack_bits(path: Path, name: str, packed: Any, shape: tuple[int, ...]):
    """numpy uint8 bytes -> bool array of ``shape``; refuses a wrong length or set padding bits."""
    import numpy as np

    numel = int(np.prod(shape, dtype=np.int64))
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (numel + 7) // 8:
        raise MaskFileError(f"{path}: packed tensor {name!r} is not {(numel + 7) // 8} uint8 bytes for shape {list(shape)}")
    out = np.unpackbits(packed, count=numel, bitorder=PACKED_BITORDER)
    if numel % 8 and int(packed[-1]) >> (numel % 8):
        raise MaskFileError(f"{path}: packed tensor {name!r} has padding bits set; the file is damaged")
    return out.view(bool).reshape(shape)


def load_masks(path: str | os.PathLike[str]) -> MaskSet:
    """Read a whole mask file into memory (packed-bit files are unpacked to bool), through :class:`MaskReader`:
    one reader, so a file is checked the same way (dtype, 0/1 bytes, packed shapes) whichever way it is read.

    Raises:
        MaskFileError: missing, corrupt, not a maskprobe mask, or holding non-bool tensors.
    """
    import numpy as np
    import torch

    with open_masks(path) as reader:
        masks = {}
        for name in reader.names:
            arr = reader.get(name)
            masks[name] = torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr))
        return MaskSet(Path(path), masks, reader.metadata)


class MaskReader:
    """Streaming access to a mask file, one tensor at a time as numpy bool arrays.

    ``foreign=True`` also opens masks from other tools (module docstring); ``self.foreign`` says which it is.
    """

    def __init__(self, path: str | os.PathLike[str], *, foreign: bool = False):
        self.path = Path(path)
        self.foreign = False
        self._npz: Any = None
        self._handle: Any = None
        _check_readable(self.path)  # before anything opens it: a FIFO would block open() forever
        if foreign and is_zip(self.path):
            self._npz_shapes, self._npz = open_npz(self.path)
            self.foreign, self.metadata, self.packed_shapes, self.names = True, {}, None, list(self._npz_shapes)
            return
        from safetensors import safe_open

        try:
            self._handle = safe_open(str(self.path), framework="numpy")
        except Exception as exc:
            raise MaskFileError(f"{self.path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        self._f = self._handle.__enter__()
        try:
            raw = self._f.metadata()
            if foreign and not str((raw or {}).get("format", "")).startswith("maskprobe."):
                self.foreign, self.metadata, self.packed_shapes = True, {}, None
                self.names = check_foreign_safetensors(self.path, self._f)
                return
            _check_format(self.path, raw)
            self.metadata = decode_metadata(raw, self.path)
            self.names: list[str] = list(self._f.keys())
            self.packed_shapes = packed_shapes(self.path, self.metadata)
            if self.packed_shapes is not None and set(self.packed_shapes) != set(self.names):
                raise MaskFileError(f"{self.path}: the 'packed' metadata does not list the file's tensors")
        except BaseException:
            self.close()
            raise

    @property
    def packed(self) -> bool:
        """True for a packed-bit file (8 weights per byte)."""
        return self.packed_shapes is not None

    def shape(self, name: str) -> tuple[int, ...]:
        """The mask's logical shape (the parameter's), for plain and packed files alike."""
        if self._npz is not None:
            return self._npz_shapes[name]
        if self.packed_shapes is not None:
            return self.packed_shapes[name]
        return tuple(self._f.get_slice(name).get_shape())

    def get(self, name: str):
        """The mask of one tensor as a numpy bool array of the parameter's shape (packed files unpacked)."""
        try:
            arr = self._npz[name] if self._npz is not None else self._f.get_tensor(name)
        except Exception as exc:
            raise MaskFileError(f"{self.path} is corrupt at {name!r} ({type(exc).__name__}: {exc})") from None
        if self.packed_shapes is not None:
            return unpack_bits(self.path, name, arr, self.packed_shapes[name])
        if self.foreign and arr.dtype == "uint8":
            return uint8_as_bool(self.path, name, arr)
        if arr.dtype != bool:
            raise MaskFileError(f"{self.path}: tensor {name!r} has dtype {arr.dtype}, expected bool")
        if arr.size and int(arr.view("uint8").max()) > 1:  # it counts as 2, 7... in sums: a damaged or forged file
            raise MaskFileError(f"{self.path}: tensor {name!r} holds bytes that are not 0 or 1; the file is damaged")
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    @property
    def task_name(self) -> str:
        task = self.metadata.get("task")
        return task.get("name", "?") if isinstance(task, dict) else self.path.stem

    def close(self) -> None:
        if self._npz is not None:
            self._npz.close()
        if self._handle is not None:
            self._handle.__exit__(None, None, None)

    def __enter__(self) -> MaskReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_masks(path: str | os.PathLike[str], *, foreign: bool = False) -> MaskReader:
    """Open a mask file for streaming (use as a context manager).

    Args:
        foreign: also accept masks from other tools: safetensors without maskprobe metadata (bool or uint8 0/1
            tensors) and numpy ``.npz`` archives keyed by parameter name (never unpickled). Default False.

    Raises:
        MaskFileError: missing, unreadable, not a mask (a refused ``.npz`` of Python objects among them).
    """
    return MaskReader(path, foreign=foreign)
