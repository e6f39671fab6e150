"""Starting a run: :func:`train_model`, the library call behind ``gptmed-train``.

It resolves the device, joins the DDP process group, takes the checkpoint folder (a lock, stale
temp files swept), finds the checkpoint to resume and merges its settings, then hands over to a
:class:`~gptmed.training.trainer.Trainer`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gptmed.core import CheckpointError
from gptmed.training.callbacks import TrainCallbacks, TrainResult
from gptmed.training.checkpoint import (
    find_latest_checkpoint,
    load_checkpoint,
    sweep_temp_files,
    warn_of_an_earlier_run,
)
from gptmed.training.config import TrainingConfig
from gptmed.training.data import make_synthetic_dataset
from gptmed.training.devices import resolve_device
from gptmed.training.distributed import DistInfo, broadcast_object, dist_info, init_process_group, shutdown
from gptmed.training.errors import TrainingError
from gptmed.training.lock import FolderLock
from gptmed.training.trainer import Trainer

__all__ = ["QUICK_TEST_STEPS", "train_model"]

log = logging.getLogger(__name__)

QUICK_TEST_STEPS = 12


def train_model(
    config: TrainingConfig,
    callbacks: TrainCallbacks | None = None,
    *,
    explicit_fields: set[str] | None = None,
) -> TrainResult:
    """Train per ``config``; return a :class:`TrainResult`.

    Raises :class:`TrainingInterrupted` after SIGINT/SIGTERM (checkpoint saved),
    :class:`NonFiniteLossError` on NaN/inf, and :class:`gptmed.core.GptmedError` subclasses for bad
    input. ``explicit_fields`` names the settings the user typed (the CLI passes them): on resume
    the others come from the checkpoint.
    """
    cb = callbacks or TrainCallbacks()
    info = dist_info()
    lock: FolderLock | None = None
    trainer: Trainer | None = None
    try:
        synthetic = False
        if config.quick_test:
            config, synthetic = _quick_test_config(config, explicit_fields)
        device = resolve_device(config.device, info)
        init_process_group(info, device)
        lock, resume_path, found = _take_folder(config, info)
        checkpoint: dict[str, Any] | None = None
        if resume_path is not None:
            checkpoint = found if found is not None else load_checkpoint(resume_path)
            config = config.merged_with_checkpoint(dict(checkpoint["training_config"]), explicit_fields)
        trainer = Trainer(config, cb, info, device, synthetic)
        if checkpoint is not None and resume_path is not None:
            trainer.restore(resume_path, checkpoint)
        if info.is_main:
            cb.on_start(trainer.run_info(resume_path))
        return trainer.fit()
    finally:
        # the trainer's DDP model holds the process group (its reducer): it goes first, so that
        # shutdown() destroys a group nothing uses. With the trainer still bound here, one rank of
        # a 2-process gloo run hung after training (a native mutex wait as this frame ended,
        # gloo's threads still running: once in three fresh-clone CI runs, 2026-12-05).
        trainer = None
        if lock is not None:
            lock.release()
        shutdown()


def _take_folder(
    config: TrainingConfig, info: DistInfo
) -> tuple[FolderLock | None, Path | None, dict[str, Any] | None]:
    """Rank 0 locks the checkpoint folder, sweeps stale temp files and finds the checkpoint to
    resume; the other ranks learn the path. Returns (lock, resume path, its loaded state if found)."""
    ckpt_dir = Path(config.checkpoint_dir)
    lock: FolderLock | None = None
    resume_path: Path | None = None
    found_state: dict[str, Any] | None = None
    error: str | None = None
    if info.is_main:
        try:
            lock = FolderLock(ckpt_dir)
            lock.acquire()
            for stale in sweep_temp_files(ckpt_dir):
                log.info("removed stale temp file %s", stale)
            if config.resume_from:
                resume_path = Path(config.resume_from)
            elif config.resume:
                found = find_latest_checkpoint(ckpt_dir)
                if found is None:
                    raise CheckpointError(
                        f"--resume: no valid checkpoint in {ckpt_dir}",
                        hint="drop --resume to start a new run, or pass --resume-from FILE",
                    )
                resume_path, found_state = found
            else:
                warn_of_an_earlier_run(ckpt_dir)
        except BaseException as exc:
            if lock is not None:
                lock.release()
            error = f"{type(exc).__name__}: {exc}"
            if info.enabled:
                broadcast_object({"error": error}, info)
            raise
    shared = broadcast_object({"error": error, "resume": str(resume_path) if resume_path else None}, info)
    if shared.get("error"):
        raise TrainingError(f"rank 0 failed: {shared['error']}")
    return lock, (Path(shared["resume"]) if shared.get("resume") else None), found_state


def _quick_test_config(config: TrainingConfig, explicit: set[str] | None) -> tuple[TrainingConfig, bool]:
    """--quick-test: tiny model, <= 12 steps, small eval; synthetic data when none exists."""

    def given(name: str) -> bool:
        if explicit is not None:
            return name in explicit
        return bool(getattr(config, name) != TrainingConfig.defaults().get(name))

    quick = {
        "model_size": "tiny",
        "num_epochs": 2,
        "max_steps": QUICK_TEST_STEPS,
        "batch_size": 4,
        "warmup_steps": 2,
        "max_eval_batches": 2,
        "eval_every": 6,
    }
    changes: dict[str, Any] = {name: value for name, value in quick.items() if not given(name)}
    changes["checkpoint_dir"] = str(Path(config.checkpoint_dir) / "quick-test")
    synthetic = False
    if not Path(config.train_data_path).is_file():
        folder = Path(changes["checkpoint_dir"]) / "synthetic-data"
        changes["train_data_path"] = str(make_synthetic_dataset(folder, seed=config.seed))
        changes["val_data_path"] = str(folder / "val.npy")
        synthetic = True
    return config.replace(**changes), synthetic
