"""Errors the trainer raises besides gptmed.core's."""

from __future__ import annotations

import math
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

    @classmethod
    def at_step(
        cls,
        step: int,
        epoch: int,
        *,
        loss: float,
        grad_norm: float,
        last_checkpoint: Path | None,
        learning_rate: float,
    ) -> NonFiniteLossError:
        """The error for optimizer step ``step`` (1-based, in ``epoch``, 0-based): the loss, or else
        the gradient norm, was not finite; the optimizer skipped that step."""
        where = f"at step {step} (epoch {epoch + 1}"
        what = (
            f"loss is {loss} {where})"
            if not math.isfinite(loss)
            else f"gradient norm is {grad_norm} {where}, loss {loss:.4f})"
        )
        good = str(last_checkpoint) if last_checkpoint else "none (no checkpoint saved yet)"
        return cls(
            f"{what}; the optimizer skipped that step and the run stopped: nothing after it was saved",
            step=step,
            last_checkpoint=last_checkpoint,
            hint=f"last good checkpoint: {good}; lower --learning-rate (now {learning_rate:g}) or --grad-clip, "
            "or check the data, then resume from that checkpoint",
        )


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
