"""Errors the trainer raises besides gptmed.core's."""

from __future__ import annotations

import signal
from pathlib import Path

from gptmed.core import GptmedError

__all__ = ["NonFiniteLossError", "TrainingError", "TrainingInterrupted"]


class TrainingError(GptmedError):
    """A run that cannot start or continue (bad device, locked folder, too little data, ...)."""


class NonFiniteLossError(TrainingError):
    """The loss (or gradient norm) became NaN/inf: the run stopped before the optimizer step."""

    def __init__(
        self, message: str, *, step: int, last_checkpoint: Path | None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.step = step
        self.last_checkpoint = last_checkpoint


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint; exit code ``128 + signum``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"; saved {checkpoint}" if checkpoint else ""
        super().__init__(f"{name} at step {step}{where}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def report(self, then: str) -> str:
        """The one line a command prints: the step, what was saved, and ``then`` (how to go on)."""
        where = f"saved {self.checkpoint}" if self.checkpoint else "nothing saved (no step taken)"
        return f"Interrupted at step {self.step}: {where}. {then}"
