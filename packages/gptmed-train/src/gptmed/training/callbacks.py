"""What a run tells its caller: :class:`RunInfo` before the first step, :class:`TrainCallbacks`
as it goes (the CLI prints them; the library prints nothing), :class:`TrainResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gptmed.core import Choice, ModelConfig
from gptmed.training.budget import BudgetPlan
from gptmed.training.config import TrainingConfig

__all__ = ["RunInfo", "TrainCallbacks", "TrainResult"]


@dataclass
class RunInfo:
    """What a run is about to do (given to :meth:`TrainCallbacks.on_start`)."""

    config: TrainingConfig  # with every automatic choice filled in
    model_config: ModelConfig
    model_size: str
    num_parameters: int
    train_sequences: int
    val_sequences: int
    device: str
    precision: str
    world_size: int
    steps_per_epoch: int
    total_steps: int  # the epoch plan's steps; a time budget plans its own after a few steps
    start_step: int
    start_epoch: int
    resumed_from: Path | None
    dataset_dir: Path
    synthetic_data: bool
    layout: str = "rows"  # "rows" (B, T) or "flat" (padding dropped on the host)
    choices: list[Choice] = field(default_factory=list)  # the settings the run chose itself, with why


@dataclass
class TrainResult:
    """Outcome of :func:`~gptmed.training.train_model`."""

    steps: int  # optimizer steps taken in total (including before a resume)
    epoch: int  # epochs completed
    stopped: str  # "completed" | "max_steps" | "early_stopping" | "time_budget"
    train_loss: float | None  # mean loss of the last (partial) epoch
    val_loss: float | None  # last validation loss
    best_val_loss: float | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    checkpoint_dir: Path
    elapsed_s: float
    tokens_per_s: float  # row slots (padding included) per second, as the progress line shows
    step_losses: list[float] = field(default_factory=list)  # losses of the steps this call took
    useful_tokens_per_s: float = 0.0  # real (non-padding) input tokens per second
    plan: BudgetPlan | None = None  # the last plan of a --time-budget run
    tokens_seen: int = 0  # real input tokens trained on, over the whole run (resumes included)


class TrainCallbacks:
    """Hooks the CLI uses to print; every method is optional (no-op here). Rank 0 only."""

    def on_start(self, info: RunInfo) -> None: ...
    def on_plan(self, plan: BudgetPlan, info: RunInfo, first: bool) -> None:
        """A time-budgeted run planned (``first``) or re-planned its number of steps."""

    def on_epoch_start(self, epoch: int, num_epochs: int | None) -> None:
        """``num_epochs`` is None while a time-budgeted run has not planned yet."""

    def on_step(
        self, step: int, total_steps: int, loss: float, lr: float, tokens_per_s: float, eta_s: float
    ) -> None: ...
    def on_eval(self, step: int, val_loss: float) -> None:
        """An evaluation between epoch ends (--eval-every, the last one of --max-steps); an epoch's
        own evaluation comes with on_epoch_end."""

    def on_epoch_end(
        self,
        epoch: int,
        num_epochs: int | None,
        train_loss: float | None,
        val_loss: float | None,
        seconds: float,
    ) -> None: ...
    def on_checkpoint(self, path: Path, kind: str) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...
