"""One trainer per checkpoint folder: an exclusive ``flock`` on ``<checkpoint_dir>/.lock``.

The lock is released by the kernel when the process ends, even on SIGKILL, so a stale lock file
never blocks a later run. A run that ends normally or with an error removes the file, and the
folder too when the lock made it and nothing else was written there (a run that failed before its
first save leaves nothing behind). On platforms without ``fcntl`` the lock is a no-op (logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from types import TracebackType

from gptmed.core import make_folder, missing_folders, remove_empty_folders
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
        self._made: list[Path] = []  # folders acquire() created, deepest first

    def acquire(self) -> None:
        self._made = missing_folders(self.folder)
        make_folder(self.folder, "checkpoint folder")
        try:
            import fcntl
        except ModuleNotFoundError:  # pragma: no cover - Windows
            log.warning("file locking is not available here; do not run two trainers on %s", self.folder)
            return
        while True:
            # again on every try: a holder that made the folder removes it when it releases
            self.folder.mkdir(parents=True, exist_ok=True)
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
            if self._is_at_path(fd):
                break
            # The previous holder removed the file between our open and our flock: this lock is
            # on a file no later process can see. Take the one at the path instead.
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _is_at_path(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file (while still holding it, see acquire), unlock, and remove the
        folders acquire() created if they are still empty."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        remove_empty_folders(self._made)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
