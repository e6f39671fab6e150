"""Step results that stay on the device until the host needs them (no ``.item()`` per step).

Each optimizer step leaves a few numbers on the device (loss sum, gradient norm, whether the step
was skipped as non-finite, DDP's stop vote). :class:`DeferredStats` copies them to pinned host
memory with a non-blocking copy and records a CUDA event; the host reads a step's numbers only
``lag`` steps later, when the device has long finished it, so reading never stalls the GPU. On
the CPU (``lag`` 0) the numbers are read at once: there is nothing to wait for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DeferredStats", "StepRecord"]


@dataclass
class StepRecord:
    """One step's numbers once they reached the host, with what the host knew when it ran it."""

    step: int  # 1-based optimizer step
    values: list[float]  # the device values, in the order they were pushed
    info: dict[str, Any]  # host facts of the step (lr, epoch, token counts, ...)


class DeferredStats:
    """A queue of per-step device values read back ``lag`` steps late (see the module docstring)."""

    def __init__(self, device: torch.device, lag: int) -> None:
        self.device = device
        self.lag = lag
        self._pending: deque[tuple[int, torch.Tensor, Any, dict[str, Any]]] = deque()

    def push(self, step: int, values: torch.Tensor, info: dict[str, Any]) -> None:
        """Queue ``values`` (1-D, on the device) of ``step``; the copy to the host starts now."""
        event = None
        if self.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
        else:
            host = values.detach().to("cpu")
        self._pending.append((step, host, event, info))

    def ready(self) -> Iterator[StepRecord]:
        """The records at least ``lag`` steps old, oldest first (waits only for their copies)."""
        while len(self._pending) > self.lag:
            yield self._pop()

    def drain(self) -> Iterator[StepRecord]:
        """Every queued record, oldest first (waits for the device to reach the newest)."""
        while self._pending:
            yield self._pop()

    def __len__(self) -> int:
        return len(self._pending)

    def _pop(self) -> StepRecord:
        step, host, event, info = self._pending.popleft()
        if event is not None:
            event.synchronize()
        return StepRecord(step, [float(v) for v in host.tolist()], info)
