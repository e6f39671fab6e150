"""torchrun / DDP plumbing: rank facts from the environment, process group, small collectives.

``torchrun --nproc_per_node=N -m gptmed.training.train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE;
the trainer then joins a process group (NCCL on CUDA, gloo on CPU). Rank 0 logs and saves; every
rank reads the same memory-mapped data and takes its slice of each global batch.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum", "broadcast_object", "dist_info", "init_process_group", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank facts from torchrun's environment variables (a single process when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(info: DistInfo, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    # torch.distributed.nn binds the default group as a default argument of its functions when it
    # is first imported, and DDP imports it (through torch._dynamo). Imported after the group
    # exists, it holds the group for good: destroy_process_group() cannot free gloo's worker
    # threads, which then race the process's exit (torch 2.13 CPU: SIGABRT "terminate called
    # without an active exception" after a successful run, 2 of 100 two-process runs; 0 of 200
    # with this import). Imported first, it binds None.
    import torch.distributed.nn  # noqa: F401

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown() -> None:
    """Leave the process group and stop gloo's threads before the process exits.

    After a DDP run the process group is still referenced from reference cycles, so it and its
    transport outlive ``destroy_process_group()`` until the garbage collector happens to run: with
    the collector off, every rank still had gloo's threads after a run; with it on, one CI run in
    many left ``gloo_tcp_loop`` alive on rank 0, where it races the interpreter's exit. Collecting
    first frees those cycles, so the group dies here, every time.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL only moves CUDA tensors: stage CPU tensors on this rank's GPU there."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place (CPU tensors are staged on the GPU under NCCL)."""
    if info.enabled:
        dev = _comm_device(tensor)
        if dev == tensor.device:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            staged = tensor.to(dev)
            dist.all_reduce(staged, op=dist.ReduceOp.SUM)
            tensor.copy_(staged.cpu())
    return tensor


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_tensor(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """(world, *shape) stack of every rank's ``tensor`` (same shape on all ranks)."""
    if not info.enabled:
        return tensor.unsqueeze(0)
    dev = _comm_device(tensor)
    staged = tensor.to(dev)
    out = [torch.empty_like(staged) for _ in range(info.world_size)]
    dist.all_gather(out, staged)
    return torch.stack(out).to(tensor.device)
