"""``--time-budget``: fit a run to the wall clock.

A budgeted run does not know how many steps it can take until it has taken a few. It trains,
measures the step time over the first steps (the very first one, with its warm-up costs, is left
out), and then plans: the number of optimizer steps such that the steps, the evaluations and
checkpoints they bring (epoch ends, ``--eval-every``, ``--save-every``, a new best model) and the
final evaluation and save all end within the budget. The learning-rate schedule's warmup and
cosine are spread over exactly those steps, so the last step lands at the end of the schedule.
The run re-plans every time it has measured something new (an evaluation, a checkpoint, another
stretch of steps) and moves the end without a jump in the learning rate. The clock starts at the
first step: loading the data and building the model do not count. A resumed run continues the
same budget with the time already spent, and the same plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["BudgetPlan", "Cadence", "TimeBudget"]


@dataclass(frozen=True)
class Cadence:
    """When a run evaluates and saves, in optimizer steps."""

    steps_per_epoch: int
    eval_every: int  # 0 = epoch ends only
    save_every: int  # 0 = epoch ends only
    has_val: bool

    def events(self, done: int, total: int) -> tuple[int, int]:
        """(evaluations, checkpoint saves) that steps ``done+1 .. total`` bring, the final ones
        included; every evaluation is counted as also saving a new best model (the worst case)."""
        epochs = total // self.steps_per_epoch - done // self.steps_per_epoch
        evals = epochs if self.has_val else 0
        if self.has_val and self.eval_every:
            evals += total // self.eval_every - done // self.eval_every
        evals += 1 if self.has_val else 0  # the final evaluation
        saves = epochs + 1 + evals  # epoch checkpoints, the final one, best models
        if self.save_every:
            saves += total // self.save_every - done // self.save_every
        return evals, saves


@dataclass(frozen=True)
class BudgetPlan:
    """What a budgeted run expects to do (printed, and kept for the result)."""

    total_steps: int
    step_s: float
    eval_s: float
    save_s: float
    evaluations: int
    saves: int
    remaining_s: float  # budget left when the plan was made


class TimeBudget:
    """The budget's clock and the measurements a plan is made of."""

    def __init__(
        self, seconds: float, *, eval_in_steps: float, save_guess_s: float, spent: float = 0.0
    ) -> None:
        """``eval_in_steps``: an evaluation's cost in optimizer steps, the guess until one is timed
        (its forward-only batches are ~1/3 of a training step's work); ``save_guess_s`` likewise."""
        self.seconds = float(seconds)
        self.spent_before = float(spent)  # budget used by the run this one resumes
        self._start: float | None = None
        self.step_s: float | None = None  # measured seconds per optimizer step
        self._eval_in_steps = eval_in_steps
        self.eval_s = 0.0  # seconds per evaluation: guessed from the step time until one is measured
        self.save_s = save_guess_s
        self._eval_measured = self._save_measured = False
        self._mark: tuple[float, int] | None = None  # (clock, step) where step timing restarts
        self._paused = 0.0  # eval/save time since the mark (not step time)

    # -- the clock -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._start is None:
            self._start = time.monotonic()

    def spent(self) -> float:
        return self.spent_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    def remaining(self) -> float:
        return self.seconds - self.spent()

    # -- measurements ----------------------------------------------------------------------------
    def mark(self, step: int) -> None:
        """Start timing steps after ``step`` (the first step's warm-up is not a step time)."""
        self._mark = (time.monotonic(), step)
        self._paused = 0.0

    def steps_done(self, step: int) -> None:
        """``step`` steps are done: update the step time from the steps since the mark."""
        if self._mark is None:
            return
        t0, s0 = self._mark
        if step - s0 >= 1:
            measured = (time.monotonic() - t0 - self._paused) / (step - s0)
            self.step_s = measured if self.step_s is None else 0.5 * (self.step_s + measured)
            if not self._eval_measured:
                self.eval_s = self._eval_in_steps * self.step_s
            self.mark(step)

    def took(self, kind: str, seconds: float) -> None:
        """An evaluation (``"eval"``) or a checkpoint save (``"save"``) took ``seconds``."""
        self._paused += seconds
        if kind == "eval":
            self.eval_s = seconds if not self._eval_measured else max(seconds, 0.5 * (self.eval_s + seconds))
            self._eval_measured = True
        else:
            self.save_s = seconds if not self._save_measured else max(seconds, 0.5 * (self.save_s + seconds))
            self._save_measured = True

    def calibrated(self, step: int, first_step: int) -> bool:
        """Enough steps were timed to plan: 3 after the first, and 2% of the budget (at most 10 s)
        or 5% of it."""
        if self._start is None or step - first_step < 4:
            return False
        elapsed = time.monotonic() - self._start
        return elapsed >= min(0.02 * self.seconds, 10.0) or elapsed >= 0.05 * self.seconds

    # -- the plan --------------------------------------------------------------------------------
    def plan(self, done: int, cadence: Cadence, step_cap: int | None) -> BudgetPlan:
        """The most steps (``done`` taken, at most ``step_cap``) whose time, with their evaluations
        and saves, fits what is left of the budget."""
        assert self.step_s is not None, "plan() before any step was timed"
        left = self.remaining()

        def cost(total: int) -> float:
            evals, saves = cadence.events(done, total)
            return (total - done) * self.step_s + evals * self.eval_s + saves * self.save_s  # type: ignore[operator]

        lo, hi = done, done + max(1, int(left / max(self.step_s, 1e-9)) + 1)
        if step_cap is not None:
            hi = min(hi, step_cap)
        while lo < hi:  # the largest total with cost(total) <= left
            mid = (lo + hi + 1) // 2
            if cost(mid) <= left:
                lo = mid
            else:
                hi = mid - 1
        total = max(lo, done + 1)
        evals, saves = cadence.events(done, total)
        return BudgetPlan(
            total_steps=total,
            step_s=self.step_s,
            eval_s=self.eval_s,
            save_s=self.save_s,
            evaluations=evals,
            saves=saves,
            remaining_s=left,
        )

    def out_of_time(self, final_evals: int = 1) -> bool:
        """Whether one more step and the final evaluation and save no longer fit."""
        step = self.step_s or 0.0
        return self.remaining() < step + final_evals * self.eval_s + self.save_s
