"""What a :class:`~gptmed.training.trainer.Trainer` is built from: the model (compiled and wrapped
for DDP as asked), AdamW, the learning-rate schedule, the gradient scaler, the batch loaders and the
time budget. Each is built here from the filled-in :class:`TrainingConfig`, so the Trainer's own
code is the loop."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from gptmed.core import ModelConfig, get_config
from gptmed.model import GPTTransformer
from gptmed.training.batches import BatchLoader
from gptmed.training.budget import TimeBudget
from gptmed.training.config import TrainingConfig
from gptmed.training.data import Dataset
from gptmed.training.distributed import DistInfo
from gptmed.training.schedule import WarmupCosine
from torch import nn

__all__ = ["Parts", "build_model_config", "build_parts", "make_loaders", "make_optimizer", "make_time_budget"]


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


def make_optimizer(
    model: GPTTransformer, config: TrainingConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over the model's decay groups; the fused kernel where this torch has it (CPU and CUDA):
    it can skip a non-finite step on the device (``found_inf``) without asking the host."""
    assert config.learning_rate is not None
    kwargs: dict[str, Any] = {"lr": config.learning_rate, "betas": (config.beta1, config.beta2)}
    if device.type in ("cuda", "cpu"):
        with contextlib.suppress(RuntimeError, TypeError, ValueError):  # older torch: no fused AdamW
            return torch.optim.AdamW(model.param_groups(config.weight_decay), fused=True, **kwargs)
    return torch.optim.AdamW(model.param_groups(config.weight_decay), **kwargs)


@dataclass
class Parts:
    """The model in its three views, and what updates it."""

    raw_model: GPTTransformer  # the module itself: checkpoints save its state
    model: nn.Module  # what the training step calls: compiled and / or DDP-wrapped as asked
    eval_model: nn.Module  # compiled as asked, never DDP-wrapped: validation runs on each rank alone
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    scaler: torch.amp.GradScaler


def build_parts(
    config: TrainingConfig,
    model_config: ModelConfig,
    steps_per_epoch: int,
    device: torch.device,
    info: DistInfo,
    precision: str,
) -> Parts:
    """Seeded model init, AdamW, warmup + cosine over the run's epochs, the fp16 scaler."""
    torch.manual_seed(config.seed)
    raw_model = GPTTransformer(model_config).to(device)
    if info.rank:
        torch.manual_seed(config.seed + 7919 * info.rank)  # distinct dropout per rank
    optimizer = make_optimizer(raw_model, config, device)
    assert config.learning_rate is not None and config.warmup_steps is not None
    epochs = config.epoch_limit
    scheduler = WarmupCosine(
        optimizer,
        lr=config.learning_rate,
        warmup_steps=config.warmup_steps,
        # the epochs' steps (--max-steps only stops the run early: a resume that raises it
        # continues the same schedule); a time budget re-plans it after its first steps
        total_steps=steps_per_epoch * epochs if epochs is not None else 10**9,
        min_lr_ratio=config.min_lr_ratio,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    model: nn.Module = raw_model
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    eval_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Parts(raw_model, model, eval_model, optimizer, scheduler, scaler)


def make_loaders(
    config: TrainingConfig, dataset: Dataset, device: torch.device
) -> tuple[Literal["rows", "flat"], BatchLoader, BatchLoader | None]:
    """(layout, train loader, val loader or None): flat padding-free rows on CUDA unless
    ``padding_free`` says otherwise, ``(B, T)`` rows elsewhere."""
    ids = dataset.manifest.special_ids
    on_cuda = device.type == "cuda"
    flat = config.padding_free if config.padding_free is not None else on_cuda
    layout: Literal["rows", "flat"] = "flat" if flat else "rows"

    def loader(split: Any) -> BatchLoader:
        return BatchLoader(
            split,
            loss_on=config.loss_on,
            bos_id=ids.bos,
            pad_id=ids.pad,
            layout=layout,
            # padding as its own segment lets the eager CPU model drop it (its per-run path)
            mark_padding=device.type == "cpu" and not config.compile,
            pin=on_cuda,
        )

    return layout, loader(dataset.train), loader(dataset.val) if dataset.val is not None else None


def make_time_budget(
    config: TrainingConfig, model_config: ModelConfig, dataset: Dataset
) -> TimeBudget | None:
    """The run's :class:`TimeBudget` (None without ``time_budget``), with first guesses of what an
    evaluation and a checkpoint save cost until they are measured."""
    if config.time_budget is None:
        return None
    params = model_config.num_parameters()
    save_guess = 0.2 + params * 4 * 3 / 200e6  # model + AdamW moments at ~200 MB/s
    val_rows = len(dataset.val) if dataset.val is not None else 0
    eval_batches = math.ceil(val_rows / config.batch_size)
    if config.max_eval_batches:
        eval_batches = min(eval_batches, config.max_eval_batches)
    eval_in_steps = eval_batches / config.grad_accum / 3  # forward only: ~1/3 of a step
    return TimeBudget(config.time_budget, eval_in_steps=eval_in_steps, save_guess_s=save_guess)
