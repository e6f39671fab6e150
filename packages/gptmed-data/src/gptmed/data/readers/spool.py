"""Inputs that can be read only once (standard input, pipes, FIFOs): copied to a temp file first."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
import tempfile
import weakref
from pathlib import Path

__all__ = ["Spool", "read_once"]

_log = logging.getLogger(__name__)


def read_once(path: Path) -> bool:
    """Standard input (``-``), a pipe or FIFO, a terminal: inputs that can be read only once."""
    if str(path) == "-":
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


class Spool:
    """A temp copy of an input that can be read only once (:func:`read_once`).

    Format detection, CSV separator sniffing, error positions and ``split`` read their input more
    than once; a second ``open`` of a drained pipe reads nothing, and of a FIFO waits forever for
    a writer. The copy keeps the input's last suffixes (``.csv.gz``) for format detection and is
    removed when the last reader holding it is gone.
    """

    def __init__(self, path: Path) -> None:
        stdin = str(path) == "-"
        fd, tmp = tempfile.mkstemp(
            prefix="gptmed-data-input-", suffix="" if stdin else "".join(path.suffixes[-2:])
        )
        self.path = Path(tmp)
        self._remove = weakref.finalize(self, self.path.unlink, missing_ok=True)
        try:
            with os.fdopen(fd, "wb") as out:
                if stdin:
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
                else:
                    with open(path, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            self._remove()
            raise
        _log.debug("copied %s to %s (%d bytes)", path, tmp, self.path.stat().st_size)
