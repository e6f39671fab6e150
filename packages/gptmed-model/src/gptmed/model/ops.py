"""RoPE and dropout with few, cheap kernels on the eager path.

On a CPU every elementwise kernel is a full pass over memory and a thread-pool synchronisation, so
the eager path uses as few as possible; under tracing (torch.compile, export) the plain form is used.
RoPE (interleaved pairs) is one complex multiplication in fp32/fp64 eager mode (forward and backward
one kernel each); :func:`apply_rope` is the same rotation in plain real ops (export-safe).

:class:`Dropout` draws its CPU mask from 15 random bits per element (four per ``int64.random_()``
draw) instead of ``bernoulli_``, which costs 10 ms per (8, 512, 256) activation on 2 cores (3.4 ms
this way, mask and apply; 21 dropouts per step of the small model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Dropout", "apply_rope", "is_tracing", "rope"]


def is_tracing() -> bool:
    """True under torch.compile, torch.export and jit tracing (skip data-dependent checks and
    the hand-written autograd Functions there)."""
    compiler = getattr(torch, "compiler", None)
    compiling = getattr(compiler, "is_compiling", lambda: False)
    exporting = getattr(compiler, "is_exporting", lambda: False)
    if compiling() or exporting():
        return True
    return bool(getattr(torch.jit, "is_tracing", lambda: False)())


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) by angle theta_i (interleaved layout); plain ops, export-safe.

    x: (..., hs); cos, sin broadcastable to (..., hs/2). Returns a new tensor.
    """
    xr = x.reshape(*x.shape[:-1], -1, 2)  # (..., hs/2, 2)
    x0, x1 = xr[..., 0], xr[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope`; in eager fp32/fp64 as one complex multiplication (forward and backward
    are a single kernel each instead of ~8 elementwise ops)."""
    if is_tracing() or x.dtype not in (torch.float32, torch.float64) or x.stride(-1) != 1:
        return apply_rope(x, cos, sin)
    freqs = torch.complex(cos.to(x.dtype), sin.to(x.dtype))  # (..., hs/2) complex, tiny
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))  # (..., hs/2) complex view of x
    return torch.view_as_real(xc * freqs).flatten(-2)


_DROPOUT_BITS = 15  # random bits per element


def _keep_threshold(p: float) -> int:
    """Lane values below this are kept: ``round((1 - p) * 2**15)``."""
    return round((1.0 - p) * (1 << _DROPOUT_BITS))


class _CpuDropout(torch.autograd.Function):
    """Keep each element with probability ``keep / 2**15`` (``keep = round((1 - p) * 2**15)``) and
    scale kept ones by ``2**15 / keep``: unbiased, and within 2**-16 of the asked ``p``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = _keep_threshold(p)
        n = x.numel()
        # int64 random_() is uniform over [0, 2**63): four 16-bit lanes per draw, each uniform over
        # [0, 2**15) once the top bit is cleared (a quarter of the generator calls of int16)
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        lanes = words.view(torch.int16)[:n].view(x.shape).bitwise_and_((1 << _DROPOUT_BITS) - 1)
        mask = lanes < keep  # bool, 1 byte per element
        ctx.save_for_backward(mask)
        ctx.scale = (1 << _DROPOUT_BITS) / keep
        return torch.where(mask, x, 0.0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same attribute, same state dict) with the cheap CPU mask of this module.

    CUDA, tracing (torch.compile fuses its own) and ``p`` too close to 1 use ``F.dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or is_tracing() or _keep_threshold(self.p) < 1:
            return F.dropout(x, self.p, True, self.inplace)
        out: torch.Tensor = _CpuDropout.apply(x, self.p)  # type: ignore[no-untyped-call]
        return out
