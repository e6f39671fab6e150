"""One trainer per checkpoint folder: an exclusive ``flock`` on ``<checkpoint_dir>/.lock``.

The lock is released by the kernel when the process ends, even on SIGKILL, so a stale lock file
never blocks a later run. On platforms without ``fcntl`` the lock is a no-op (logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from types import TracebackType

from gptmed.training.errors import TrainingError

__all__ = ["FolderLock"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderLock:
    """``with FolderLock(folder):`` holds the folder for this process; a second holder gets
    :class:`TrainingError` naming the pid that has it."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ModuleNotFoundError:  # pragma: no cover - Windows
            log.warning("file locking is not available here; do not run two trainers on %s", self.folder)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise TrainingError(
                f"another gptmed-train (pid {holder}) is already using {self.folder}",
                hint="wait for it to finish, stop it, or pass another --checkpoint-dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
