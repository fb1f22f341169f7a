"""Atomic file writes: a file appears whole or not at all (temp file in the same folder, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import BadInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched. A
    SIGKILL can leave the hidden ``.NAME.*.tmp`` behind, never a partial ``path``.

    Raises:
        BadInputError: the file cannot be written (a folder in the way, no permission, disk full).
    """
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        except OSError as exc:  # disk full, permissions, a folder in the way: one line, not a traceback
            raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):  # not every filesystem lets us fsync a directory
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, before hours of work, if ``path`` could not be written later. Creates nothing.

    Raises:
        BadInputError: a folder in the way, a file where a folder should be, or no write permission.
    """
    path = Path(path).absolute()
    if path.is_dir():
        raise BadInputError(f"cannot write {path}: it is a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BadInputError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write {path}: no permission to write in {parent}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
