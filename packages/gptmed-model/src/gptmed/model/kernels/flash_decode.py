# mypy: disable-error-code="untyped-decorator,no-untyped-def,no-any-return,no-untyped-call"
"""Split-K decode attention (flash-decoding): a few queries against a long KV cache.

For ``T <= 16`` queries one program per query block has too little parallelism, so the keys are split
into chunks, one program per (batch*head, chunk) writes partial ``(acc, m, l)`` with the forward's
inner loop, and a small reduction in torch combines them. No autograd (generation only).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from gptmed.model.kernels.flash_common import LOG2E, NEG, acc_dtype, prep
from gptmed.model.kernels.flash_fwd import _fwd_inner

__all__ = ["DECODE_MAX_T", "DECODE_MIN_S", "decode_impl"]

DECODE_MAX_T = 16  # queries per step that take the split-K decode path (without grad)
DECODE_MIN_S = 256  # ... when the cache has at least this many keys


@triton.jit
def _decode_kernel(
    Q,
    K,
    V,
    KM,
    ACC_OUT,
    M_OUT,
    L_OUT,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_kmb,
    H,
    T,
    S,
    qk_scale,
    chunk,
    n_splits,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qvalid = offs_m < T
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
        mask=qvalid[:, None],
        other=0.0,
    )
    n_lo = split * chunk
    n_hi = tl.minimum(S, n_lo + chunk)
    m_i = tl.full([BLOCK_M], NEG, dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    offs_m_pos = offs_m + (S - T)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K + b * stride_kb + h * stride_kh,
        V + b * stride_vb + h * stride_vh,
        KM + b * stride_kmb,
        offs_m_pos,  # no segments: an unused placeholder
        stride_kn,
        stride_vn,
        n_lo,
        n_hi,
        n_hi,
        offs_m_pos,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        True,
        CAUSAL,
        HAS_KM,
        False,
        PREC,
        ACC,
    )
    row = (bh * n_splits + split) * BLOCK_M + offs_m  # partial buffers: (B*H, n_splits, BLOCK_M, ...)
    tl.store(ACC_OUT + row[:, None] * HEAD_DIM + offs_d[None, :], acc)
    tl.store(M_OUT + row, m_i)
    tl.store(L_OUT + row, l_i)


def _num_splits(bh: int, S: int, block_n: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = max(1, (2 * sms + bh - 1) // bh)
    else:
        want = 4
    return max(1, min(want, triton.cdiv(S, 4 * block_n)))


def decode_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """Attention of q (B, H, T, D), T small, over k, v (B, H, S, D). Returns (B, H, T, D) contiguous."""
    q, k, v = prep(q), prep(k), prep(v)
    B, H, T, D = q.shape
    S = k.shape[2]
    acc_tl, acc_torch, prec = acc_dtype(q.dtype)
    km = q if key_mask is None else key_mask
    block_m = max(16, triton.next_power_of_2(T))
    block_n = 64 if q.device.type == "cuda" else 16
    n_splits = _num_splits(B * H, S, block_n, q.device)
    chunk = triton.cdiv(triton.cdiv(S, n_splits), block_n) * block_n
    n_splits = triton.cdiv(S, chunk)
    acc = torch.empty((B * H, n_splits, block_m, D), dtype=acc_torch, device=q.device)
    m = torch.empty((B * H, n_splits, block_m), dtype=acc_torch, device=q.device)
    lsum = torch.empty_like(m)
    _decode_kernel[(B * H, n_splits)](
        q,
        k,
        v,
        km,
        acc,
        m,
        lsum,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        km.stride(0) if key_mask is not None else 0,
        H,
        T,
        S,
        LOG2E / math.sqrt(D),
        chunk,
        n_splits,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HEAD_DIM=D,
        CAUSAL=causal,
        HAS_KM=key_mask is not None,
        PREC=prec,
        ACC=acc_tl,
        num_warps=4,
        num_stages=2 if q.device.type == "cuda" else 1,
    )
    # combine the splits: out = sum_s w_s acc_s / sum_s w_s l_s with w_s = 2^(m_s - max_s m_s)
    w = torch.exp2(m - m.amax(dim=1, keepdim=True))  # (BH, splits, BM)
    num = (w.unsqueeze(-1) * acc).sum(1)  # (BH, BM, D)
    den = (w * lsum).sum(1).clamp_min(torch.finfo(acc_torch).tiny)  # (BH, BM)
    out = (num / den.unsqueeze(-1))[:, :T]
    return out.view(B, H, T, D).to(q.dtype)
