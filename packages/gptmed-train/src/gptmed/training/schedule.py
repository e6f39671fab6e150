"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio * lr``.

The cosine reaches its floor exactly at the last planned step. A time-budgeted run learns its
number of steps only after it has measured a few (:mod:`gptmed.training.budget`), and re-plans as
it goes: :meth:`WarmupCosine.replan` moves the end without a jump in the learning rate (the decay
continues from where it is, now spread over the new number of remaining steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """Sets each param group's ``lr`` for the step about to be taken (0-based ``step``)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr: float,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float,
    ) -> None:
        self.optimizer = optimizer
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(1, int(total_steps))
        self.min_lr_ratio = float(min_lr_ratio)
        self.last_step = -1
        # the decay so far, for a re-planned end: at ``anchor_step`` it had reached ``anchor_progress``
        self.anchor_step = self.warmup_steps
        self.anchor_progress = 0.0
        self.planned = False  # True once a time budget set the end (resume keeps that plan)

    def progress_at(self, step: int) -> float:
        """How far the decay is at ``step``: 0 at the end of warmup, 1 at the last planned step."""
        if step < self.anchor_step:
            return self.anchor_progress if step >= self.warmup_steps else 0.0
        span = self.total_steps - 1 - self.anchor_step
        if span <= 0:
            return 1.0
        return min(
            1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span
        )

    def lr_at(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        low = self.lr * self.min_lr_ratio
        return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * self.progress_at(step)))

    def replan(self, step: int, total_steps: int, warmup_steps: int | None = None) -> None:
        """End the schedule at ``total_steps`` from ``step`` (the next step to take) on, keeping the
        learning rate continuous; ``warmup_steps`` may still change while warmup has not ended."""
        if warmup_steps is not None and step < self.warmup_steps:
            # never shorter than the steps already taken: the ramp goes on from where it is
            self.warmup_steps = max(int(warmup_steps), step)
            self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        elif step > self.warmup_steps:
            self.anchor_progress = self.progress_at(step)
            self.anchor_step = step
        self.total_steps = max(int(total_steps), step + 1)
        self.planned = True

    def set_step(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": "warmup_cosine",
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr_ratio": self.min_lr_ratio,
            "last_step": self.last_step,
            "anchor_step": self.anchor_step,
            "anchor_progress": self.anchor_progress,
            "planned": self.planned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved schedule. A planned one (time budget) keeps its end; an epoch-based one
        takes its end from this run's settings (so a resume with more epochs stretches it)."""
        self.last_step = int(state.get("last_step", -1))
        if state.get("planned"):
            self.warmup_steps = int(state["warmup_steps"])
            self.total_steps = int(state["total_steps"])
            self.anchor_step = int(state["anchor_step"])
            self.anchor_progress = float(state["anchor_progress"])
            self.planned = True
