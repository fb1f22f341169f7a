"""One writer per output: ``maskprobe train`` holds an exclusive ``fcntl.flock`` on ``<mask>.lock`` while it runs.

The kernel drops a flock when its process dies, so a lock file left by a killed run blocks nobody: the next run
locks it again. The file is removed when the run ends (it holds the owner's pid, for the error message).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .atomic import make_parents, remove_empty_folders
from .errors import BadInputError

try:
    import fcntl
except ImportError:  # not on POSIX: no locking
    fcntl = None  # type: ignore[assignment]


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``m.safetensors`` -> ``m.safetensors.lock``."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


class OutputLock:
    """Exclusive locks on several outputs, all or none; use as a context manager or acquire()/release().

    ``created`` lists the folders the locks made (deepest first), so that a failed run can remove them again.
    """

    def __init__(self, targets: list[Path]):
        self.targets = [Path(t) for t in targets]
        self.created: list[Path] = []
        self._held: list[tuple[Path, int]] = []

    def acquire(self) -> OutputLock:
        if fcntl is None:
            return self
        try:
            for target in self.targets:
                self._lock_one(target)
        except BaseException:
            self.release()
            self.remove_created_folders()
            raise
        return self

    def _lock_one(self, target: Path) -> None:
        path = lock_path(target)
        try:
            self.created += make_parents(path)
        except OSError as exc:
            raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
        for _ in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                who = f" (pid {owner})" if owner else ""
                raise BadInputError(
                    f"{target} is being written by another maskprobe train{who}: wait for it to finish or choose "
                    f"another --out (lock: {path})"
                ) from None
            # the owner before us may have removed the file after we opened it: lock the file that is there now
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held.append((path, fd))  # ours now: release() removes it, also if writing the pid fails
                try:
                    _write_pid(fd)
                except OSError as exc:  # a full disk (ENOSPC), a quota: one line, and no empty lock or folder left
                    raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
                return
            os.close(fd)
        raise BadInputError(f"cannot lock {path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock files (while still holding them) and unlock."""
        for path, fd in reversed(self._held):
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
            os.close(fd)
        self._held = []

    def remove_created_folders(self) -> None:
        """After a failed run: remove the folders the locks created, where they are empty."""
        remove_empty_folders(self.created)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _write_pid(fd: int) -> None:
    """This process's id into the lock file ``fd`` (for the message of a second run)."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
