"""Load checkpoints safely, detecting the format by content (DESIGN §4, docs/checkpoints.md).

Formats: ``torch.save`` state dicts (``weights_only=True``, also nested under ``state_dict``/``model``
and with ``module.``/``model.`` prefixes), safetensors (single or sharded with ``*.index.json``),
Hugging Face model folders (optional ``transformers``, hf_folder.py), TorchScript archives, and whole pickled modules
only with ``trust=True`` (pickle runs code).

Weights-only formats need an architecture: ``model_factory`` (``package.module:factory``) or the task's
``build_model()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, PluginError
from .errors import one_line as _one_line
from .hf_folder import HF_WEIGHT_FILES, hf_tokenizer, load_hf_folder
from .paths import input_kind

__all__ = [
    "Checkpoint",
    "detect_format",
    "hf_tokenizer",
    "load_checkpoint",
    "read_contents",
    "read_shard_index",
    "read_state_dict",
    "torch_load",
]

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80


@dataclass
class Checkpoint:
    """A loaded model with where it came from."""

    model: Any  # nn.Module
    path: Path
    format: str
    sha256: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format}


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative names and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


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
            if (
                not name.startswith(("torch.", "collections.OrderedDict", "builtins.set", "__builtin__.set"))
                and name not in found
            ):
                found.append(name)
                if len(found) >= limit:
                    break
    except Exception:  # noqa: BLE001 - a damaged tail: keep what was read before it
        pass
    return found


def torch_load(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``torch.load(path, **kwargs)`` decided by content: torch reads any path named ``*.safetensors`` as
    safetensors, so a ``torch.save`` file of that name is handed over as an open file (not memory-mapped)."""
    import torch

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        return torch.load(path, **kwargs)
    kwargs.pop("mmap", None)  # torch maps only files it is given by name
    with open(path, "rb") as fh:
        return torch.load(fh, **kwargs)


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error says it all
            warnings.simplefilter("ignore")
            return torch_load(path, map_location="cpu", weights_only=not trust)
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


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
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


def _load_sharded(path: Path) -> dict[str, Any]:
    """The tensors of every shard an index lists; shards must lie in the index's folder."""
    index, weight_map, shards = read_shard_index(path)
    state: dict[str, Any] = {}
    for shard_path in shards:
        state.update(_load_safetensors(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index.name} lists tensors no shard holds: {', '.join(missing[:5])}")
    return state


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """Find the tensor dict inside what ``torch.load`` returned (``state_dict``/``model``/... nesting)."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                try:
                    return unwrap_state_dict(inner)
                except CheckpointError:
                    continue
        # Lightning and friends mix tensors with other entries: keep the tensors
        import torch

        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError("the checkpoint holds no state dict (no mapping of names to tensors found)")


def _strip_prefixes(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    if set(state) == expected:
        return state
    best = state
    best_hits = len(set(state) & expected)
    for prefix in ("module.", "model.", "_orig_mod.", "model.module.", "module.model.", "net."):
        cand = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
        hits = len(set(cand) & expected)
        if hits > best_hits:
            best, best_hits = cand, hits
    return best


def load_state_into(model: Any, state: Mapping[str, Any], source: str = "checkpoint") -> Any:
    """Load ``state`` into ``model`` strictly; a mismatch is one error listing missing, unexpected and
    mis-shaped names."""
    own = model.state_dict()
    state = _strip_prefixes(dict(state), set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
                parts.append(f"{label}: {', '.join(items[:6])}{more}")
        raise CheckpointError(f"{source} does not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def load_factory(ref: str, kwargs: Mapping[str, Any] | None = None) -> Callable[[], Any]:
    """``package.module:factory`` -> a zero-argument callable building the model."""
    from .tasks import _load_object

    try:
        obj = _load_object(ref)
    except Exception as exc:
        raise CheckpointError(f"--model {ref!r}: {exc}") from None
    if not callable(obj):
        raise CheckpointError(f"--model {ref!r} is not callable")
    return lambda: obj(**dict(kwargs or {}))


def _build(architecture: Callable[[], Any] | None, path: Path) -> Any:
    from torch import nn

    if architecture is None:
        raise CheckpointError(
            f"{path} holds only weights; give the architecture with --model package.module:factory "
            "or use a task that defines build_model()"
        )
    try:
        model = architecture()
    except PluginError:  # a task's build_model() failed: the plugin is broken (exit 3), not the checkpoint
        raise
    except Exception as exc:
        raise CheckpointError(f"building the model failed: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    return model


def load_checkpoint(
    path: str | os.PathLike[str],
    architecture: Callable[[], Any] | None = None,
    *,
    trust: bool = False,
) -> Checkpoint:
    """Load ``path`` as an ``nn.Module`` on the CPU.

    Args:
        path: file or folder; the format is detected by content.
        architecture: builds the module for weights-only checkpoints (``task.build_model`` or a factory).
        trust: allow unpickling arbitrary objects (a whole pickled ``nn.Module``). Default False.

    Raises:
        CheckpointError: unreadable, unsafe without ``trust``, or not fitting the architecture.
    """
    import torch
    from torch import nn

    path = Path(path)
    fmt = detect_format(path)
    if fmt == "hf-folder":
        model = load_hf_folder(path)
    elif fmt == "torchscript":
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's problem
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path} is a damaged TorchScript archive ({_one_line(exc)})") from None
    else:
        if fmt == "safetensors":
            obj: Any = _load_safetensors(path)
        elif fmt == "safetensors-sharded":
            obj = _load_sharded(path)
        else:
            obj = _torch_load(path, trust)
        if isinstance(obj, nn.Module):
            model = obj
            fmt = "pickled-module"
        else:
            state = unwrap_state_dict(obj)
            model = load_state_into(_build(architecture, path), state, source=str(path))
    return Checkpoint(model=model, path=path, format=fmt, sha256=sha256_of(path))


def read_contents(path: str | os.PathLike[str], *, trust: bool = False) -> tuple[str, Any]:
    """What a checkpoint holds, without an architecture: ``(format, module_or_tensors)``.

    A module (``nn.Module`` or ``ScriptModule``) for TorchScript, Hugging Face folders and, with ``trust``,
    whole pickled modules (format ``pickled-module``); otherwise the ``{name: tensor}`` dict, unwrapped
    from ``state_dict``/``model`` nesting (prefixes kept).

    Raises:
        CheckpointError: unreadable, or unsafe without ``trust``.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        return fmt, _load_safetensors(path)
    if fmt == "safetensors-sharded":
        return fmt, _load_sharded(path)
    if fmt in ("torch-zip", "torch-legacy"):
        from torch import nn

        obj = _torch_load(path, trust)
        if isinstance(obj, nn.Module):
            return "pickled-module", obj
        return fmt, unwrap_state_dict(obj)
    ckpt = load_checkpoint(path, None, trust=trust)
    return ckpt.format, ckpt.model


def read_state_dict(path: str | os.PathLike[str], *, trust: bool = False) -> tuple[str, dict[str, Any]]:
    """The raw tensors of a weights file (no architecture needed): ``(format, {name: tensor})``.

    For TorchScript, pickled modules and Hugging Face folders the module is loaded and its state dict
    returned.
    """
    fmt, contents = read_contents(path, trust=trust)
    return fmt, contents if isinstance(contents, dict) else dict(contents.state_dict())
