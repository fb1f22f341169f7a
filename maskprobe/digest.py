"""SHA-256 of checkpoints, computed once per file per process and beside the loading.

Every mask records its checkpoint's SHA-256 (docs/mask-format.md). Reading a large checkpoint twice, once to
load and once to hash, doubles the wait, so :class:`Digest` hashes in a thread while the weights load
(``hashlib`` and file reads release the GIL), and results are kept per (device, inode, size, mtime) of every
file: opening the same checkpoint again in one process does not hash it again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from .errors import CheckpointError

__all__ = ["Digest", "sha256_of"]

_CHUNK = 1 << 22
_known: dict[tuple, str] = {}
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


class Digest:
    """``sha256_of(path)`` in a daemon thread, started at once; :meth:`result` waits for it, :meth:`cancel`
    stops it at the next chunk (a load that failed has no use for the hash)."""

    def __init__(self, path: str | os.PathLike[str]):
        self._cancel = threading.Event()
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="maskprobe-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: str | os.PathLike[str]) -> None:
        try:
            self._value = sha256_of(path, self._cancel)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise RuntimeError("the hash was cancelled")
        return self._value

    def cancel(self) -> None:
        self._cancel.set()
