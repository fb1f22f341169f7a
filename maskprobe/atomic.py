"""Atomic file writes: a file appears whole or not at all (temp file in the same folder, fsync, rename).

Files are created with mode ``0666 & ~umask``, like any other writer's (not ``tempfile.mkstemp``'s 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import BadInputError, MaskprobeError
from .errors import one_line as _one_line


def _create_temp(path: Path) -> Path:
    """An empty ``.NAME.<random>.tmp`` beside ``path``, created with ``O_EXCL`` and mode 0666 (the kernel applies the umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def _no_space(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail == 0 or (st.f_favail == 0 and st.f_files > 0)


def write_failure(path: str | os.PathLike[str], exc: BaseException) -> BadInputError:
    """The one-line BadInputError for a writer that failed on ``path``: ``cannot write PATH: REASON``.

    An OSError gives its strerror; a library's error (safetensors, ``torch.save``'s RuntimeError) its first
    line, or "No space left on device" when the folder's filesystem is full (torch's message does not say).
    """
    path = Path(path)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif _no_space(path.parent):
        reason = os.strerror(errno.ENOSPC)
    else:
        reason = _one_line(exc)
    return BadInputError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched. A
    SIGKILL can leave the hidden ``.NAME.*.tmp`` behind, never a partial ``path``.

    Raises:
        BadInputError: the file cannot be written (a folder in the way, no permission, disk full); also
            any OSError, RuntimeError (``torch.save``) or safetensors error raised while writing, quoted on
            one line with the path.
    """
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"cannot write {path}: it is a folder")
    created: list[Path] = []
    try:
        created = make_parents(path)
        tmp_path = _create_temp(path)
    except OSError as exc:
        remove_empty_folders(created)
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(os.stat(tmp_path).st_mode)  # 0666 & ~umask, as the kernel made it
    done = False
    try:
        try:
            yield tmp_path
            if stat.S_IMODE(os.stat(tmp_path).st_mode) != mode:  # a writer that replaced the file (safetensors: 0600)
                os.chmod(tmp_path, mode)
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
            done = True
        except MaskprobeError:
            raise
        except Exception as exc:  # disk full, permissions, a library's writer failing: one line, not a traceback
            if not isinstance(exc, (OSError, RuntimeError)) and type(exc).__name__ != "SafetensorError":
                raise
            raise write_failure(path, exc) from None
        with contextlib.suppress(OSError):  # not every filesystem lets us fsync a directory
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if not done:  # a failed write leaves no folders it made behind either
            remove_empty_folders(created)


def make_parents(path: str | os.PathLike[str]) -> list[Path]:
    """Create the missing folders above ``path``; returns those created, deepest first (for :func:`remove_empty_folders`)."""
    parent = Path(path).absolute().parent
    missing = []
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # made by someone else meanwhile: not ours to remove
            continue
        created.append(folder)
    return created[::-1]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each folder (deepest first) if it is empty; a folder that holds anything is kept."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


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
