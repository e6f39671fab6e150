"""The validation loss: mean loss per target over the val split, summed over every rank."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from gptmed.training.batches import Batch, BatchLoader, StepRows
from gptmed.training.devices import autocast
from gptmed.training.distributed import DistInfo, all_reduce_sum
from torch import nn

__all__ = ["forward_loss", "validation_loss"]


def validation_loss(
    model: nn.Module,
    loader: BatchLoader,
    *,
    batch_size: int,
    max_batches: int | None,
    info: DistInfo,
    device: torch.device,
    dtype: torch.dtype | None,
) -> float | None:
    """Mean loss per target over ``loader``'s rows (at most ``max_batches`` batches of
    ``batch_size``, each split over the ranks); None when they hold no target. One host read."""
    n_rows = len(loader.split)
    per_rank, rank = batch_size // info.world_size, info.rank
    n_batches = math.ceil(n_rows / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    groups: list[StepRows] = []
    for b in range(n_batches):
        rows = np.arange(b * batch_size, min((b + 1) * batch_size, n_rows))
        mine = rows[rank * per_rank : (rank + 1) * per_rank]
        if len(mine):
            groups.append((mine, [mine]))
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, targets
    steps = loader.steps(groups, device, prefetch=False)
    with torch.no_grad(), contextlib.closing(steps):
        for _, (batch,) in steps:
            if batch.n_targets:
                total[0] += forward_loss(model, batch, dtype).double() * batch.n_targets
                total[1] += batch.n_targets
    all_reduce_sum(total, info)
    loss_sum, count = total.tolist()
    return loss_sum / count if count else None


def forward_loss(model: nn.Module, batch: Batch, dtype: torch.dtype | None) -> torch.Tensor:
    """Mean cross-entropy over the batch's targets, through the model's chunked loss (no (B, T, V)
    logits kept); packed pairs go in as segments (each attends only to itself)."""
    segments = {} if batch.segment_ids is None else {"segment_ids": batch.segment_ids}
    with autocast(batch.input_ids.device, dtype):
        loss: torch.Tensor = model(
            batch.input_ids, targets=batch.targets, position_ids=batch.position_ids, **segments
        )
    return loss
