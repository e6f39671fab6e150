# mypy: disable-error-code="untyped-decorator,no-untyped-def,no-any-return,no-untyped-call"
"""FlashAttention-style attention in Triton: the entry points, autograd and ``torch.compile`` ops.

The kernels (FlashAttention-2, Dao 2023) live in :mod:`.flash_fwd` (forward), :mod:`.flash_bwd`
(delta, dK/dV and dQ, no atomics) and :mod:`.flash_decode` (split-K decode); :mod:`.flash_common`
documents the layouts. This module decides which to launch:

* :func:`flash_attention` - causal (bottom-right aligned) or not, an optional key-padding mask, and
  optional **segments** (packed rows: each token attends only to the earlier tokens of its own
  segment, the work is ``sum(L_i^2)`` instead of ``T^2``, padding attends to nothing). Without grad,
  a few queries against a long cache take the decode kernel.
* :func:`decode_attention` - the decode kernel directly, whatever the shapes.

Under ``torch.compile`` the kernels run as ``torch.library.custom_op`` s (``gptmed::flash_attn_fwd``,
``gptmed::flash_attn_bwd``, ``gptmed::flash_attn_decode``) with a registered autograd formula and fake
(meta) implementations, so the compiler treats them as opaque ops without graph breaks, and a new
segment layout (data, not shape) never recompiles. Eager calls skip that dispatch (a plain
``torch.autograd.Function`` launches the same kernels): it cost more host time than the kernels' GPU
time at training shapes.

Accumulation is fp32 (fp64 for fp64 inputs, which only the CPU interpreter runs, for parity tests);
fp32 inputs use IEEE-precision dots (no TF32) so they match the reference. On the CPU the kernels run
under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported) - slow, for tests.
"""

from __future__ import annotations

import torch
from gptmed.model.kernels.flash_bwd import bwd_impl
from gptmed.model.kernels.flash_common import interpreting
from gptmed.model.kernels.flash_decode import DECODE_MAX_T, DECODE_MIN_S, decode_impl
from gptmed.model.kernels.flash_fwd import fwd_impl

__all__ = [
    "DECODE_MAX_T",
    "DECODE_MIN_S",
    "SUPPORTED_HEAD_DIMS",
    "Segments",
    "as_key_mask",
    "decode_attention",
    "flash_attention",
    "interpreting",
    "needs_grad",
    "segments_reason",
    "unsupported_reason",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)

Segments = tuple[torch.Tensor, torch.Tensor]
"""(lo, hi), each (B, T) int32 contiguous: query ``i`` sees keys ``lo[i] <= j <= i``, key ``j`` is seen
by queries ``j <= i < hi[j]``; padding: ``lo = T``, ``hi = 0``
(:func:`gptmed.model.attention.segment_bounds` makes them from segment ids, on the device)."""


# --------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile) and autograd
# --------------------------------------------------------------------------------------------------
def _seg(lo: torch.Tensor | None, hi: torch.Tensor | None) -> Segments | None:
    return None if lo is None or hi is None else (lo, hi)


@torch.library.custom_op("gptmed::flash_attn_fwd", mutates_args=())
def _flash_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    seg_lo: torch.Tensor | None,
    seg_hi: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return fwd_impl(q, k, v, key_mask, _seg(seg_lo, seg_hi), causal)


@_flash_fwd_op.register_fake
def _(q, k, v, key_mask, seg_lo, seg_hi, causal) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty((B, T, H, D)).transpose(1, 2), q.new_empty((B, H, T), dtype=lse_dtype)


@torch.library.custom_op("gptmed::flash_attn_bwd", mutates_args=())
def _flash_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    seg_lo: torch.Tensor | None,
    seg_hi: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return bwd_impl(do, q, k, v, o, lse, key_mask, _seg(seg_lo, seg_hi), causal)


@_flash_bwd_op.register_fake
def _(do, q, k, v, o, lse, key_mask, seg_lo, seg_hi, causal):
    def like(x: torch.Tensor) -> torch.Tensor:
        B, H, T, D = x.shape
        return x.new_empty((B, T, H, D)).transpose(1, 2)

    return like(q), like(k), like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_mask, seg_lo, seg_hi, causal = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, key_mask, seg_lo, seg_hi)
    ctx.causal = causal


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, key_mask, seg_lo, seg_hi = ctx.saved_tensors
    dq, dk, dv = _flash_bwd_op(do, q, k, v, o, lse, key_mask, seg_lo, seg_hi, ctx.causal)
    return dq, dk, dv, None, None, None, None


_flash_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("gptmed::flash_attn_decode", mutates_args=())
def _flash_decode_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    return decode_impl(q, k, v, key_mask, causal)


@_flash_decode_op.register_fake
def _(q, k, v, key_mask, causal) -> torch.Tensor:
    return q.new_empty(q.shape)


class _FlashAttention(torch.autograd.Function):
    """The eager path: the same kernels as the ops above, with none of their dispatch cost."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, seg_lo, seg_hi, causal):
        o, lse = fwd_impl(q, k, v, key_mask, _seg(seg_lo, seg_hi), causal)
        ctx.save_for_backward(q, k, v, o, lse, key_mask, seg_lo, seg_hi)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        if torch.is_grad_enabled():  # create_graph=True: second-order terms would be silently lost
            raise RuntimeError(
                "the fused attention kernel has no double backward (create_graph=True); "
                "use GPTMED_ATTENTION=sdpa (or math) for higher-order gradients"
            )
        q, k, v, o, lse, key_mask, seg_lo, seg_hi = ctx.saved_tensors
        dq, dk, dv = bwd_impl(do, q, k, v, o, lse, key_mask, _seg(seg_lo, seg_hi), ctx.causal)
        return dq, dk, dv, None, None, None, None


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------
def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the fused kernel cannot take these inputs (None when it can)."""
    if q.device.type != "cuda" and not interpreting():
        return f"tensors on {q.device.type} (the Triton kernel needs CUDA, or TRITON_INTERPRET=1)"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v must be 4-D (B, nh, T, hs), got {q.dim()}, {k.dim()}, {v.dim()} dims"
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        return f"shape mismatch q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[3] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[3]} not in {SUPPORTED_HEAD_DIMS}"
    allowed = (torch.float16, torch.bfloat16, torch.float32) + ((torch.float64,) if interpreting() else ())
    if q.dtype not in allowed or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype}/{k.dtype}/{v.dtype} not supported (fp16, bf16, fp32)"
    if k.shape[2] < q.shape[2]:
        return f"fewer keys ({k.shape[2]}) than queries ({q.shape[2]})"
    return None


def segments_reason(q: torch.Tensor, k: torch.Tensor, segments: Segments) -> str | None:
    """Why the kernel cannot take these segments with q (B, nh, T, hs), k (None when it can)."""
    B, T = q.shape[0], q.shape[2]
    lo, hi = segments
    if k.shape[2] != T:
        return f"segments need self-attention (as many keys as queries), got T={T}, S={k.shape[2]}"
    for name, t in (("lo", lo), ("hi", hi)):
        if (
            tuple(t.shape) != (B, T)
            or t.dtype != torch.int32
            or not t.is_contiguous()
            or t.device != q.device
        ):
            return f"segment {name} must be contiguous int32 ({B}, {T}) on {q.device}, got {t.dtype} {tuple(t.shape)}"
    return None


def as_key_mask(
    mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor | None, str | None]:
    """(B, S) bool key-padding mask from a mask broadcastable to (B, nh, T, S), or the reason it is not one."""
    if mask is None:
        return None, None
    B, S = q.shape[0], k.shape[2]
    if (
        mask.dim() == 4
        and mask.shape[1] == 1
        and mask.shape[2] == 1
        and mask.shape[3] == S
        and mask.shape[0] in (1, B)
    ):
        km = mask.reshape(mask.shape[0], S)
        km = km if km.dtype == torch.bool else km != 0
        return km.expand(B, S), None
    return None, f"mask of shape {tuple(mask.shape)} is not a (B, 1, 1, S) key-padding mask"


def needs_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether this call must be differentiable (grad mode on and an input that requires grad)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
    segments: Segments | None = None,
) -> torch.Tensor:
    """Fused attention. q: (B, nh, T, hs); k, v: (B, nh, S, hs), S >= T; key_mask: (B, S) bool or None;
    segments: :data:`Segments` (lo, hi) of packed rows (then S == T, causal, no key mask).

    Returns (B, nh, T, hs) (a view of (B, T, nh, hs) memory, except on the decode path).
    Differentiable in q, k, v. Without grad, a few queries against a long cache (T <= 16, S >= 256,
    no segments) take the split-K decode kernel.
    """
    if segments is not None:
        why = segments_reason(q, k, segments)
        if why is not None or key_mask is not None or not causal:
            raise ValueError(why or "segments come with causal=True and no key_mask")
    if key_mask is not None:
        key_mask = key_mask.to(torch.int8).contiguous()  # (B, S)
    seg_lo, seg_hi = (None, None) if segments is None else segments
    need_grad = needs_grad(q, k, v)
    T, S = q.shape[2], k.shape[2]
    decode = not need_grad and segments is None and T <= DECODE_MAX_T and S >= DECODE_MIN_S
    if torch.compiler.is_compiling():  # opaque ops for the compiler
        if decode:
            return _flash_decode_op(q, k, v, key_mask, causal)
        return _flash_fwd_op(q, k, v, key_mask, seg_lo, seg_hi, causal)[0]
    # eager: straight to the kernels. The torch.library ops cost ~370 us of host time per forward +
    # backward on an H100 box (dispatch, autograd wrapping, a second op for the backward), more than
    # the kernels themselves at training shapes (fwd + bwd 0.21 ms at 32 x 8 x 512 x 64)
    if decode:
        return decode_impl(q, k, v, key_mask, causal)
    if need_grad:
        return _FlashAttention.apply(q, k, v, key_mask, seg_lo, seg_hi, causal)
    return fwd_impl(q, k, v, key_mask, segments, causal)[0]


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The split-K decode kernel directly (no autograd), whatever the shapes. For tests and benchmarks."""
    if key_mask is not None:
        key_mask = key_mask.to(torch.int8).contiguous()
    if torch.compiler.is_compiling():
        return _flash_decode_op(q, k, v, key_mask, causal)
    return decode_impl(q, k, v, key_mask, causal)
