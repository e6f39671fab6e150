"""Throughput and ETA of a run, from the steps whose numbers reached the host."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

__all__ = ["Progress", "Rate"]

WINDOW = 20  # steps the rates are averaged over


@dataclass(frozen=True)
class Rate:
    """Recent throughput: per second, row slots (padding included) and real tokens."""

    step: int  # the step it was measured at
    slots_per_s: float
    tokens_per_s: float
    step_s: float  # seconds per step

    def eta_s(self, total_steps: int) -> float:
        """Seconds until ``total_steps`` at this pace."""
        return max(0, total_steps - self.step) * self.step_s


@dataclass(frozen=True)
class Totals:
    steps: int
    slots: int
    tokens: int


class Progress:
    """Counts the steps of this call and times them over a sliding window.

    A step's time is the wall time between its numbers and the previous step's reaching the host:
    on CUDA, where the host runs ahead, that is the device's pace, not the host's."""

    def __init__(self) -> None:
        self.losses: list[float] = []  # loss of every step this call took
        self._window: deque[tuple[float, int, int]] = deque(maxlen=WINDOW)
        self._last = time.monotonic()
        self._steps = self._slots = self._tokens = 0
        self.total_steps: int | None = None

    def start(self, total_steps: int | None) -> None:
        self._last = time.monotonic()
        self.total_steps = total_steps

    def step_done(self, step: int, tokens: int, slots: int) -> Rate:
        now = time.monotonic()
        self._window.append((now - self._last, slots, tokens))
        self._last = now
        self._steps += 1
        self._slots += slots
        self._tokens += tokens
        spent = sum(t for t, _, _ in self._window)
        if spent <= 0:
            return Rate(step, 0.0, 0.0, 0.0)
        slots_s = sum(s for _, s, _ in self._window) / spent
        tokens_s = sum(n for _, _, n in self._window) / spent
        return Rate(step, slots_s, tokens_s, spent / len(self._window))

    def totals(self) -> Totals:
        return Totals(self._steps, self._slots, self._tokens)
