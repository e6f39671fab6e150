# mypy: disable-error-code="untyped-decorator,no-untyped-def,no-any-return,no-untyped-call"
"""What the FlashAttention kernels share: constants, dtypes, the tile configuration type.

Layouts (every kernel module follows them):

* inputs q: (B, H, T, D), k, v: (B, H, S, D), any strides with a unit last stride;
* outputs o, dq: (B, T, H, D) in memory (returned as (B, H, T, D) views), dk, dv: (B, S, H, D): the
  model's (B, T, C) layout, so ``y.transpose(1, 2).reshape(B, T, C)`` is a view, not a copy;
* lse, delta: (B * H, T) fp32 (fp64 for fp64 inputs), contiguous;
* key mask: (B, S) int8, 1 = may attend;
* segments (T == S, causal): ``lo`` and ``hi``, (B, T) int32 contiguous. Query ``i`` sees keys
  ``lo[i] <= j <= i``; key ``j`` is seen by queries ``j <= i < hi[j]``; padding has ``lo = T`` and
  ``hi = 0`` (nothing). :func:`gptmed.model.attention.segment_bounds` derives them from segment ids.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["LOG2E", "NEG", "Tiles", "acc_dtype", "interpreting", "prep", "tiles_config"]

NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for masked scores (constexpr: jit may read it)
LOG2E = 1.4426950408889634

Tiles = dict[str, int]  # BLOCK_M, BLOCK_N, num_warps, num_stages


def interpreting() -> bool:
    """True when triton runs kernels on the CPU (``TRITON_INTERPRET=1``, read when triton loads)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> tuple[object, torch.dtype, str]:
    """(triton accumulator dtype, torch dtype of lse / delta, dot input precision) for inputs of dtype."""
    if dtype == torch.float64:
        return tl.float64, torch.float64, "ieee"
    if dtype == torch.float32:
        return tl.float32, torch.float32, "ieee"
    return tl.float32, torch.float32, "tf32"  # fp16 / bf16 inputs: the precision flag is unused


def prep(x: torch.Tensor) -> torch.Tensor:
    """x with a unit last stride (the kernels take every other stride as an argument)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def tiles_config(t: Tiles) -> triton.Config:
    """An autotune candidate from a tile dict."""
    return triton.Config(
        {"BLOCK_M": t["BLOCK_M"], "BLOCK_N": t["BLOCK_N"]},
        num_warps=t["num_warps"],
        num_stages=t["num_stages"],
    )
