"""The training loop behind ``gptmed-train``: :class:`Trainer`, and :func:`train_model` around it.

What one optimizer step does (``B`` = batch_size, ``A`` = grad_accum, ``W`` = processes):

1. Epoch ``e`` visits train rows in ``epoch_order(seed, e)``; the step takes the next ``B * A``
   rows (``position`` counts rows consumed in the epoch, so a checkpoint can resume in the middle
   of an epoch with the same order). Incomplete last batches are dropped.
2. Each micro-batch of ``B`` rows is split in ``W`` equal slices, one per rank; the host turns each
   slice into model inputs (:mod:`gptmed.training.batches`), a step ahead on CUDA.
3. The loss is the sum of token losses over the step's targets divided by their total count (known
   in advance from the mask), so 1 process with B rows and W processes with B / W rows each take
   the same step. Nothing is averaged per micro-batch.
4. Gradient clipping, then AdamW with decay groups and the LR of warmup + cosine. A step whose
   loss or gradient norm is NaN/inf is skipped on the device (the optimizer never applies it) and
   the run stops with :class:`NonFiniteLossError` naming that step, before any later evaluation or
   checkpoint (on CUDA the host learns of it one step later: nothing waits for the GPU per step).

Checkpoints hold everything needed to continue bit-exactly on CPU: model, optimizer, scheduler,
scaler, step, epoch, position, RNG states of every rank, the best-so-far / early-stopping
counters and the time budget spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gptmed.core import ConfigError, DataError
from gptmed.training.batches import Batch, epoch_order
from gptmed.training.budget import BudgetPlan, Cadence
from gptmed.training.callbacks import RunInfo, TrainCallbacks, TrainResult
from gptmed.training.checkpoint import (
    RunState,
    build_checkpoint,
    check_resume_matches,
    prune_checkpoints,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from gptmed.training.config import TrainingConfig
from gptmed.training.data import load_dataset
from gptmed.training.devices import autocast_dtype, resolve_precision
from gptmed.training.distributed import DistInfo, all_reduce_sum
from gptmed.training.errors import NonFiniteLossError, TrainingInterrupted
from gptmed.training.evaluation import forward_loss, validation_loss
from gptmed.training.metrics import MetricsWriter
from gptmed.training.parts import build_model_config, build_parts, make_loaders, make_time_budget
from gptmed.training.progress import Progress
from gptmed.training.recipe import choose_warmup, fill_in
from gptmed.training.signals import StopSignals
from gptmed.training.stats import DeferredStats, StepRecord

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


class Trainer:
    """One training run: :meth:`__init__` builds it (data, model, optimizer, schedule), :meth:`restore`
    continues a checkpoint, :meth:`fit` runs it. Every rank of a DDP run holds one."""

    def __init__(
        self,
        config: TrainingConfig,
        callbacks: TrainCallbacks,
        info: DistInfo,
        device: torch.device,
        synthetic: bool,
    ) -> None:
        self.cb, self.info, self.device, self.synthetic = callbacks, info, device, synthetic
        self.precision = resolve_precision(config.precision, device)
        self.dataset = load_dataset(config.train_data_path, config.val_data_path, loss_on=config.loss_on)
        B, A, W = config.batch_size, config.grad_accum, info.world_size
        if B % W:
            raise ConfigError(f"--batch-size {B} must be divisible by the number of processes ({W})")
        self.rows_per_step = B * A
        self.steps_per_epoch = len(self.dataset.train) // self.rows_per_step
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{self.dataset.train.path} has {len(self.dataset.train)} sequences, fewer than one step's batch "
                f"of {self.rows_per_step} (--batch-size {B} x --grad-accum {A})",
                hint=f"lower --batch-size to at most {len(self.dataset.train)} or add data",
            )
        base_model = build_model_config(config, self.dataset)
        self.config, self.choices, self.warmup_auto = fill_in(
            config, base_model, self.rows_per_step, self.steps_per_epoch
        )
        self.model_config = build_model_config(self.config, self.dataset)
        self.ckpt_dir = Path(self.config.checkpoint_dir)
        # where the run is, and what it has done
        self.state = RunState()
        self.start_step = 0
        self.stopped = "completed"  # or max_steps | early_stopping | time_budget
        self.train_loss: float | None = None  # mean step loss of the last epoch
        self.last_val: float | None = None
        self.last_eval_step = self.last_saved_step = -1
        self.last_checkpoint: Path | None = None
        self.best_checkpoint: Path | None = None
        self.vote: int | None = None  # a stop signal the ranks of a DDP run agreed on
        self.metrics: MetricsWriter | None = None
        self.stats = DeferredStats(device, lag=1 if device.type == "cuda" else 0)
        self.progress = Progress()
        # the time budget (None without one) and its current plan
        self.budget = make_time_budget(self.config, self.model_config, self.dataset)
        self.plan: BudgetPlan | None = None
        self.next_replan = 0.0  # budget seconds spent at which it re-plans
        parts = build_parts(
            self.config, self.model_config, self.steps_per_epoch, device, info, self.precision
        )
        self.raw_model, self.model, self.eval_model = parts.raw_model, parts.model, parts.eval_model
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.dtype = autocast_dtype(self.precision)
        self.layout, self.train_loader, self.val_loader = make_loaders(self.config, self.dataset, device)

    @property
    def total_steps(self) -> int | None:
        """The step the run ends at: its epochs (and --max-steps), or the budget's plan."""
        epochs = self.config.epoch_limit
        limits = [n for n in (self.config.max_steps, epochs and self.steps_per_epoch * epochs) if n]
        if self.plan is not None:
            limits.append(self.plan.total_steps)
        return min(limits) if limits else None

    @property
    def num_epochs(self) -> int | None:
        """Epochs the run will start (None: a budgeted run that has not planned yet)."""
        total = self.total_steps
        return None if total is None else max(1, math.ceil(total / self.steps_per_epoch))

    def restore(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint`` (loaded from ``path``): weights, optimizer, schedule, RNG, counters."""
        check_resume_matches(
            path,
            checkpoint,
            self.model_config,
            self.dataset.manifest,
            self.dataset.fingerprint,
            self.dataset.folder,
        )
        self.raw_model.load_state_dict(checkpoint["model_state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        if self.precision == "fp16" and checkpoint["scaler_state_dict"]:
            self.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        self.state = RunState.from_checkpoint(checkpoint)
        if self.budget is not None:
            self.budget.spent_before = self.state.budget_spent_s
        best = self.ckpt_dir / "best_model.pt"
        self.best_checkpoint = best if best.is_file() else None
        self.last_checkpoint = path
        self.last_saved_step = self.state.step
        restore_rng(checkpoint["rng_state"], self.device, self.info)
        if self.state.position % self.rows_per_step:
            log.warning(
                "resuming at row %d of the epoch, not a multiple of %d rows per step",
                self.state.position,
                self.rows_per_step,
            )

    def run_info(self, resumed_from: Path | None) -> RunInfo:
        return RunInfo(
            config=self.config,
            model_config=self.model_config,
            model_size=self.config.resolved_model_size,
            num_parameters=sum(p.numel() for p in self.raw_model.parameters()),
            train_sequences=len(self.dataset.train),
            val_sequences=len(self.dataset.val) if self.dataset.val is not None else 0,
            device=str(self.device),
            precision=self.precision,
            world_size=self.info.world_size,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps or 0,
            start_step=self.state.step,
            start_epoch=self.state.epoch,
            resumed_from=resumed_from,
            dataset_dir=self.dataset.folder,
            synthetic_data=self.synthetic,
            layout=self.layout,
            choices=self.choices,
        )

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until the epochs, --max-steps, early stopping or the time budget say stop."""
        self.start_step = self.state.step
        if self.info.is_main:
            self.metrics = MetricsWriter(
                self.ckpt_dir / "metrics.jsonl",
                keep_until_step=self.state.step if self.last_checkpoint is not None else None,
                tensorboard_dir=(self.ckpt_dir / "tensorboard") if self.config.tensorboard else None,
            )
        self.model.train()
        self.t0 = time.time()
        self.progress.start(self.total_steps)
        if self._epochs_done() and self.info.is_main:
            self.cb.on_message(
                f"Nothing to train: the checkpoint already finished {self.state.epoch} of "
                f"{self.config.epoch_limit} epochs (raise --num-epochs to continue)"
            )
        with StopSignals() as signals, contextlib.ExitStack() as closing:
            if self.metrics is not None:
                closing.callback(self.metrics.close)
            while not self._epochs_done() and self.stopped == "completed":
                self.run_epoch(signals)
            if self.stopped != "completed":
                self._finish_early()
        return self._result()

    def _epochs_done(self) -> bool:
        limit = self.config.epoch_limit
        return limit is not None and self.state.epoch >= limit

    def _step_limit_reached(self) -> bool:
        total = self.total_steps
        if total is None or self.state.step < total:
            return False
        self.stopped = (
            "time_budget" if self.plan is not None and total == self.plan.total_steps else "max_steps"
        )
        return True

    def run_epoch(self, signals: StopSignals) -> None:
        """One epoch (or the rest of it, after a resume): steps, then the epoch's evaluation and checkpoint."""
        state, n = self.state, len(self.dataset.train)
        if self._step_limit_reached():
            return
        order = epoch_order(self.config.seed, state.epoch, n)
        if self.info.is_main:
            self.cb.on_epoch_start(state.epoch + 1, self.num_epochs)
        epoch_t0 = time.time()
        starts = range(state.position, n - self.rows_per_step + 1, self.rows_per_step)
        steps = self.train_loader.steps(
            (self._step_slices(order[p : p + self.rows_per_step]) for p in starts),
            self.device,
            prefetch=self.device.type == "cuda",
        )
        with contextlib.closing(steps):
            for n_targets, batches in steps:
                if self._step_limit_reached():
                    return
                self.train_step(batches, n_targets, signals)
                if self.after_step(signals, end_of_epoch=state.position + self.rows_per_step > n):
                    return
        self.end_epoch(time.time() - epoch_t0)

    def _step_slices(self, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """A step's rows and this rank's slice of each micro-batch of them."""
        B, per_rank, rank = (
            self.config.batch_size,
            self.config.batch_size // self.info.world_size,
            self.info.rank,
        )
        micro = [rows[j * B : (j + 1) * B] for j in range(self.config.grad_accum)]
        return rows, [m[rank * per_rank : (rank + 1) * per_rank] for m in micro]

    def train_step(self, batches: list[Batch], n_targets: int, signals: StopSignals) -> None:
        """Forward and backward every micro-batch, then one optimizer step (skipped on the device when
        the loss or gradient norm is not finite). Nothing here waits for the device."""
        state, W, A = self.state, self.info.world_size, len(batches)
        lr = self.scheduler.set_step(state.step)
        if self.budget is not None:
            self.budget.start()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for j, batch in enumerate(batches):
            sync = contextlib.nullcontext()
            if self.info.enabled and j < A - 1:
                sync = self.model.no_sync()  # type: ignore[operator]
            with sync:
                mean = forward_loss(self.model, batch, self.dtype)
                weight = (batch.n_targets * W / n_targets) if n_targets else 0.0
                self.scaler.scale(mean * weight).backward()  # type: ignore[no-untyped-call]
            loss_sum += mean.detach().double() * batch.n_targets
        vote = self._stop_vote(signals)
        totals = torch.stack((loss_sum, vote))
        all_reduce_sum(totals, self.info)  # DDP: the step's loss sum and stop votes of every rank
        self.scaler.unscale_(self.optimizer)
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip).double()
        bad = ~torch.isfinite(totals[0])
        if not self.scaler.is_enabled():  # fp16's scaler expects inf gradients now and then: it skips those
            bad |= ~torch.isfinite(grad_norm)
        self._optimizer_step(bad)
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.position += self.rows_per_step
        tokens = sum(b.n_tokens for b in batches) * W
        slots = sum(b.n_slots for b in batches) * W
        info = {"lr": lr, "epoch": state.epoch, "n_targets": n_targets, "tokens": tokens, "slots": slots}
        self.stats.push(state.step, torch.stack((totals[0], grad_norm, bad.double(), totals[1])), info)

    def _stop_vote(self, signals: StopSignals) -> torch.Tensor:
        """This rank's vote to stop (the signal number, 0 for none) as a device scalar; DDP sums the
        votes so every rank stops at the same step."""
        vote = torch.tensor(float(signals.requested or 0), dtype=torch.float64)
        if self.device.type == "cuda":
            return vote.pin_memory().to(self.device, non_blocking=True)
        return vote.to(self.device)

    def _optimizer_step(self, bad: torch.Tensor) -> None:
        if self.scaler.is_enabled():  # fp16: the scaler skips steps with inf/NaN gradients itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif getattr(self.optimizer, "_step_supports_amp_scaling", False):  # fused AdamW: skip on device
            self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(bad):  # pragma: no cover - an optimizer without found_inf: ask the host
            self.optimizer.step()

    def after_step(self, signals: StopSignals, *, end_of_epoch: bool) -> bool:
        """What follows a step: its numbers (when they reached the host), evaluation and checkpoint
        cadence, the time budget, signals. True when the run stops here."""
        state, config = self.state, self.config
        self.collect()
        stop_sig = self.vote if self.info.enabled else signals.requested
        if self.budget is not None:
            self._follow_budget()
        due = not end_of_epoch and config.eval_every and state.step % config.eval_every == 0
        if due and self.after_eval(self.evaluate()):
            self._early_stop_message()
            self.stopped = "early_stopping"
        if config.save_every and state.step % config.save_every == 0 and not end_of_epoch:
            self.save("step", self.last_val)
        if stop_sig:
            path = (
                self.save("interrupt", self.last_val)
                if self.last_saved_step != state.step
                else self.last_checkpoint
            )
            raise TrainingInterrupted(int(stop_sig), state.step, path)
        return self.stopped != "completed"

    def collect(self, *, everything: bool = False) -> None:
        """Handle the step records that reached the host (all of them with ``everything``): raise on
        a non-finite step, count losses, report progress, write metrics, note a DDP stop vote."""
        records = self.stats.drain() if everything else self.stats.ready()
        for record in records:
            self._check_finite(record)
            loss_sum, grad_norm, _, vote = record.values
            n_targets = record.info["n_targets"]
            loss = loss_sum / n_targets if n_targets else 0.0
            self.state.epoch_loss_sum += loss
            self.state.epoch_steps += 1
            self.state.tokens_seen += record.info["tokens"]
            rate = self.progress.step_done(record.step, record.info["tokens"], record.info["slots"])
            if vote and self.vote is None:
                self.vote = signal.SIGTERM if vote % signal.SIGTERM == 0 else signal.SIGINT
            if not self.info.is_main:
                continue
            self.progress.losses.append(loss)
            total = self.total_steps or record.step
            self.cb.on_step(record.step, total, loss, record.info["lr"], rate.slots_per_s, rate.eta_s(total))
            if self.metrics is not None and record.step % self.config.log_every == 0:
                row = {"kind": "train", "step": record.step, "epoch": record.info["epoch"], "loss": loss}
                row.update(lr=record.info["lr"], grad_norm=grad_norm, tokens_per_s=rate.slots_per_s)
                row.update(useful_tokens_per_s=rate.tokens_per_s, elapsed=time.time() - self.t0)
                self.metrics.write(row)

    def _check_finite(self, record: StepRecord) -> None:
        loss_sum, grad_norm, bad, _ = record.values
        if bad:
            n_targets = record.info["n_targets"]
            raise NonFiniteLossError.at_step(
                record.step,
                record.info["epoch"],
                loss=loss_sum / n_targets if n_targets else 0.0,
                grad_norm=grad_norm,
                last_checkpoint=self.last_checkpoint,
                learning_rate=self.config.learning_rate or 0.0,
            )

    # -- the time budget ---------------------------------------------------------------------------
    def _follow_budget(self) -> None:
        """Plan once enough steps were timed; re-plan every 5% of the budget; stop when out of time."""
        budget, step = self.budget, self.state.step
        assert budget is not None
        if step == self.start_step + 1:
            self.collect(everything=True)  # the first step (warm-up costs) is not timed
            budget.mark(step)
            return
        due = self.plan is None and budget.calibrated(step, self.start_step)
        due = due or (self.plan is not None and budget.spent() >= self.next_replan)
        if due:
            self.collect(everything=True)
            budget.steps_done(step)
            self._replan()
        if self.plan is not None and budget.out_of_time(final_evals=int(self.dataset.val is not None)):
            self.plan = dataclasses.replace(self.plan, total_steps=step)
            log.info("time budget: out of time at step %d, ending the run", step)

    def _replan(self) -> None:
        budget, step = self.budget, self.state.step
        assert budget is not None
        cadence = Cadence(
            self.steps_per_epoch, self.config.eval_every, self.config.save_every, self.dataset.val is not None
        )
        first = self.plan is None
        self.plan = budget.plan(step, cadence, step_cap=self._epoch_step_cap())
        warmup = None
        if first and self.warmup_auto:
            choice = choose_warmup(self.plan.total_steps)
            warmup = max(int(choice.value), step)
            self.choices.append(choice)
            self.config = self.config.replace(warmup_steps=warmup)  # what checkpoints record
        self.scheduler.replan(step, self.plan.total_steps, warmup)
        self.next_replan = budget.spent() + 0.05 * budget.seconds
        if self.info.is_main:
            self.cb.on_plan(self.plan, self.run_info(None), first)

    def _epoch_step_cap(self) -> int | None:
        epochs = self.config.epoch_limit
        limits = [n for n in (self.config.max_steps, epochs and epochs * self.steps_per_epoch) if n]
        return min(limits) if limits else None

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean loss per target over the val split (or its first --max-eval-batches batches)."""
        if self.val_loader is None:
            return None
        self.collect(everything=True)  # a non-finite step stops the run before it is evaluated
        t0 = time.monotonic()
        self.eval_model.eval()
        loss = validation_loss(
            self.eval_model,
            self.val_loader,
            batch_size=self.config.batch_size,
            max_batches=self.config.max_eval_batches,
            info=self.info,
            device=self.device,
            dtype=self.dtype,
        )
        self.eval_model.train()
        if self.budget is not None:
            self.budget.took("eval", time.monotonic() - t0)
        return loss

    def after_eval(
        self, val_loss: float | None, *, count_for_patience: bool = True, epoch_end: bool = False
    ) -> bool:
        """Record an evaluation (metrics, best model, patience); True when early stopping says stop."""
        step = self.state.step
        self.last_eval_step = step
        if val_loss is None:
            return False
        self.last_val = val_loss
        if self.metrics is not None:
            row = {"kind": "eval", "step": step, "epoch": self.state.epoch, "val_loss": val_loss}
            self.metrics.write({**row, "elapsed": time.time() - self.t0})
        if self.info.is_main and not epoch_end:  # on_epoch_end reports that one
            self.cb.on_eval(step, val_loss)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"validation loss is {val_loss} at step {step}",
                step=step,
                last_checkpoint=self.last_checkpoint,
                hint=f"last good checkpoint: {self.last_checkpoint or 'none (no checkpoint saved yet)'}; "
                "lower --learning-rate",
            )
        state = self.state
        if state.best_val is None or val_loss < state.best_val:
            state.best_val, state.bad_evals = val_loss, 0
            self.save_best(val_loss)
            return False
        if count_for_patience:
            state.bad_evals += 1
        patience = self.config.early_stopping_patience
        return bool(patience and state.bad_evals >= patience)

    def _early_stop_message(self) -> None:
        if self.info.is_main:
            self.cb.on_message(
                f"Early stopping: val loss has not improved for {self.state.bad_evals} evaluations "
                f"(best {self.state.best_val:.4f})"
            )

    # -- checkpoints -------------------------------------------------------------------------------
    def payload(self, val_loss: float | None) -> dict[str, Any]:
        """Everything a checkpoint holds (a collective under DDP: every rank calls it)."""
        self.collect(everything=True)  # counters complete; a non-finite step is never saved
        if self.budget is not None:
            self.state.budget_spent_s = self.budget.spent()
        return build_checkpoint(
            model=self.raw_model,
            optimizer=self.optimizer,
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            rng=rng_state(self.device, self.info),
            state=self.state,
            model_config=self.model_config,
            training_config=self.config.to_dict(),
            dataset=self.dataset,
            val_loss=val_loss,
        )

    def save(self, kind: str, val_loss: float | None = None) -> Path | None:
        """Save a checkpoint of the current state (kind: epoch | step | final | interrupt)."""
        t0 = time.monotonic()
        payload = self.payload(val_loss)
        path: Path | None = None
        if self.info.is_main:
            state = self.state
            name = (
                f"checkpoint_epoch_{state.epoch}.pt"
                if kind == "epoch"
                else f"checkpoint_step_{state.step}.pt"
            )
            path = save_checkpoint(self.ckpt_dir / name, payload)
            self.last_checkpoint = path
            self.cb.on_checkpoint(path, kind)
            prune_checkpoints(self.ckpt_dir, self.config.keep_last, protect=(path,))
        self.last_saved_step = self.state.step
        if self.budget is not None:
            self.budget.took("save", time.monotonic() - t0)
        return path

    def save_best(self, val_loss: float) -> None:
        t0 = time.monotonic()
        payload = self.payload(val_loss)
        if self.info.is_main:
            self.best_checkpoint = save_checkpoint(self.ckpt_dir / "best_model.pt", payload)
            self.cb.on_checkpoint(self.best_checkpoint, "best")
        if self.budget is not None:
            self.budget.took("save", time.monotonic() - t0)

    # -- the ends of epochs and runs ---------------------------------------------------------------
    def end_epoch(self, seconds: float) -> None:
        """The epoch's train loss, evaluation, best model and checkpoint."""
        self.collect(everything=True)
        state = self.state
        train_loss = state.epoch_loss_sum / state.epoch_steps if state.epoch_steps else None
        state.epoch += 1
        state.position = 0
        state.epoch_loss_sum, state.epoch_steps = 0.0, 0
        self.train_loss = train_loss
        val_loss = self.evaluate()
        stop_early = False
        if val_loss is not None:
            stop_early = self.after_eval(val_loss, epoch_end=True)
        elif train_loss is not None and (state.best_val is None or train_loss < state.best_val):
            state.best_val = train_loss  # no val split: "best" follows the train loss
            self.save_best(train_loss)
        self.save("epoch", val_loss)
        if self.info.is_main:
            self.cb.on_epoch_end(state.epoch, self.num_epochs, train_loss, val_loss, seconds)
        if stop_early:
            self.stopped = "early_stopping"
            self._early_stop_message()

    def _finish_early(self) -> None:
        """A run cut short (--max-steps, the time budget, early stopping) still ends evaluated, with a
        best_model.pt and a final checkpoint, even when a --save-every one was just written."""
        self.collect(everything=True)
        state = self.state
        if self.train_loss is None and state.epoch_steps:
            self.train_loss = state.epoch_loss_sum / state.epoch_steps
        budgeted = self.stopped in ("max_steps", "time_budget")
        if budgeted and self.val_loader is not None and self.last_eval_step != state.step:
            self.after_eval(self.evaluate(), count_for_patience=False)
        if self.last_saved_step != state.step:
            self.save("final", self.last_val)

    def _result(self) -> TrainResult:
        elapsed = time.time() - self.t0
        done = self.progress.totals()
        result = TrainResult(
            steps=self.state.step,
            epoch=self.state.epoch,
            stopped=self.stopped,
            train_loss=self.train_loss,
            val_loss=self.last_val,
            best_val_loss=self.state.best_val,
            best_checkpoint=self.best_checkpoint,
            last_checkpoint=self.last_checkpoint,
            checkpoint_dir=self.ckpt_dir,
            elapsed_s=elapsed,
            tokens_per_s=done.slots / elapsed if elapsed > 0 else 0.0,
            step_losses=list(self.progress.losses),
            useful_tokens_per_s=done.tokens / elapsed if elapsed > 0 else 0.0,
            plan=self.plan,
            tokens_seen=self.state.tokens_seen,
        )
        if self.info.is_main:
            self.cb.on_end(result)
        return result
