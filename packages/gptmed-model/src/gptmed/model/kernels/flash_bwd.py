# mypy: disable-error-code="untyped-decorator,no-untyped-def,no-any-return,no-untyped-call"
"""The FlashAttention backward kernels (layouts: :mod:`.flash_common`), without atomics.

``_bwd_delta_kernel`` computes ``delta = rowsum(dO * O)`` once. ``_bwd_dkdv_kernel`` owns a key block
and loops over the query blocks that can see it (dK, dV); ``_bwd_dq_kernel`` owns a query block and
loops over the key blocks it sees (dQ). Both recompute ``P = exp2(q k^T * qk_scale - lse)``.

As in the forward, each loop range is cut into blocks that need a per-element mask and blocks seen
whole, which run unmasked: there a query past ``T`` was loaded as zeros (q = dO = lse = delta = 0)
and adds nothing to dK/dV, and a key past ``S`` only touches its own, never stored, dK/dV row. The dQ
kernel keeps its key tail masked: ``p = exp2(0 - lse)`` of a zero key could overflow (``p * 0`` = NaN).

Segments (``T == S``): a key block is seen by the queries from its first key to the end of its last
key's segment (``max(hi)``), whole by query blocks past the key block and before the end of its
*first* key's segment (``min(hi)``). Padding keys (``hi = 0``) are seen by nobody, padding queries
(``lo = T``) see nothing: both get zero gradients.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from gptmed.model.kernels.flash_common import LOG2E, NEG, Tiles, acc_dtype, prep, tiles_config
from gptmed.model.kernels.flash_fwd import INTERPRETER_TILES, TUNE_KEY, autotuned, query_block_ranges

__all__ = ["bwd_impl", "bwd_tiles"]


@triton.jit
def _bwd_delta_kernel(
    O,  # noqa: E741
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_om,
    stride_dob,
    stride_doh,
    stride_dom,
    H,
    T,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ACC: tl.constexpr,
):
    """delta = rowsum(dO * O) per query row, read once in the input dtype, accumulated in ACC."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_m < T
    o = tl.load(
        O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
        mask=valid[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
        mask=valid[:, None],
        other=0.0,
    )
    tl.store(DELTA + bh * T + offs_m, tl.sum(o.to(ACC) * do.to(ACC), 1), mask=valid)


@triton.jit
def _bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    kkeep,
    offs_n,
    Q_bh,
    DO_bh,
    LSE_bh,
    DELTA_bh,
    SEG_LO_b,
    stride_qm,
    stride_dom,
    m_lo,
    m_hi,
    T,
    shift,
    qk_scale,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SEG: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        qvalid = offs_m < T
        qT = tl.load(Q_bh + offs_m[None, :] * stride_qm + offs_d[:, None], mask=qvalid[None, :], other=0.0)
        do = tl.load(DO_bh + offs_m[:, None] * stride_dom + offs_d[None, :], mask=qvalid[:, None], other=0.0)
        lse = tl.load(LSE_bh + offs_m, mask=qvalid, other=0.0)
        delta = tl.load(DELTA_bh + offs_m, mask=qvalid, other=0.0)
        kq = tl.dot(k, qT, input_precision=PREC, out_dtype=ACC) * qk_scale  # (BN, BM)
        if MASKED:
            keep = kkeep[:, None] & qvalid[None, :]
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= offs_m[None, :] + shift)
            if HAS_SEG:
                lo_q = tl.load(SEG_LO_b + offs_m, mask=qvalid, other=T)
                keep = keep & (offs_n[:, None] >= lo_q[None, :])
            pT = tl.where(keep, tl.exp2(tl.where(keep, kq - lse[None, :], NEG)), 0.0)
        else:
            # every (key, query) pair here is visible; a query past T loaded q = dO = lse = delta = 0,
            # so its pT = 1 multiplies zeros and adds nothing (no per-element mask needed)
            pT = tl.exp2(kq - lse[None, :])
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC, out_dtype=ACC)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC, out_dtype=ACC)  # (BN, BM)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PREC, out_dtype=ACC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    KM,
    SEG_LO,
    SEG_HI,
    DK,
    DV,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_kmb,
    H,
    T,
    S,
    qk_scale,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_SEG: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kvalid = offs_n < S
    k = tl.load(
        K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
        mask=kvalid[:, None],
        other=0.0,
    )
    v = tl.load(
        V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
        mask=kvalid[:, None],
        other=0.0,
    )
    kkeep = kvalid
    if HAS_KM:
        km = tl.load(KM + b * stride_kmb + offs_n, mask=kvalid, other=0)
        kkeep = kkeep & (km != 0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=ACC)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=ACC)
    Q_bh = Q + b * stride_qb + h * stride_qh
    DO_bh = DO + b * stride_dob + h * stride_doh
    shift = S - T  # query t sits at key position t + shift
    # query ranges: masked [m_lo, full_lo), seen whole [full_lo, full_hi), masked [full_hi, m_hi)
    if HAS_SEG:  # T == S, causal; padding keys have hi = 0
        hi_k = tl.load(SEG_HI + b * T + offs_n, mask=kvalid, other=0)
        m_lo = (start_n // BLOCK_M) * BLOCK_M
        m_hi = tl.max(hi_k, 0)  # one past the last query that sees a key of this block
        m_hi = tl.where(start_n < m_hi, m_hi, m_lo)  # a block of padding only: nothing to visit
        full_lo = tl.minimum(tl.maximum(tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M, m_lo), m_hi)
        full_hi = (tl.min(tl.where(kvalid, hi_k, T), 0) // BLOCK_M) * BLOCK_M
        full_hi = tl.maximum(full_lo, tl.minimum(full_hi, m_hi))
    else:
        m_lo = 0
        full_lo = 0  # from here on every query of a block sees every key of this block
        if CAUSAL:
            m_lo = (tl.maximum(0, start_n - shift) // BLOCK_M) * BLOCK_M
            full_lo = tl.cdiv(tl.maximum(0, start_n + BLOCK_N - 1 - shift), BLOCK_M) * BLOCK_M
        if HAS_KM:
            full_lo = T
        # keys past S (the last block) need no mask: they loaded k = v = 0 and their rows are never stored
        full_lo = tl.minimum(full_lo, T)
        full_hi = T
        m_hi = T
    LSE_bh = LSE + bh * T
    DELTA_bh = DELTA + bh * T
    SEG_LO_b = SEG_LO + b * T
    dk, dv = _bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        kkeep,
        offs_n,
        Q_bh,
        DO_bh,
        LSE_bh,
        DELTA_bh,
        SEG_LO_b,
        stride_qm,
        stride_dom,
        m_lo,
        full_lo,
        T,
        shift,
        qk_scale,
        BLOCK_M,
        HEAD_DIM,
        True,
        CAUSAL,
        HAS_SEG,
        PREC,
        ACC,
    )
    dk, dv = _bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        kkeep,
        offs_n,
        Q_bh,
        DO_bh,
        LSE_bh,
        DELTA_bh,
        SEG_LO_b,
        stride_qm,
        stride_dom,
        full_lo,
        full_hi,
        T,
        shift,
        qk_scale,
        BLOCK_M,
        HEAD_DIM,
        False,
        CAUSAL,
        HAS_SEG,
        PREC,
        ACC,
    )
    if HAS_SEG:  # query blocks past the end of the first key's segment
        dk, dv = _bwd_dkdv_inner(
            dk,
            dv,
            k,
            v,
            kkeep,
            offs_n,
            Q_bh,
            DO_bh,
            LSE_bh,
            DELTA_bh,
            SEG_LO_b,
            stride_qm,
            stride_dom,
            full_hi,
            m_hi,
            T,
            shift,
            qk_scale,
            BLOCK_M,
            HEAD_DIM,
            True,
            CAUSAL,
            HAS_SEG,
            PREC,
            ACC,
        )
    dk = dk * sm_scale
    # DK / DV are (B, S, H, D) in memory
    rows = ((b * S + offs_n[:, None]) * H + h) * HEAD_DIM + offs_d[None, :]
    tl.store(DK + rows, dk.to(DK.dtype.element_ty), mask=kvalid[:, None])
    tl.store(DV + rows, dv.to(DV.dtype.element_ty), mask=kvalid[:, None])


@triton.jit
def _bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    offs_m,
    lo_q,
    K_bh,
    V_bh,
    KM_b,
    stride_kn,
    stride_vn,
    n_lo,
    n_hi,
    S,
    shift,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_SEG: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if MASKED:
            kvalid = offs_n < S
            kT = tl.load(
                K_bh + offs_n[None, :] * stride_kn + offs_d[:, None], mask=kvalid[None, :], other=0.0
            )
            vT = tl.load(
                V_bh + offs_n[None, :] * stride_vn + offs_d[:, None], mask=kvalid[None, :], other=0.0
            )
        else:
            kT = tl.load(K_bh + offs_n[None, :] * stride_kn + offs_d[:, None])
            vT = tl.load(V_bh + offs_n[None, :] * stride_vn + offs_d[:, None])
        qk = tl.dot(q, kT, input_precision=PREC, out_dtype=ACC) * qk_scale  # (BM, BN)
        if MASKED:
            keep = kvalid[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + shift)
            if HAS_KM:
                km = tl.load(KM_b + offs_n, mask=kvalid, other=0)
                keep = keep & (km[None, :] != 0)
            if HAS_SEG:
                keep = keep & (offs_n[None, :] >= lo_q[:, None])
            p = tl.where(keep, tl.exp2(tl.where(keep, qk - lse[:, None], NEG)), 0.0)
        else:
            p = tl.exp2(qk - lse[:, None])
        dp = tl.dot(do, vT, input_precision=PREC, out_dtype=ACC)  # (BM, BN)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PREC, out_dtype=ACC)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    KM,
    SEG_LO,
    SEG_HI,
    DQ,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_kmb,
    H,
    T,
    S,
    qk_scale,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_SEG: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qvalid = offs_m < T
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
        mask=qvalid[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
        mask=qvalid[:, None],
        other=0.0,
    )
    lse = tl.load(LSE + bh * T + offs_m, mask=qvalid, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=qvalid, other=0.0)
    K_bh = K + b * stride_kb + h * stride_kh
    V_bh = V + b * stride_vb + h * stride_vh
    KM_b = KM + b * stride_kmb
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    shift = S - T
    # whole key blocks inside S run unmasked (a key past S would add p * 0 = NaN where p overflows)
    lo_q, n_lo, full_lo, full_hi, n_hi = query_block_ranges(
        SEG_LO + b * T, offs_m, qvalid, start_m, T, S, BLOCK_M, BLOCK_N, CAUSAL, HAS_KM, HAS_SEG
    )
    if HAS_SEG:
        dq = _bwd_dq_inner(
            dq,
            q,
            do,
            lse,
            delta,
            offs_m,
            lo_q,
            K_bh,
            V_bh,
            KM_b,
            stride_kn,
            stride_vn,
            n_lo,
            full_lo,
            S,
            shift,
            qk_scale,
            BLOCK_N,
            HEAD_DIM,
            True,
            CAUSAL,
            HAS_KM,
            HAS_SEG,
            PREC,
            ACC,
        )
    dq = _bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        offs_m,
        lo_q,
        K_bh,
        V_bh,
        KM_b,
        stride_kn,
        stride_vn,
        full_lo,
        full_hi,
        S,
        shift,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        False,
        CAUSAL,
        HAS_KM,
        HAS_SEG,
        PREC,
        ACC,
    )
    dq = _bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        offs_m,
        lo_q,
        K_bh,
        V_bh,
        KM_b,
        stride_kn,
        stride_vn,
        full_hi,
        n_hi,
        S,
        shift,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        True,
        CAUSAL,
        HAS_KM,
        HAS_SEG,
        PREC,
        ACC,
    )
    dq = dq * sm_scale
    # DQ is (B, T, H, D) in memory
    tl.store(
        DQ + ((b * T + offs_m[:, None]) * H + h) * HEAD_DIM + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=qvalid[:, None],
    )


# --------------------------------------------------------------------------------------------------
# tiles and launch
# --------------------------------------------------------------------------------------------------
def bwd_tiles(head_dim: int, device: torch.device, dtype: torch.dtype) -> tuple[Tiles, Tiles]:
    """Tiles of the dK/dV kernel (a key block stays, query blocks stream) and of the dQ kernel.

    bf16/fp16 on an H100 (same sweep): 4 warps everywhere (8 warps cost 22-25% at head dim 128);
    dK/dV 32 x 64 at D <= 64, 64 x 64 at D = 128; dQ 64 queries x 32 keys, 3 stages."""
    if device.type != "cuda":
        return dict(INTERPRETER_TILES), dict(INTERPRETER_TILES)
    if dtype == torch.float32:
        f32 = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
        return f32, dict(f32)
    dq = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3}
    if head_dim <= 64:
        return {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, dq
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, dq


# segment kernels on CUDA measure their tiles once per shape (see flash_fwd.SEG_FWD_CANDIDATES);
# the first candidate of each is the H100 sweep's choice at head dim 64, the second the largest tiles
SEG_DKDV_CANDIDATES: tuple[Tiles, ...] = (
    {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
)
SEG_DQ_CANDIDATES: tuple[Tiles, ...] = (
    {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
)
_dkdv_tuned = triton.autotune([tiles_config(t) for t in SEG_DKDV_CANDIDATES], key=TUNE_KEY)(_bwd_dkdv_kernel)
_dq_tuned = triton.autotune([tiles_config(t) for t in SEG_DQ_CANDIDATES], key=TUNE_KEY)(_bwd_dq_kernel)


def bwd_impl(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    segments: tuple[torch.Tensor, torch.Tensor] | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) as (B, H, T|S, D) views of (B, T|S, H, D) memory; ``o``: the forward's output."""
    q, k, v, do, o = prep(q), prep(k), prep(v), prep(do), prep(o)
    B, H, T, D = q.shape
    S = k.shape[2]
    acc_tl, acc_torch, prec = acc_dtype(q.dtype)
    delta = torch.empty((B, H, T), dtype=acc_torch, device=q.device)
    block_d = 64 if q.device.type == "cuda" else 16
    _bwd_delta_kernel[(triton.cdiv(T, block_d), B * H)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], H, T, BLOCK_M=block_d, HEAD_DIM=D, ACC=acc_tl
    )
    dq = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, S, H, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, S, H, D), dtype=v.dtype, device=q.device)
    km = q if key_mask is None else key_mask  # unused pointers when absent
    seg_lo, seg_hi = (q, q) if segments is None else segments
    sm_scale = 1.0 / math.sqrt(D)
    common: list[int | float] = [*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3]]
    common += [km.stride(0) if key_mask is not None else 0, H, T, S, sm_scale * LOG2E, sm_scale]
    has_km, has_seg = key_mask is not None, segments is not None
    kw = dict(HEAD_DIM=D, CAUSAL=causal, HAS_KM=has_km, HAS_SEG=has_seg, PREC=prec, ACC=acc_tl)
    ptrs = (q, k, v, do, lse, delta, km, seg_lo, seg_hi)
    if autotuned(q, segments):
        _dkdv_tuned[lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), B * H)](*ptrs, dk, dv, *common, **kw)
        _dq_tuned[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](*ptrs, dq, *common, **kw)
    else:
        cfg_kv, cfg_q = bwd_tiles(D, q.device, q.dtype)
        _bwd_dkdv_kernel[(triton.cdiv(S, cfg_kv["BLOCK_N"]), B * H)](*ptrs, dk, dv, *common, **kw, **cfg_kv)
        _bwd_dq_kernel[(triton.cdiv(T, cfg_q["BLOCK_M"]), B * H)](*ptrs, dq, *common, **kw, **cfg_q)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
