"""The training loop behind ``gptmed-train``: :func:`train_model` (a typed library call).

What one optimizer step does (``B`` = batch_size, ``A`` = grad_accum, ``W`` = processes):

1. Epoch ``e`` visits train rows in ``randperm(N, seed + e)`` order; the step takes the next
   ``B * A`` rows (``position`` counts rows consumed in the epoch, so a checkpoint can resume in the
   middle of an epoch with the same order). Incomplete last batches are dropped.
2. Each micro-batch of ``B`` rows is split in ``W`` equal slices, one per rank.
3. The loss is the sum of token losses over the step's targets divided by their total count (known
   in advance from the mask), so 1 process with B rows and W processes with B / W rows each take
   the same step. Nothing is averaged per micro-batch.
4. A NaN/inf loss or gradient norm stops the run *before* the optimizer step (nothing saved).
5. Then gradient clipping, AdamW with decay groups, LR from warmup + cosine.

Checkpoints hold everything needed to continue bit-exactly on CPU: model, optimizer, scheduler,
scaler, step, epoch, position, RNG states of every rank, and the best-so-far / early-stopping
counters.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gptmed.configs.train_config import TrainingConfig
from gptmed.core import (
    CheckpointError,
    CheckpointManifest,
    ConfigError,
    DataError,
    ModelConfig,
    get_config,
    sweep_temp_files,
)
from gptmed.model import GPTTransformer, clean_state_dict, unwrap
from gptmed.training.checkpoint import (
    checkpoint_files,
    find_latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from gptmed.training.data import IGNORE_INDEX, Dataset, load_dataset, make_synthetic_dataset
from gptmed.training.distributed import (
    DistInfo,
    all_gather_tensor,
    all_reduce_sum,
    broadcast_object,
    dist_info,
    init_process_group,
    shutdown,
)
from gptmed.training.errors import NonFiniteLossError, TrainingError, TrainingInterrupted
from gptmed.training.lock import FolderLock
from gptmed.training.metrics import MetricsWriter
from gptmed.training.schedule import WarmupCosine
from gptmed.training.signals import StopSignals
from torch import nn

__all__ = ["RunInfo", "TrainCallbacks", "TrainResult", "build_model_config", "resolve_device", "train_model"]

log = logging.getLogger(__name__)

QUICK_TEST_STEPS = 12


# ---------------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    """What a run is about to do (given to :meth:`TrainCallbacks.on_start`)."""

    config: TrainingConfig
    model_config: ModelConfig
    model_size: str
    num_parameters: int
    train_sequences: int
    val_sequences: int
    device: str
    precision: str
    world_size: int
    steps_per_epoch: int
    total_steps: int
    start_step: int
    start_epoch: int
    resumed_from: Path | None
    dataset_dir: Path
    synthetic_data: bool


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`."""

    steps: int  # optimizer steps taken in total (including before a resume)
    epoch: int  # epochs completed
    stopped: str  # "completed" | "max_steps" | "early_stopping"
    train_loss: float | None  # mean loss of the last (partial) epoch
    val_loss: float | None  # last validation loss
    best_val_loss: float | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    checkpoint_dir: Path
    elapsed_s: float
    tokens_per_s: float
    step_losses: list[float] = field(default_factory=list)  # losses of the steps this call took


class TrainCallbacks:
    """Hooks the CLI uses to print; every method is optional (no-op here). Rank 0 only."""

    def on_start(self, info: RunInfo) -> None: ...
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None: ...
    def on_step(
        self, step: int, total_steps: int, loss: float, lr: float, tokens_per_s: float, eta_s: float
    ) -> None: ...
    def on_eval(self, step: int, val_loss: float) -> None:
        """An evaluation between epoch ends (--eval-every, the last one of --max-steps); an epoch's
        own evaluation comes with on_epoch_end."""

    def on_epoch_end(
        self, epoch: int, num_epochs: int, train_loss: float | None, val_loss: float | None, seconds: float
    ) -> None: ...
    def on_checkpoint(self, path: Path, kind: str) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


# ---------------------------------------------------------------------------------------------
def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> CUDA (this rank's GPU) when present, else CPU. ``cuda`` without CUDA is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(
                f"--device {name} asked for CUDA, but CUDA is not available "
                f"(torch {torch.__version__}, {'built without CUDA' if torch.version.cuda is None else 'no GPU visible'})",
                hint="use --device cpu (or --device auto)",
            )
        if name == "cuda":
            name = f"cuda:{info.local_rank}"
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(dev)
        return dev
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise TrainingError(
                "--device mps asked for Apple MPS, which is not available", hint="use --device cpu"
            )
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            f"--precision fp16 needs a CUDA GPU (device is {device})", hint="use bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--precision bf16: this GPU does not support bfloat16", hint="use fp16 or fp32")
    return precision


def build_model_config(config: TrainingConfig, dataset: Dataset) -> ModelConfig:
    """The preset's shape with the dataset's vocab size and max length (+ the config's overrides)."""
    base = get_config(
        config.resolved_model_size, vocab_size=dataset.vocab_size, max_seq_len=dataset.max_length
    )
    changes = {
        name: getattr(config, name)
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "dropout", "use_rope")
        if getattr(config, name) is not None
    }
    return base.replace(**changes) if changes else base


def _versions() -> dict[str, str]:
    out = {"torch": str(torch.__version__)}  # TorchVersion is not weights_only-loadable
    for dist_name in ("gptmed-train", "gptmed-model", "gptmed-core"):
        try:
            out[dist_name] = version(dist_name)
        except PackageNotFoundError:  # pragma: no cover
            out[dist_name] = "unknown"
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:12] + "…"


def _warn_of_an_earlier_run(ckpt_dir: Path) -> None:
    """A new run in a folder that holds another run's checkpoints overwrites its best_model.pt and
    leaves its other files beside the new ones: say so before the first step, once."""
    earlier = checkpoint_files(ckpt_dir)
    best = ckpt_dir / "best_model.pt"
    if not earlier and not best.is_file():
        return
    newest = earlier[0].name if earlier else best.name
    log.warning(
        "%s already holds %d checkpoint file(s) of an earlier run (newest %s): this new run replaces "
        "its best_model.pt, its metrics.jsonl and same-named checkpoints. To continue that run pass "
        "--resume; to keep it, use another --checkpoint-dir",
        ckpt_dir,
        len(earlier) + best.is_file(),
        newest,
    )


def _check_resume_matches(
    path: Path, state: dict[str, Any], model_config: ModelConfig, dataset: Dataset
) -> None:
    """Refuse a checkpoint whose model shape, vocab or data differ from this run, listing each difference."""
    manifest = CheckpointManifest.from_dict(state["manifest"], source=str(path))
    diffs: list[str] = []
    saved = manifest.model_config.to_dict()
    now = model_config.to_dict()
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            label = "vocab_size (tokenizer vocabulary)" if key == "vocab_size" else f"model_config.{key}"
            diffs.append(f"{label}: checkpoint {saved.get(key)!r}, this run {now.get(key)!r}")
    ds = dataset.manifest
    if manifest.tokenizer_sha256 and ds.tokenizer_sha256 and manifest.tokenizer_sha256 != ds.tokenizer_sha256:
        diffs.append(
            f"tokenizer_sha256: checkpoint {manifest.tokenizer_sha256[:12]}…, this run {ds.tokenizer_sha256[:12]}…"
        )
    if manifest.data_fingerprint and manifest.data_fingerprint != dataset.fingerprint:
        saved_dir = manifest.extra.get("dataset_dir", "?")
        diffs.append(
            f"dataset: checkpoint trained on {saved_dir} (fingerprint {manifest.data_fingerprint[:12]}…), "
            f"this run uses {dataset.folder} (fingerprint {dataset.fingerprint[:12]}…)"
        )
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} does not match this run: " + "; ".join(diffs),
            hint="resume with the model size and data it was trained with, or start a new run in another --checkpoint-dir",
        )


def _quick_test_config(config: TrainingConfig, explicit: set[str] | None) -> tuple[TrainingConfig, bool]:
    """--quick-test: tiny model, <= 12 steps, small eval; synthetic data when none exists."""

    def given(name: str) -> bool:
        if explicit is not None:
            return name in explicit
        return bool(getattr(config, name) != TrainingConfig.defaults().get(name))

    changes: dict[str, Any] = {"checkpoint_dir": str(Path(config.checkpoint_dir) / "quick-test")}
    if not given("model_size"):
        changes["model_size"] = "tiny"
    if not given("num_epochs"):
        changes["num_epochs"] = 2
    if not given("max_steps"):
        changes["max_steps"] = QUICK_TEST_STEPS
    if not given("batch_size"):
        changes["batch_size"] = 4
    if not given("warmup_steps"):
        changes["warmup_steps"] = 2
    if not given("max_eval_batches"):
        changes["max_eval_batches"] = 2
    if not given("eval_every"):
        changes["eval_every"] = 6
    synthetic = False
    if not Path(config.train_data_path).is_file():
        folder = Path(changes["checkpoint_dir"]) / "synthetic-data"
        changes["train_data_path"] = str(make_synthetic_dataset(folder, seed=config.seed))
        changes["val_data_path"] = str(folder / "val.npy")
        synthetic = True
    return config.replace(**changes), synthetic


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).numpy()


def _rng_state(device: torch.device, info: DistInfo) -> dict[str, Any]:
    cpu = torch.get_rng_state()
    state: dict[str, Any] = {"torch": cpu, "by_rank": all_gather_tensor(cpu, info)}
    if device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
        state["cuda"] = cuda
        state["cuda_by_rank"] = all_gather_tensor(cuda, info)
    return state


def _restore_rng(state: dict[str, Any], device: torch.device, info: DistInfo) -> None:
    by_rank = state.get("by_rank")
    if isinstance(by_rank, torch.Tensor) and by_rank.dim() == 2 and by_rank.size(0) == info.world_size:
        torch.set_rng_state(by_rank[info.rank].clone())
    elif info.rank == 0 and isinstance(state.get("torch"), torch.Tensor):
        torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        cuda_by_rank = state.get("cuda_by_rank")
        if isinstance(cuda_by_rank, torch.Tensor) and cuda_by_rank.size(0) == info.world_size:
            torch.cuda.set_rng_state(cuda_by_rank[info.rank].clone(), device)
        elif isinstance(state.get("cuda"), torch.Tensor):
            torch.cuda.set_rng_state(state["cuda"], device)


def _make_optimizer(
    model: GPTTransformer, config: TrainingConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over the model's decay groups; the fused kernel where this torch has it (CPU and CUDA)."""
    kwargs: dict[str, Any] = {"lr": config.learning_rate, "betas": (config.beta1, config.beta2)}
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(model.param_groups(config.weight_decay), fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch
            pass
    return torch.optim.AdamW(model.param_groups(config.weight_decay), **kwargs)


def _fmt_path(p: Path | None) -> str:
    return str(p) if p else "none (no checkpoint saved yet)"


# ---------------------------------------------------------------------------------------------
class _Run:
    """State of one call of :func:`train_model` (kept in one object so the steps read plainly)."""

    def __init__(self, config: TrainingConfig, callbacks: TrainCallbacks, info: DistInfo) -> None:
        self.config = config
        self.cb = callbacks
        self.info = info
        self.ckpt_dir = Path(config.checkpoint_dir)
        self.last_checkpoint: Path | None = None
        self.last_saved_step = -1
        self.best_checkpoint: Path | None = None
        self.best_val: float | None = None
        self.bad_evals = 0
        self.last_val: float | None = None
        self.last_eval_step = -1
        self.epoch_loss_sum = 0.0
        self.epoch_steps = 0
        self.metrics: MetricsWriter | None = None


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
    try:
        synthetic = False
        if config.quick_test:
            config, synthetic = _quick_test_config(config, explicit_fields)
        device = resolve_device(config.device, info)
        init_process_group(info, device)

        # -- take the folder (rank 0), sweep stale temp files, find the checkpoint to resume -----
        ckpt_dir = Path(config.checkpoint_dir)
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
                    _warn_of_an_earlier_run(ckpt_dir)
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"
                if info.enabled:
                    broadcast_object({"error": error}, info)
                raise
        shared = broadcast_object({"error": error, "resume": str(resume_path) if resume_path else None}, info)
        if shared.get("error"):
            raise TrainingError(f"rank 0 failed: {shared['error']}")
        resume_path = Path(shared["resume"]) if shared.get("resume") else None

        state: dict[str, Any] | None = None
        if resume_path is not None:
            state = found_state if found_state is not None else load_checkpoint(resume_path)
            config = config.merged_with_checkpoint(dict(state["training_config"]), explicit_fields)
        return _train(config, cb, info, device, state, resume_path, synthetic)
    finally:
        if lock is not None:
            lock.release()
        shutdown()


def _train(
    config: TrainingConfig,
    cb: TrainCallbacks,
    info: DistInfo,
    device: torch.device,
    state: dict[str, Any] | None,
    resume_path: Path | None,
    synthetic: bool,
) -> TrainResult:
    run = _Run(config, cb, info)
    precision = _resolve_precision(config.precision, device)
    dataset = load_dataset(config.train_data_path, config.val_data_path, loss_on=config.loss_on)
    model_config = build_model_config(config, dataset)
    if state is not None:
        assert resume_path is not None
        _check_resume_matches(resume_path, state, model_config, dataset)

    B, A, W = config.batch_size, config.grad_accum, info.world_size
    if B % W:
        raise ConfigError(f"--batch-size {B} must be divisible by the number of processes ({W})")
    rows_per_step = B * A
    N = len(dataset.train)
    steps_per_epoch = N // rows_per_step
    if steps_per_epoch == 0:
        raise DataError(
            f"{dataset.train.path} has {N} sequences, fewer than one step's batch of {rows_per_step} "
            f"(--batch-size {B} x --grad-accum {A})",
            hint=f"lower --batch-size to at most {N} or add data",
        )
    total_steps = steps_per_epoch * config.num_epochs

    # -- model, optimizer, schedule ----------------------------------------------------------------
    torch.manual_seed(config.seed)
    raw_model = GPTTransformer(model_config).to(device)
    if info.rank:
        torch.manual_seed(config.seed + 7919 * info.rank)  # distinct dropout per rank
    optimizer = _make_optimizer(raw_model, config, device)
    scheduler = WarmupCosine(
        optimizer,
        lr=config.learning_rate,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=config.min_lr_ratio,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    step, epoch, position = 0, 0, 0
    if state is not None:
        raw_model.load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
        if precision == "fp16" and state["scaler_state_dict"]:
            scaler.load_state_dict(state["scaler_state_dict"])
        step, epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        ts = state.get("trainer_state") or {}
        run.best_val = ts.get("best_val_loss")
        run.bad_evals = int(ts.get("bad_evals", 0))
        run.epoch_loss_sum = float(ts.get("epoch_loss_sum", 0.0))
        run.epoch_steps = int(ts.get("epoch_steps", 0))
        best = run.ckpt_dir / "best_model.pt"
        run.best_checkpoint = best if best.is_file() else None
        run.last_checkpoint = resume_path
        run.last_saved_step = step
        _restore_rng(state["rng_state"], device, info)
        if position % rows_per_step:
            log.warning(
                "resuming at row %d of the epoch, not a multiple of %d rows per step", position, rows_per_step
            )
    model: nn.Module = raw_model
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    eval_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    # -- bookkeeping that only rank 0 does -----------------------------------------------------------
    start_step = step
    if info.is_main:
        run.metrics = MetricsWriter(
            run.ckpt_dir / "metrics.jsonl",
            keep_until_step=step if state is not None else None,
            tensorboard_dir=(run.ckpt_dir / "tensorboard") if config.tensorboard else None,
        )
        cb.on_start(
            RunInfo(
                config=config,
                model_config=model_config,
                model_size=config.resolved_model_size,
                num_parameters=sum(p.numel() for p in raw_model.parameters()),
                train_sequences=N,
                val_sequences=len(dataset.val) if dataset.val is not None else 0,
                device=str(device),
                precision=precision,
                world_size=W,
                steps_per_epoch=steps_per_epoch,
                total_steps=min(total_steps, config.max_steps or total_steps),
                start_step=step,
                start_epoch=epoch,
                resumed_from=resume_path,
                dataset_dir=dataset.folder,
                synthetic_data=synthetic,
            )
        )

    versions = _versions()

    def checkpoint_state(val_loss: float | None) -> dict[str, Any]:
        rng = _rng_state(device, info)  # collective: every rank calls it
        manifest = CheckpointManifest(
            model_config=model_config,
            step=step,
            epoch=epoch,
            tokenizer_sha256=dataset.manifest.tokenizer_sha256,
            data_fingerprint=dataset.fingerprint,
            template=dataset.manifest.template,
            special_ids=dataset.manifest.special_ids,
            training_config=config.to_dict(),
            versions=versions,
            extra={
                "tokenizer_path": dataset.manifest.tokenizer_path,
                "dataset_dir": str(dataset.folder),
                "val_loss": val_loss,
            },
        )
        return {
            "model_state_dict": clean_state_dict(unwrap(raw_model).state_dict()),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "scaler_state_dict": scaler.state_dict() if scaler.is_enabled() else {},
            "rng_state": rng,
            "step": step,
            "epoch": epoch,
            "position": position,
            "model_config": model_config.to_dict(),
            "training_config": config.to_dict(),
            "manifest": manifest.to_dict(),
            "trainer_state": {
                "best_val_loss": run.best_val,
                "bad_evals": run.bad_evals,
                "epoch_loss_sum": run.epoch_loss_sum,
                "epoch_steps": run.epoch_steps,
            },
        }

    def save(kind: str, val_loss: float | None = None) -> Path | None:
        """Save a checkpoint of the current state (kind: epoch | step | final | interrupt)."""
        payload = checkpoint_state(val_loss)
        path: Path | None = None
        if info.is_main:
            name = f"checkpoint_epoch_{epoch}.pt" if kind == "epoch" else f"checkpoint_step_{step}.pt"
            path = save_checkpoint(run.ckpt_dir / name, payload)
            run.last_checkpoint = path
            cb.on_checkpoint(path, kind)
            prune_checkpoints(run.ckpt_dir, config.keep_last, protect=(path,))
        run.last_saved_step = step
        return path

    def save_best(val_loss: float) -> None:
        payload = checkpoint_state(val_loss)
        if info.is_main:
            run.best_checkpoint = save_checkpoint(run.ckpt_dir / "best_model.pt", payload)
            cb.on_checkpoint(run.best_checkpoint, "best")

    bos_id = dataset.manifest.special_ids.bos
    # padding as its own segment lets the model skip attention there: on the eager CPU path, where
    # the model splits packed rows into runs (compiled and CUDA models use one mask instead)
    pad_id = dataset.manifest.special_ids.pad if device.type == "cpu" and not config.compile else None

    def evaluate() -> float | None:
        val = dataset.val
        if val is None:
            return None
        eval_model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        n_batches = math.ceil(len(val) / B)
        if config.max_eval_batches:
            n_batches = min(n_batches, config.max_eval_batches)
        per_rank = B // W
        with torch.no_grad():
            for b in range(n_batches):
                rows = np.arange(b * B, min((b + 1) * B, len(val)))
                mine = rows[info.rank * per_rank : (info.rank + 1) * per_rank]
                if len(mine) == 0:
                    continue
                x, y = val.batch(mine, config.loss_on)
                n = int((y != IGNORE_INDEX).sum())
                if n == 0:
                    continue
                mean = _forward_loss(eval_model, x.to(device), y.to(device), autocast_dtype, bos_id, pad_id)
                total += torch.tensor([float(mean) * n, n], dtype=torch.float64)
        eval_model.train()
        all_reduce_sum(total, info)
        if total[1] == 0:
            return None
        return float(total[0] / total[1])

    def after_eval(
        val_loss: float | None, *, count_for_patience: bool = True, epoch_end: bool = False
    ) -> bool:
        """Record an evaluation; return True when early stopping says stop."""
        run.last_eval_step = step
        if val_loss is None:
            return False
        run.last_val = val_loss
        if run.metrics is not None:
            run.metrics.write(
                {
                    "kind": "eval",
                    "step": step,
                    "epoch": epoch,
                    "val_loss": val_loss,
                    "elapsed": time.time() - t0,
                }
            )
        if info.is_main and not epoch_end:  # on_epoch_end reports that one
            cb.on_eval(step, val_loss)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"validation loss is {val_loss} at step {step}",
                step=step,
                last_checkpoint=run.last_checkpoint,
                hint=f"last good checkpoint: {_fmt_path(run.last_checkpoint)}; lower --learning-rate",
            )
        if run.best_val is None or val_loss < run.best_val:
            run.best_val = val_loss
            run.bad_evals = 0
            save_best(val_loss)
            return False
        if count_for_patience:
            run.bad_evals += 1
        patience = config.early_stopping_patience
        return bool(patience and run.bad_evals >= patience)

    # -- the loop -------------------------------------------------------------------------------------
    model.train()
    t0 = time.time()
    tokens_per_step = rows_per_step * (dataset.train.seq_len - 1)
    step_losses: list[float] = []
    stopped = "completed"
    rate_window: list[tuple[float, int]] = []
    per_rank = B // W
    stop_flag = torch.zeros(1)
    val_loss: float | None = None
    train_loss: float | None = None
    if epoch >= config.num_epochs and info.is_main:
        cb.on_message(
            f"Nothing to train: the checkpoint already finished {epoch} of {config.num_epochs} epochs "
            "(raise --num-epochs to continue)"
        )
    with StopSignals() as signals, contextlib.ExitStack() as closing:
        if run.metrics is not None:
            closing.callback(run.metrics.close)
        while epoch < config.num_epochs and stopped == "completed":
            if config.max_steps is not None and step >= config.max_steps:
                stopped = "max_steps"
                break
            order = _epoch_order(config.seed, epoch, N)
            if info.is_main:
                cb.on_epoch_start(epoch + 1, config.num_epochs)
            epoch_t0 = time.time()
            while position + rows_per_step <= N:
                if config.max_steps is not None and step >= config.max_steps:
                    stopped = "max_steps"
                    break
                step_t0 = time.time()
                rows = order[position : position + rows_per_step]
                n_targets = dataset.train.target_count(rows, config.loss_on)
                lr = scheduler.set_step(step)
                loss_sum = torch.zeros(1, dtype=torch.float64)
                for j in range(A):
                    micro = rows[j * B : (j + 1) * B]
                    mine = micro[info.rank * per_rank : (info.rank + 1) * per_rank]
                    x, y = dataset.train.batch(mine, config.loss_on)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    n_local = int((y != IGNORE_INDEX).sum())
                    if n_local == 0:
                        # No target in this slice: give the forward one dummy target so every loss path
                        # stays finite; its weight below is 0, so it adds nothing (DDP still runs it).
                        y = y.clone()
                        y.view(-1)[0] = 0
                    sync = contextlib.nullcontext()
                    if info.enabled and j < A - 1:
                        sync = model.no_sync()  # type: ignore[operator]
                    with sync:
                        mean = _forward_loss(model, x, y, autocast_dtype, bos_id, pad_id)
                        weight = (n_local * W / n_targets) if n_targets else 0.0
                        scaler.scale(mean * weight).backward()  # type: ignore[no-untyped-call]
                    loss_sum += float(mean.detach()) * n_local
                stop_sig = signals.requested  # one snapshot per step: every rank acts on the same value
                if info.enabled:
                    stop_flag[0] = float(stop_sig or 0)
                    packed = torch.cat([loss_sum, stop_flag.double()])
                    all_reduce_sum(packed, info)
                    loss_sum = packed[:1]
                    if packed[1]:
                        stop_sig = stop_sig or (
                            signal.SIGTERM if packed[1] % signal.SIGTERM == 0 else signal.SIGINT
                        )
                    else:
                        stop_sig = None
                step_loss = float(loss_sum[0] / n_targets) if n_targets else 0.0
                if not math.isfinite(step_loss):
                    raise NonFiniteLossError(
                        f"loss is {step_loss} at step {step + 1} (epoch {epoch + 1}); stopped before the "
                        f"optimizer step, nothing from this step was saved",
                        step=step + 1,
                        last_checkpoint=run.last_checkpoint,
                        hint=f"last good checkpoint: {_fmt_path(run.last_checkpoint)}; lower --learning-rate "
                        f"(now {config.learning_rate:g}) or check the data, then resume from that checkpoint",
                    )
                scaler.unscale_(optimizer)
                clip = config.grad_clip if config.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip))
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    raise NonFiniteLossError(
                        f"gradient norm is {grad_norm} at step {step + 1} (epoch {epoch + 1}, loss {step_loss:.4f}); "
                        "stopped before the optimizer step, nothing from this step was saved",
                        step=step + 1,
                        last_checkpoint=run.last_checkpoint,
                        hint=f"last good checkpoint: {_fmt_path(run.last_checkpoint)}; lower --learning-rate "
                        f"or --grad-clip, then resume from that checkpoint",
                    )
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                position += rows_per_step
                run.epoch_loss_sum += step_loss
                run.epoch_steps += 1
                step_losses.append(step_loss)

                now = time.time()
                rate_window.append((now - step_t0, tokens_per_step))
                rate_window = rate_window[-20:]
                spent = sum(t for t, _ in rate_window)
                tok_s = sum(n for _, n in rate_window) / spent if spent > 0 else 0.0
                if info.is_main:
                    remaining = min(total_steps, config.max_steps or total_steps) - step
                    eta = remaining * spent / len(rate_window) if rate_window else 0.0
                    cb.on_step(
                        step, min(total_steps, config.max_steps or total_steps), step_loss, lr, tok_s, eta
                    )
                    if run.metrics is not None and step % config.log_every == 0:
                        run.metrics.write(
                            {
                                "kind": "train",
                                "step": step,
                                "epoch": epoch,
                                "loss": step_loss,
                                "lr": lr,
                                "grad_norm": grad_norm,
                                "tokens_per_s": tok_s,
                                "elapsed": now - t0,
                            }
                        )
                end_of_epoch = position + rows_per_step > N
                if config.eval_every and step % config.eval_every == 0 and not end_of_epoch:
                    val_loss = evaluate()
                    if after_eval(val_loss):
                        stopped = "early_stopping"
                        if info.is_main:
                            cb.on_message(
                                f"Early stopping: val loss has not improved for {run.bad_evals} evaluations "
                                f"(best {run.best_val:.4f})"
                            )
                if config.save_every and step % config.save_every == 0 and not end_of_epoch:
                    save("step", run.last_val)
                if stop_sig is not None:
                    path = (
                        save("interrupt", run.last_val)
                        if run.last_saved_step != step
                        else run.last_checkpoint
                    )
                    raise TrainingInterrupted(int(stop_sig), step, path)
                if stopped != "completed":
                    break
            if stopped != "completed":
                break
            # -- end of epoch --------------------------------------------------------------------------
            train_loss = run.epoch_loss_sum / run.epoch_steps if run.epoch_steps else None
            epoch += 1
            position = 0
            run.epoch_loss_sum, run.epoch_steps = 0.0, 0
            val_loss = evaluate()
            stop_early = False
            if val_loss is not None:
                stop_early = after_eval(val_loss, epoch_end=True)
            elif train_loss is not None and (run.best_val is None or train_loss < run.best_val):
                run.best_val = train_loss  # no val split: "best" follows the train loss
                save_best(train_loss)
            save("epoch", val_loss)
            if info.is_main:
                cb.on_epoch_end(epoch, config.num_epochs, train_loss, val_loss, time.time() - epoch_t0)
            if stop_early:
                stopped = "early_stopping"
                if info.is_main:
                    cb.on_message(
                        f"Early stopping: val loss has not improved for {run.bad_evals} evaluations "
                        f"(best {run.best_val:.4f})"
                    )

        if stopped != "completed":
            if train_loss is None and run.epoch_steps:
                train_loss = run.epoch_loss_sum / run.epoch_steps
            # A run cut short by --max-steps still ends evaluated, with a best_model.pt, even when
            # a --save-every checkpoint was just written at this step.
            if stopped == "max_steps" and dataset.val is not None and run.last_eval_step != step:
                val_loss = evaluate()
                after_eval(val_loss, count_for_patience=False)
            if run.last_saved_step != step:
                save("final", run.last_val)

    elapsed = time.time() - t0
    taken = step - start_step
    result = TrainResult(
        steps=step,
        epoch=epoch,
        stopped=stopped,
        train_loss=train_loss,
        val_loss=run.last_val,
        best_val_loss=run.best_val,
        best_checkpoint=run.best_checkpoint,
        last_checkpoint=run.last_checkpoint,
        checkpoint_dir=run.ckpt_dir,
        elapsed_s=elapsed,
        tokens_per_s=(taken * tokens_per_step / elapsed) if elapsed > 0 else 0.0,
        step_losses=step_losses,
    )
    if info.is_main:
        cb.on_end(result)
    return result


def pair_segments(
    x: torch.Tensor, bos_id: int, pad_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids and restarting position ids of packed rows (B, T): a segment starts at each BOS.

    With them every packed Q&A pair is trained exactly as it is asked at generation time: from
    position 0, attending to nothing before its own BOS. (A row that starts inside an over-long
    pair's sliding window counts from the row start.) With ``pad_id``, the padding at the end of a
    row gets segment -1: the model computes no attention there (its targets are ignored anyway).
    """
    is_bos = x == bos_id
    segments = torch.cumsum(is_bos.to(torch.int32), dim=1)  # (B, T)
    idx = torch.arange(x.size(1), device=x.device).expand_as(x)
    starts = torch.cummax(torch.where(is_bos, idx, torch.zeros_like(idx)), dim=1).values
    if pad_id is not None:
        trailing = (x == pad_id).flip(1).to(torch.int32).cumprod(dim=1).flip(1).bool()  # (B, T)
        segments = segments.masked_fill(trailing, -1)
    return segments, idx - starts


def _forward_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    bos_id: int,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored targets of (x, y), through the model's chunked loss
    (``model(x, targets=y)``: no (B, T, V) logits kept). Under bf16/fp16 autocast its matmuls run
    in that dtype and its softmax in fp32. Packed pairs and trailing padding go to the model as
    segment ids (it attends per pair, or with one mask, whichever is cheaper).
    """
    segments, positions = pair_segments(x, bos_id, pad_id)
    if pad_id is not None and not bool((y[segments < 0] == IGNORE_INDEX).all()):
        # a padding position with a real target (a loss mask that covers padding): keep it a
        # token like the others, so the loss is the one the mask path computes
        segments, positions = pair_segments(x, bos_id)
    kw = {"position_ids": positions}
    if bool((segments != segments[:, :1]).any()):  # several pairs in a row, or padding
        kw["segment_ids"] = segments
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        return model(x, targets=y, **kw)  # type: ignore[no-any-return]
