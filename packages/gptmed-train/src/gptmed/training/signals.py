"""SIGINT / SIGTERM during training: finish the current step, save, exit 130 / 143.

The first signal only sets a flag that the loop checks after each optimizer step; a second SIGINT
exits at once (exit 130) without waiting. Checkpoints are written atomically, so exiting in the
middle of a save leaves the previous files intact (the temp file is swept by the next run).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """Context manager installing the handlers (main thread only); ``.requested`` is the signum."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            try:
                sys.stderr.write("\nSecond interrupt: exiting now without saving.\n")
                sys.stderr.flush()
            finally:
                os._exit(130)
        if self.requested is None:
            self.requested = signum
            try:
                name = signal.Signals(signum).name
                sys.stderr.write(
                    f"\n{name} received: saving a checkpoint after this step (Ctrl-C again to quit now)\n"
                )
                sys.stderr.flush()
            except Exception:  # pragma: no cover - never fail inside a handler
                pass

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
