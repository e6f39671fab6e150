"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio * lr``."""

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

    def lr_at(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        low = self.lr * self.min_lr_ratio
        return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * progress))

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state.get("last_step", -1))
