"""Input paths checked before anything opens them: a FIFO would block ``open()`` forever, a symlink loop would
read as "not found". One-line errors for both (and for sockets, devices, broken symlinks)."""

from __future__ import annotations

import errno
import os
import stat
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
