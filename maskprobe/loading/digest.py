"""A checkpoint's identity: its weights and its architecture, not the files around them (docs/mask-format.md).

:func:`weights_identity` is a SHA-256 over the module's state, tensor by tensor in sorted name order (name,
dtype, shape, bytes), beside the architecture's class name: a ``notes.txt`` added to a folder, a copy of the
weights elsewhere or the same tensors saved in another format keep it; a changed weight changes it.
:class:`IdentityDigest` computes it in a thread (``hashlib`` releases the GIL) over tensors already in memory or
memory-mapped, one at a time: nothing is copied but one tensor cast to the module's dtype where the file
stores another. Results are kept per (device, inode, size, mtime) of the checkpoint's files and per state
layout, so opening the same checkpoint again in one process does not hash it again.

:func:`sha256_of` is the SHA-256 of the files themselves: what masks written before the identity recorded
(``checkpoint.sha256``); computed only when such a mask is checked against a checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["IDENTITY_SCHEME", "IdentityDigest", "architecture_name", "sha256_of", "weights_identity"]

_CHUNK = 1 << 22
_known: dict[tuple, str] = {}
_known_ids: dict[tuple, dict[str, str]] = {}
IDENTITY_SCHEME = "maskprobe.weights/1"  # what the bytes hashed are; a new scheme never equals an old one
_lock = threading.Lock()


class _Cancelled(Exception):
    pass


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _identity(path: Path, files: list[Path]) -> tuple:
    """What the hash of ``path`` depends on, short of the bytes: names and (device, inode, size, mtime_ns)."""
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f.relative_to(path)) if path.is_dir() else "", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return (str(path.resolve()), tuple(out))


def sha256_of(path: str | os.PathLike[str], cancel: threading.Event | None = None) -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative names, each followed by NUL, and contents).

    Raises:
        CheckpointError: a file that cannot be read.
    """
    path = Path(path)
    try:
        files = _files(path)
        key = _identity(path, files)
        with _lock:
            if key in _known:
                return _known[key]
        h = hashlib.sha256()
        for f in files:
            if path.is_dir():
                h.update(str(f.relative_to(path)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(_CHUNK), b""):
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled
                    h.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} to hash it: {exc.strerror or exc}") from None
    with _lock:
        _known[key] = h.hexdigest()
    return _known[key]


def architecture_name(module: Any) -> str:
    """The module's class name (a TorchScript module's original class), e.g. ``BertModel``, ``FNN``."""
    return str(getattr(module, "original_name", None) or type(module).__name__)


def _tensor_bytes(t: Any) -> Any:
    """A CPU tensor's bytes as a buffer ``hashlib`` reads without a copy (contiguous tensors)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_quantized:  # the stored integers (the scale and zero point live in the module's other state)
        t = t.int_repr()
    if t.layout != torch.strided:
        t = t.to_dense()
    return t.reshape(-1).contiguous().view(torch.uint8).numpy()


def weights_identity(
    tensors: Iterable[tuple[str, Any]], architecture: str, cancel: threading.Event | None = None
) -> dict[str, str]:
    """``{"scheme", "weights", "architecture"}``: SHA-256 over ``tensors`` (``(name, tensor)`` pairs, taken in
    sorted name order) of ``name NUL dtype NUL shape NUL`` then the tensor's bytes, for each tensor.

    ``tensors`` may be a lazy iterable (memory-mapped files): each tensor is hashed and dropped before the next.
    """
    h = hashlib.sha256()
    for name, t in tensors:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        dtype = str(t.dtype).removeprefix("torch.")
        h.update(f"{name}\0{dtype}\0{','.join(str(d) for d in t.shape)}\0".encode())
        if t.numel():
            h.update(_tensor_bytes(t))
    return {"scheme": IDENTITY_SCHEME, "weights": h.hexdigest(), "architecture": architecture}


class IdentityDigest:
    """:func:`weights_identity` in a daemon thread, started at once over ``source()`` (an iterable of ``(name,
    tensor)`` in sorted order); :meth:`result` waits for it, :meth:`cancel` stops it at the next tensor.

    ``key`` (e.g. the checkpoint's path and the state's names, dtypes and shapes) caches the result per process
    beside the stat of ``path``'s files: the same checkpoint opened again is not hashed again.
    """

    def __init__(
        self, path: str | os.PathLike[str], key: tuple, architecture: str, source: Callable[[], Iterable[tuple[str, Any]]]
    ):
        self._cancel = threading.Event()
        self._value: dict[str, str] | None = None
        self._error: BaseException | None = None
        try:
            path = Path(path)
            self._key: tuple | None = (_identity(path, _files(path)), key, architecture)
        except OSError:
            self._key = None
        with _lock:
            cached = _known_ids.get(self._key) if self._key is not None else None
        if cached is not None:
            self._value = dict(cached)
            self._thread = None
            return
        self._thread = threading.Thread(target=self._run, args=(architecture, source), name="maskprobe-identity", daemon=True)
        self._thread.start()

    def _run(self, architecture: str, source: Callable[[], Iterable[tuple[str, Any]]]) -> None:
        try:
            self._value = weights_identity(source(), architecture, self._cancel)
            if self._key is not None:
                with _lock:
                    _known_ids[self._key] = dict(self._value)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
            self._error = exc

    def result(self) -> dict[str, str]:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise RuntimeError("the identity was cancelled")
        return self._value

    def cancel(self) -> None:
        self._cancel.set()
