"""What a checkpoint file is, by content, and its raw tensors, read safely (DESIGN §4, docs/checkpoints.md).

Formats: ``torch.save`` files (zip or legacy pickle; ``weights_only=True`` unless trusted), safetensors
(single or sharded with ``*.index.json``), Hugging Face folders (detected here, loaded in hf_folder.py) and
TorchScript archives. Building a module from the tensors is checkpoints.py's job.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..errors import one_line as _one_line
from ..paths import input_kind
from .hf_folder import HF_WEIGHT_FILES

__all__ = ["detect_format", "mmap_files", "read_shard_index", "read_tensors", "safetensors_on_meta", "safetensors_files",
           "unwrap_state_dict"]  # fmt: skip

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80


def detect_format(path: str | os.PathLike[str]) -> str:
    """One of ``safetensors``, ``safetensors-sharded``, ``hf-folder``, ``torchscript``, ``torch-zip``,
    ``torch-legacy``, by content.

    Raises:
        CheckpointError: missing path, empty file, or content that is none of the above.
    """
    path = Path(path)
    kind = input_kind(path, f"checkpoint not found: {path}", CheckpointError)  # a FIFO must not block open()
    if kind == "dir":
        if (path / "config.json").is_file():
            if not any((path / name).is_file() for name in HF_WEIGHT_FILES):
                raise CheckpointError(
                    f"{path} has a config.json but no weights ({', '.join(HF_WEIGHT_FILES)}); "
                    "save it with save_pretrained() or copy the weight files in"
                )
            return "hf-folder"
        if list(path.glob("*.safetensors.index.json")):
            return "safetensors-sharded"
        raise CheckpointError(f"{path} is a folder with neither config.json nor *.safetensors.index.json")
    if path.name.endswith(".index.json"):
        return "safetensors-sharded"
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"{path} is empty")
    if head[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except Exception as exc:  # zipfile raises BadZipFile, OSError, ValueError, NotImplementedError ...
            raise CheckpointError(f"{path} is a damaged zip archive ({_one_line(exc)})") from None
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint")
    if len(head) >= 9:  # before the pickle test: a header of 128 + 256k bytes starts with 0x80 too
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[0] == PICKLE_PROTO:
        return "torch-legacy"
    raise CheckpointError(f"{path} is not a checkpoint maskprobe can read (not torch.save, safetensors or TorchScript)")


_SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "__builtin__.set")  # weights_only allows these: not named


def _pickle_imports(path: Path, limit: int = 3) -> list[str]:
    """The ``module.name`` globals the pickle in ``path`` would import, read without running it.

    ``pickletools.genops`` only parses opcodes; for a zip checkpoint the pickle is its ``*/data.pkl``.
    """
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
    except Exception:  # noqa: BLE001 - only an explanation is at stake
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                name = arg.replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if not name.startswith(_SAFE_GLOBALS) and name not in found:
                found.append(name)
                if len(found) >= limit:
                    break
    except Exception:  # noqa: BLE001 - a damaged tail: keep what was read before it
        pass
    return found


def _torch_load(path: Path, trust: bool, mmap: bool = False) -> Any:
    """``torch.load`` on the CPU, ``weights_only`` unless trusted, decided by content: torch reads any path named
    ``*.safetensors`` as safetensors, so a ``torch.save`` file of that name is handed over as an open file (not
    memory-mapped). Errors are one line: what unpickling would import, or that the file is damaged."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error says it all
            warnings.simplefilter("ignore")
            if not path.name.endswith(".safetensors"):
                return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # a damaged pickle can raise anything (EOFError, KeyError, struct.error ...)
        message = str(exc)
        if not trust and "Weights only load failed" in message:
            wanted = _pickle_imports(path)
            match = re.search(r"GLOBAL (\S+) was not an allowed global", message)
            if match and match.group(1) not in wanted:
                wanted.insert(0, match.group(1))
            what = f"loading it would import {', '.join(wanted)}" if wanted else "it holds pickled Python objects"
            raise CheckpointError(
                f"{path} is not plain weights: {what}, and unpickling Python objects can run any code; refused "
                "(pass --trust-checkpoint only if you trust its author, e.g. for a whole pickled nn.Module)"
            ) from None
        raise CheckpointError(f"{path} is damaged or not a torch checkpoint ({_one_line(exc)})") from None


def _load_safetensors(path: Path, mmap: bool = False) -> dict[str, Any]:
    try:
        if mmap:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:  # the file is memory-mapped; get_tensor reads from it
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no Mapping
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_one_line(exc)})") from None


def _shard_index(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*.safetensors.index.json"))
    if not found:
        raise CheckpointError(f"{path} holds no *.safetensors.index.json")
    return found[0]


def read_shard_index(path: str | os.PathLike[str]) -> tuple[Path, dict[str, str], list[Path]]:
    """``(index file, weight_map, shard paths)`` of a sharded safetensors checkpoint (the index or its folder).

    The one reader of ``*.index.json`` files: every shard must be a file name in the index's folder, so a
    crafted index cannot make maskprobe read files elsewhere on the machine.

    Raises:
        CheckpointError: no index, not valid JSON, a malformed ``weight_map``, a shard outside the folder or missing.
    """
    index = _shard_index(Path(path))
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a valid safetensors index ({_one_line(exc)})") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
    folder = index.parent.resolve()
    shards = []
    for shard in sorted(set(weight_map.values())):
        shard_path = (index.parent / shard).resolve()
        if shard_path.parent != folder:
            raise CheckpointError(f"{index.name}: shard {shard!r} is not a file name in {index.parent}")
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard!r} listed in {index.name} is missing")
        shards.append(shard_path)
    return index, weight_map, shards


def safetensors_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint: the file, the shards its index lists (:func:`read_shard_index`,
    which keeps them inside the folder), or a folder's ``*.safetensors``."""
    path = Path(path)
    if path.is_file() and not path.name.endswith(".index.json"):
        return [path]
    folder = path if path.is_dir() else path.parent
    if path.is_file() or list(folder.glob("*.safetensors.index.json")):
        return read_shard_index(path)[2]
    return sorted(folder.glob("*.safetensors"))


def mmap_files(path: str | os.PathLike[str]) -> list[Path]:
    """:func:`safetensors_files`, at least one.

    Raises:
        CheckpointError: none (e.g. a Hugging Face folder with ``pytorch_model.bin``).
    """
    files = safetensors_files(path)
    if not files:
        raise CheckpointError(f"{path} holds no *.safetensors weights (.bin weights cannot be memory-mapped)")
    return files


def safetensors_on_meta(files: list[Path]) -> dict[str, Any]:
    """``{name: tensor on the meta device}`` with the shapes and dtypes of the files' headers; no data is read.

    Raises:
        CheckpointError: an unreadable header, or a dtype torch does not know.
    """
    import torch
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for file in files:
        try:
            with safe_open(str(file), "pt") as f:
                for k in f.keys():  # noqa: SIM118 - safe_open is no Mapping
                    sl = f.get_slice(k)
                    out[k] = torch.empty(sl.get_shape(), dtype=getattr(torch, _SAFETENSORS_DTYPES[sl.get_dtype()]), device="meta")
        except Exception as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file ({_one_line(exc)})") from None
    return out


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                       "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}  # fmt: skip


def _load_sharded(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The tensors of every shard an index lists; shards must lie in the index's folder."""
    index, weight_map, shards = read_shard_index(path)
    state: dict[str, Any] = {}
    for shard_path in shards:
        state.update(_load_safetensors(shard_path, mmap))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index.name} lists tensors no shard holds: {', '.join(missing[:5])}")
    return state


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """Find the tensor dict inside what ``torch.load`` returned (``state_dict``/``model``/... nesting)."""
    import torch

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                try:
                    return unwrap_state_dict(inner)
                except CheckpointError:
                    continue
        # a plain state dict, or Lightning and friends mixing tensors with other entries: keep the tensors
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError("the checkpoint holds no state dict (no mapping of names to tensors found)")


def read_tensors(path: Path, fmt: str, *, trust: bool = False, mmap: bool = False) -> Any:
    """The ``{name: tensor}`` dict of a weights file (prefixes kept), or the ``nn.Module`` of a trusted whole
    pickled module. ``mmap=True``: tensors memory-mapped, not read (safetensors' ``safe_open``,
    ``torch.load(mmap=True)``), also the safetensors weights of a Hugging Face folder.

    Raises:
        CheckpointError: unreadable, unsafe without ``trust``, or a format this cannot read (TorchScript, Hugging
            Face folders without ``mmap``; with ``mmap`` also legacy ``torch.save`` files and ``.bin`` folders).
    """
    from torch import nn

    if fmt == "safetensors-sharded":
        return _load_sharded(path, mmap)
    if mmap and fmt in ("safetensors", "hf-folder"):
        state: dict[str, Any] = {}
        for file in mmap_files(path):
            state.update(_load_safetensors(file, mmap=True))
        return state
    if fmt == "safetensors":
        return _load_safetensors(path)
    if fmt == "torch-zip" or (fmt == "torch-legacy" and not mmap):
        obj = _torch_load(path, trust, mmap)
        return obj if isinstance(obj, nn.Module) else unwrap_state_dict(obj)
    if mmap:
        raise CheckpointError(f"{path} is {fmt}, which cannot be memory-mapped (safetensors and torch.save zip files can)")
    raise CheckpointError(f"{path} is {fmt}: it holds a module, not a tensor file")
