"""RoPE with few kernels on the eager path.

On a CPU every elementwise kernel is a full pass over memory and a thread-pool synchronisation, so
the eager path uses as few as possible; under tracing (torch.compile, export) the plain form is used.
RoPE (interleaved pairs) is one complex multiplication in fp32/fp64 eager mode (forward and backward
one kernel each); :func:`apply_rope` is the same rotation in plain real ops (export-safe).
"""

from __future__ import annotations

import torch

__all__ = ["apply_rope", "is_tracing", "rope"]


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
