"""Open a checkpoint as a module: one function, :func:`load_checkpoint` (DESIGN §4, docs/checkpoints.md).

The format is detected by content (formats.py); Hugging Face folders load through hf_folder.py; TorchScript
archives and, only with ``trust=True``, whole pickled modules hold their module. A weights-only file needs an
architecture: a zero-argument builder, ``--model package.module:factory``, or the first task whose
``build_model()`` returns one. The tensors are loaded strictly (a mismatch lists every name that differs),
names tied in the module may be stored once, and a file whose floating tensors share one dtype gives a module
in that dtype. The checkpoint's identity (its weights and architecture, not its files) is hashed beside the
loading, once per process (digest.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..errors import one_line as _one_line
from .architecture import architecture_builder, load_factory, parse_model_args
from .digest import IdentityDigest, architecture_name, sha256_of
from .formats import (
    detect_format,
    mmap_files,
    read_shard_index,
    read_tensors,
    safetensors_files,
    safetensors_on_meta,
    unwrap_state_dict,
)
from .hf_folder import hf_builder, hf_tokenizer, load_hf_folder
from .weights import fit_state, floating_dtypes, load_fitted, misfit, one_dtype

__all__ = ["Checkpoint", "detect_format", "hf_tokenizer", "load_checkpoint", "load_factory", "fit_state", "identify",
           "parse_model_args", "read_contents", "read_shard_index", "read_state_dict", "safetensors_files", "sha256_of",
           "unwrap_state_dict"]  # fmt: skip


@dataclass
class Checkpoint:
    """An opened checkpoint.

    Attributes:
        model: the ``nn.Module`` (on ``device``; on the meta device, weights not read, when opened with ``meta=True``).
        path, format: where it came from (``format`` as :func:`detect_format` names it, or ``pickled-module``).
        identity: ``{"scheme", "weights", "architecture"}`` (digest.py): what a mask records and is checked
            against; the same weights in another folder, file or format have the same identity.
        build: ``meta=True`` only: a zero-argument callable building a fresh module of the same architecture and
            dtype (the sharded engine builds its own, sharded copy and fills it from ``tensors``).
        tensors: ``meta=True`` only: a zero-argument callable giving the file's tensors as ``{name: tensor}`` under
            the module's names (prefixes stripped, tied names filled), memory-mapped, in their stored dtypes: the
            file as it was opened and checked, not read or fitted again.
        dtypes: ``{parameter or buffer name: dtype}`` as the file stores them (weights-only files; empty when the
            file holds its module, whose dtypes are the stored ones).
    """

    model: Any
    path: Path
    format: str
    identity: dict[str, str] = field(default_factory=dict)
    build: Callable[[], Any] | None = None
    tensors: Callable[[], dict[str, Any]] | None = None
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """SHA-256 of the file (a folder: of all its files), what masks written before ``identity`` recorded;
        hashed on first use (:func:`sha256_of`, once per process).

        Raises:
            CheckpointError: a file that cannot be read.
        """
        return sha256_of(self.path)

    @property
    def identity_key(self) -> str:
        """The identity as one string (``scheme:weights:architecture``), e.g. for a resume key."""
        return ":".join(str(self.identity.get(k, "")) for k in ("scheme", "weights", "architecture"))

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "identity": dict(self.identity)}


def identify(module: Any) -> dict[str, str]:
    """The identity of a module in memory (:func:`maskprobe.loading.digest.weights_identity` over its state dict)."""
    from .digest import weights_identity

    return weights_identity(sorted(module.state_dict().items()), architecture_name(module))


def _state_key(module: Any) -> tuple:
    """Names, dtypes and shapes of a module's state: part of the cache key of its identity."""
    return tuple((k, str(v.dtype), tuple(v.shape)) for k, v in sorted(module.state_dict().items()))


def _stat_key(file: Path) -> tuple[int, int, int, int]:
    st = file.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _mapped(
    path: Path,
    names: list[str],
    fitted: Mapping[str, Any],
    file_keys: Mapping[int, tuple[Path, str]],
    purpose: str,
    opened: Mapping[Path, tuple[int, int, int, int]],
) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` of the fitted state for ``names`` in their order, memory-mapped: a safetensors tensor still
    on the meta device (only its header read) is taken from its file here, one at a time, from the file whose header
    was read (``opened``: its device, inode, size and mtime then): a file replaced or rewritten since is refused."""
    from safetensors import safe_open

    handles: dict[Path, Any] = {}
    try:
        for name in names:
            t = fitted[name]
            if t.device.type == "meta":
                file, key = file_keys[id(t)]
                if file not in handles:
                    if _stat_key(file) != opened[file]:
                        raise CheckpointError(f"{file} changed since it was opened; run again on a file that stays put")
                    handles[file] = safe_open(str(file), "pt").__enter__()
                t = handles[file].get_tensor(key)
            yield name, t
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} {purpose}: {_one_line(exc)}") from None
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)


def _open_meta(path: Path, fmt: str, build: Callable[[], Any]) -> tuple[Any, Callable, Callable, dict[str, str], IdentityDigest]:
    """``(module on meta, fresh builder, its tensors, stored dtypes, identity)``: the architecture of a file that
    ``read_state_dict(mmap=True)`` can read, checked against the file's names and shapes and cast to its dtype; only
    headers are read (safetensors) or the file memory-mapped (``torch.load(mmap=True)``), once; the identity and
    the tensors (``{name: tensor}`` under the module's names, memory-mapped) read from that one opening.

    Raises:
        CheckpointError: what ``read_state_dict(mmap=True)`` refuses, or names and shapes that do not fit.
    """
    import torch

    file_keys: dict[int, tuple[Path, str]] = {}  # id of a meta tensor -> the file and name that hold its bytes
    opened: dict[Path, tuple[int, int, int, int]] = {}  # each file as its header was read
    if fmt in ("safetensors", "safetensors-sharded", "hf-folder"):
        state: dict[str, Any] = {}
        for file in mmap_files(path):
            opened[file] = _stat_key(file)
            part = safetensors_on_meta([file])
            file_keys.update({id(t): (file, k) for k, t in part.items()})
            state.update(part)
    else:
        state = read_tensors(path, fmt, mmap=True)  # refuses TorchScript and legacy files; maps, does not read
    make = hf_builder(path) if fmt == "hf-folder" else build
    with torch.device("meta"):
        module = make()
    fitted = fit_state(module, state, str(path), extra_ok=fmt == "hf-folder")
    dtypes = floating_dtypes(fitted)
    dtype = one_dtype(dtypes)

    def fresh() -> Any:
        module = make()
        return module.to(dtype) if dtype is not None else module

    module = module.to(dtype) if dtype is not None else module
    cast = {k: v.dtype for k, v in module.state_dict().items()}

    def source() -> Iterator[tuple[str, Any]]:  # what loading would give: each tensor in the module's dtype
        for name, t in _mapped(path, sorted(cast), fitted, file_keys, "to identify it", opened):
            yield name, (t.to(cast[name]) if t.dtype != cast[name] else t)

    def tensors() -> dict[str, Any]:  # as stored: the sharded engine's copy into its shards casts
        return dict(_mapped(path, sorted(cast), fitted, file_keys, "to fill the shards", opened))

    digest = IdentityDigest(path, _state_key(module), architecture_name(module), source)
    return module, fresh, tensors, dtypes, digest


def _load_hf(path: Path) -> Any:
    model, missing, misshaped = load_hf_folder(path)
    if missing or misshaped:
        raise misfit(f"{path} does not fit its class {type(model).__name__}", missing=missing, misshaped=misshaped)
    return model


def _load_torchscript(path: Path) -> Any:
    import torch

    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's problem
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} is a damaged TorchScript archive ({_one_line(exc)})") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    architecture: Callable[[], Any] | None = None,
    *,
    tasks: Sequence[Any] = (),
    model: str | None = None,
    model_args: Mapping[str, str] | None = None,
    trust: bool = False,
    device: Any = "cpu",
    meta: bool = False,
) -> Checkpoint:
    """Open ``path`` (file or folder, format detected by content) as an ``nn.Module``.

    Args:
        architecture: a zero-argument callable building the module of a weights-only file.
        tasks: else the first of these tasks (or ``(task, ref)`` pairs) whose ``build_model()`` returns a module
            is the architecture; tried only for a weights-only file, after ``model``.
        model: ``package.module:factory`` or ``file.py:factory`` (``--model``), called with ``model_args``
            (``--model-arg``, see :func:`parse_model_args`); used when ``architecture`` is None.
        trust: allow unpickling arbitrary objects (a whole pickled ``nn.Module``). Default False.
        device: where the module ends up (loaded on the CPU, then moved). Default ``"cpu"``.
        meta: read no weights: the architecture is built on the meta device (a Hugging Face folder's from its
            config.json), ``Checkpoint.build`` builds fresh copies; the file must be readable memory-mapped
            (:func:`read_state_dict` with ``mmap=True``). ``device`` is ignored.

    Raises:
        CheckpointError: unreadable, unsafe without ``trust``, weights only and no architecture, or not fitting it.
        PluginError: a task's ``build_model()`` failed.
    """
    import torch

    from ..devices import module_on

    path = Path(path)
    fmt = detect_format(path)
    build = architecture_builder(path, architecture, tasks, model, model_args)
    digest = None
    try:
        if meta:
            module, fresh, tensors, dtypes, digest = _open_meta(path, fmt, build)
        else:
            fresh = tensors = None
            fmt, module = _read(path, fmt, trust)
            dtypes = {}
            if fmt not in MODULE_FORMATS:  # a weights-only file: loaded strictly into its architecture
                state = fit_state(built := build(), module, str(path))
                module, dtypes = load_fitted(built, state), floating_dtypes(state)
            pairs = sorted(module.state_dict().items())  # taken now: moving the module later changes nothing hashed
            digest = IdentityDigest(path, _state_key(module), architecture_name(module), lambda: pairs)
            if torch.device(device) != torch.device("cpu"):
                module = module_on(module, device, copy_module=False)  # TorchScript: reloaded there (devices.py)
        identity = digest.result()
    except BaseException:
        if digest is not None:
            digest.cancel()
        raise
    return Checkpoint(model=module, path=path, format=fmt, identity=identity, build=fresh, tensors=tensors, dtypes=dtypes)


def read_contents(path: str | os.PathLike[str], *, trust: bool = False) -> tuple[str, Any]:
    """What a checkpoint holds, without an architecture: ``(format, module_or_tensors)``.

    A module (``nn.Module`` or ``ScriptModule``) for TorchScript, Hugging Face folders and, with ``trust``,
    whole pickled modules (format ``pickled-module``); otherwise the ``{name: tensor}`` dict, unwrapped
    from ``state_dict``/``model`` nesting (prefixes kept).

    Raises:
        CheckpointError: unreadable, or unsafe without ``trust``.
    """
    path = Path(path)
    return _read(path, detect_format(path), trust)


MODULE_FORMATS = frozenset({"hf-folder", "torchscript", "pickled-module"})  # files that hold their module


def _read(path: Path, fmt: str, trust: bool) -> tuple[str, Any]:
    """The one format branch: ``(format, module)`` for :data:`MODULE_FORMATS`, else ``(format, {name: tensor})``."""
    from torch import nn

    if fmt == "hf-folder":
        return fmt, _load_hf(path)
    if fmt == "torchscript":
        return fmt, _load_torchscript(path)
    obj = read_tensors(path, fmt, trust=trust)
    return ("pickled-module" if isinstance(obj, nn.Module) else fmt), obj


def read_state_dict(path: str | os.PathLike[str], *, trust: bool = False, mmap: bool = False) -> tuple[str, dict[str, Any]]:
    """The raw tensors of a checkpoint, no architecture needed: ``(format, {name: tensor})`` (prefixes kept).

    Args:
        trust: as for :func:`load_checkpoint`.
        mmap: memory-map instead of reading: safetensors files (single, sharded, a Hugging Face folder's) and
            ``torch.save`` zip files (``torch.load(mmap=True)``); what ``train --shard`` reads.

    For TorchScript, pickled modules and Hugging Face folders (without ``mmap``) the module is loaded and its
    state dict returned.

    Raises:
        CheckpointError: unreadable, unsafe without ``trust``; with ``mmap`` also TorchScript, legacy ``torch.save``
            files and ``.bin`` Hugging Face folders.
    """
    if mmap:
        path = Path(path)
        fmt = detect_format(path)
        obj = read_tensors(path, fmt, trust=trust, mmap=True)
        return ("pickled-module", dict(obj.state_dict())) if not isinstance(obj, dict) else (fmt, obj)
    fmt, contents = read_contents(path, trust=trust)
    return fmt, contents if isinstance(contents, dict) else dict(contents.state_dict())
