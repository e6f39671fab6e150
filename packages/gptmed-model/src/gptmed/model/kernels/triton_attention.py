# mypy: disable-error-code="untyped-decorator,no-untyped-def,no-any-return,no-untyped-call"
"""FlashAttention-style attention in Triton: forward, backward, and a split-K decode path.

Design (FlashAttention-2, Dao 2023):

* **Forward** ``_fwd_kernel``: one program per (query block of ``BLOCK_M`` rows, batch*head). It streams
  key/value blocks of ``BLOCK_N`` through SRAM keeping the online-softmax state (running max ``m``,
  running sum ``l``, unnormalised output ``acc``) in registers, in base 2 (``exp2``, the scale folded
  into ``qk_scale = sm_scale * log2(e)``). Blocks entirely below the causal diagonal and inside the
  sequence run without any masking; only the diagonal / tail blocks pay for masks. It writes the output
  and the log-sum-exp ``lse = m + log2(l)`` per row (fp32) for the backward.
* **Causal** is bottom-right aligned (query ``t`` is key position ``S - T + t``), so the same kernel
  serves training (``T == S``) and chunked prefill on top of a KV cache (``T < S``).
* **Masks**: the sequence tail (``T``, ``S`` not multiples of the block) and an optional key-padding
  mask ``(B, S)`` (left padding in batched generation). Masked scores get a large *finite* negative
  value, not ``-inf``: a block whose scores are all masked cannot produce ``NaN``, and a row that sees
  no key at all ends with a finite (unspecified) output, matching the other backends.
* **Backward** (no atomics): ``_bwd_dkdv_kernel`` owns a key block and loops over query blocks (from the
  first one that can see it) accumulating dK and dV; ``_bwd_dq_kernel`` owns a query block and loops over
  key blocks accumulating dQ. Both recompute ``P = exp2(q k^T * qk_scale - lse)`` from the saved lse;
  ``delta = rowsum(dO * O)`` is computed once beforehand (``_bwd_delta_kernel``). Like the forward,
  both run the blocks wholly below the causal diagonal without per-element masks: a query past ``T``
  was loaded as zeros (q = dO = lse = delta = 0) and adds nothing to dK/dV, and a key past ``S`` only
  touches its own, never stored, dK/dV row. The dQ kernel keeps its key tail masked: there
  ``p = exp2(0 - lse)`` of a zero key could overflow and turn ``p * 0`` into NaN.
* **Decode** ``_decode_kernel`` (flash-decoding): for a few queries (``T <= 16``) against a long cache,
  one program per query block has too little parallelism, so the keys are split into chunks, one program
  per (batch*head, chunk) writes partial ``(acc, m, l)``, and a tiny reduction combines them.
* Accumulation is fp32 (fp64 for fp64 inputs, which only the CPU interpreter runs, for parity tests).
  fp32 inputs use IEEE-precision dots (no TF32) so they match the reference.

Under ``torch.compile`` they run as ``torch.library.custom_op`` s (``gptmed::flash_attn_fwd``,
``gptmed::flash_attn_bwd``, ``gptmed::flash_attn_decode``) with a registered autograd formula and fake
(meta) implementations, so the compiler treats them as opaque ops without graph breaks. Eager calls skip
that dispatch (a plain ``torch.autograd.Function`` launches the same kernels): it cost more host time
than the kernels' GPU time at training shapes.

On the CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is
imported) - slow, for tests only.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "as_key_mask",
    "flash_attention",
    "interpreting",
    "needs_grad",
    "unsupported_reason",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for masked scores (constexpr: jit may read it)
_LOG2E = 1.4426950408889634
DECODE_MAX_T = 16  # queries per step that take the split-K decode path (without grad)
DECODE_MIN_S = 256  # ... when the cache has at least this many keys


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    K_bh,
    V_bh,
    KM_b,
    stride_kn,
    stride_vn,
    n_lo,
    n_hi,
    S_bound,
    offs_m_pos,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if MASKED:
            kvalid = offs_n < S_bound
            kT = tl.load(
                K_bh + offs_n[None, :] * stride_kn + offs_d[:, None], mask=kvalid[None, :], other=0.0
            )
            v = tl.load(V_bh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kvalid[:, None], other=0.0)
        else:
            kT = tl.load(K_bh + offs_n[None, :] * stride_kn + offs_d[:, None])
            v = tl.load(V_bh + offs_n[:, None] * stride_vn + offs_d[None, :])
        qk = tl.dot(q, kT, input_precision=PREC, out_dtype=ACC) * qk_scale  # (BM, BN), log2 units
        if MASKED:
            keep = kvalid[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m_pos[:, None])
            if HAS_KM:
                km = tl.load(KM_b + offs_n, mask=kvalid, other=0)
                keep = keep & (km[None, :] != 0)
            qk = tl.where(keep, qk, _NEG)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC, out_dtype=ACC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    KM,
    O,  # noqa: E741 (the output pointer, FlashAttention naming)
    LSE,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_kmb,
    H,
    T,
    S,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
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
    K_bh = K + b * stride_kb + h * stride_kh
    V_bh = V + b * stride_vb + h * stride_vh
    KM_b = KM + b * stride_kmb
    offs_m_pos = offs_m + (S - T)  # key position of each query (bottom-right causal)
    m_i = tl.full([BLOCK_M], _NEG, dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    if CAUSAL:
        hi = tl.minimum(S, start_m + BLOCK_M + S - T)
        full = tl.minimum(S, start_m + S - T + 1)  # keys every row of the block may see
    else:
        hi = S
        full = S
    full = (full // BLOCK_N) * BLOCK_N
    if HAS_KM:
        full = 0
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K_bh,
        V_bh,
        KM_b,
        stride_kn,
        stride_vn,
        0,
        full,
        S,
        offs_m_pos,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        False,
        CAUSAL,
        HAS_KM,
        PREC,
        ACC,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K_bh,
        V_bh,
        KM_b,
        stride_kn,
        stride_vn,
        full,
        hi,
        S,
        offs_m_pos,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        True,
        CAUSAL,
        HAS_KM,
        PREC,
        ACC,
    )
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=qvalid[:, None],
    )
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_safe), mask=qvalid)


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
            pT = tl.where(keep, tl.exp2(tl.where(keep, kq - lse[None, :], _NEG)), 0.0)
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
    lo = 0
    full_lo = 0  # from here on every query of a block sees every key of this block
    if CAUSAL:
        lo = (tl.maximum(0, start_n - shift) // BLOCK_M) * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(0, start_n + BLOCK_N - 1 - shift), BLOCK_M) * BLOCK_M
    if HAS_KM:
        full_lo = T
    # keys past S (the last block) need no mask: they loaded k = v = 0 and their rows are never stored
    full_lo = tl.minimum(full_lo, T)
    dk, dv = _bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        kkeep,
        offs_n,
        Q_bh,
        DO_bh,
        LSE + bh * T,
        DELTA + bh * T,
        stride_qm,
        stride_dom,
        lo,
        full_lo,
        T,
        shift,
        qk_scale,
        BLOCK_M,
        HEAD_DIM,
        True,
        CAUSAL,
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
        LSE + bh * T,
        DELTA + bh * T,
        stride_qm,
        stride_dom,
        full_lo,
        T,
        T,
        shift,
        qk_scale,
        BLOCK_M,
        HEAD_DIM,
        False,
        CAUSAL,
        PREC,
        ACC,
    )
    dk = dk * sm_scale
    # DK / DV are contiguous (B, H, S, D)
    base = bh * S * HEAD_DIM
    tl.store(
        DK + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=kvalid[:, None],
    )
    tl.store(
        DV + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=kvalid[:, None],
    )


@triton.jit
def _bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    offs_m,
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
            p = tl.where(keep, tl.exp2(tl.where(keep, qk - lse[:, None], _NEG)), 0.0)
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
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    shift = S - T
    if CAUSAL:
        hi = tl.minimum(S, start_m + BLOCK_M + shift)
        full = tl.minimum(S, start_m + shift + 1)  # keys every row of the block may see
    else:
        hi = S
        full = S
    # whole key blocks inside S run unmasked (a key past S would add p * 0 = NaN where p overflows)
    full = (full // BLOCK_N) * BLOCK_N
    if HAS_KM:
        full = 0
    dq = _bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        offs_m,
        K_bh,
        V_bh,
        KM + b * stride_kmb,
        stride_kn,
        stride_vn,
        0,
        full,
        S,
        shift,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        False,
        CAUSAL,
        HAS_KM,
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
        K_bh,
        V_bh,
        KM + b * stride_kmb,
        stride_kn,
        stride_vn,
        full,
        hi,
        S,
        shift,
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        True,
        CAUSAL,
        HAS_KM,
        PREC,
        ACC,
    )
    dq = dq * sm_scale
    tl.store(
        DQ + bh * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=qvalid[:, None],
    )


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
    m_i = tl.full([BLOCK_M], _NEG, dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K + b * stride_kb + h * stride_kh,
        V + b * stride_vb + h * stride_vh,
        KM + b * stride_kmb,
        stride_kn,
        stride_vn,
        n_lo,
        n_hi,
        n_hi,
        offs_m + (S - T),
        qk_scale,
        BLOCK_N,
        HEAD_DIM,
        True,
        CAUSAL,
        HAS_KM,
        PREC,
        ACC,
    )
    row = (bh * n_splits + split) * BLOCK_M + offs_m  # partial buffers: (B*H, n_splits, BLOCK_M, ...)
    tl.store(ACC_OUT + row[:, None] * HEAD_DIM + offs_d[None, :], acc)
    tl.store(M_OUT + row, m_i)
    tl.store(L_OUT + row, l_i)


# --------------------------------------------------------------------------------------------------
# launch helpers
# --------------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> tuple[object, torch.dtype, str]:
    if dtype == torch.float64:
        return tl.float64, torch.float64, "ieee"
    if dtype == torch.float32:
        return tl.float32, torch.float32, "ieee"
    return tl.float32, torch.float32, "tf32"  # fp16 / bf16 inputs: the precision flag is unused


def _blocks(head_dim: int, device: torch.device, dtype: torch.dtype) -> dict[str, int]:
    """Forward tiles. bf16/fp16 on an H100 (tile sweep, docs/bench/model.md): 64 x 64, 4 warps, 3 stages
    was fastest at head dim 64 and 128 (T 512-1024; 0.21 vs 0.29 ms for 128 x 64 / 8 warps at D=128)."""
    if device.type != "cuda":  # interpreter: small blocks keep tests fast and cover multi-block paths
        return {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:  # twice the bytes per tile: smaller tiles to fit shared memory
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


def _bwd_blocks(
    head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, int], dict[str, int]]:
    """Tiles of the dK/dV kernel (a key block stays, query blocks stream) and of the dQ kernel.

    bf16/fp16 on an H100 (same sweep): 4 warps everywhere (8 warps cost 22-25% at head dim 128);
    dK/dV 32 x 64 at D <= 64, 64 x 64 at D = 128; dQ 64 queries x 32 keys, 3 stages."""
    if device.type != "cuda":
        small = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
        return small, small
    if dtype == torch.float32:
        f32 = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
        return f32, f32
    dq = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3}
    if head_dim <= 64:
        return {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, dq
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}, dq


def _prep(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _key_mask_arg(key_mask: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    if key_mask is None:
        return q.new_empty((1,), dtype=torch.int8), 0, False
    km = key_mask.to(torch.int8).contiguous()  # (B, S)
    return km, km.stride(0), True


def _fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _prep(q), _prep(k), _prep(v)
    B, H, T, D = q.shape
    S = k.shape[2]
    acc_tl, acc_torch, prec = _acc_dtype(q.dtype)
    o = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, T), dtype=acc_torch, device=q.device)
    km, stride_km, has_km = _key_mask_arg(key_mask, q)
    cfg = _blocks(D, q.device, q.dtype)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]), B * H)
    sm_scale = 1.0 / math.sqrt(D)
    _fwd_kernel[grid](
        q,
        k,
        v,
        km,
        o,
        lse,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        o.stride(0),
        o.stride(1),
        o.stride(2),
        stride_km,
        H,
        T,
        S,
        sm_scale * _LOG2E,
        HEAD_DIM=D,
        CAUSAL=causal,
        HAS_KM=has_km,
        PREC=prec,
        ACC=acc_tl,
        **cfg,
    )
    return o, lse


def _bwd_impl(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, do = _prep(q), _prep(k), _prep(v), _prep(do)
    B, H, T, D = q.shape
    S = k.shape[2]
    acc_tl, acc_torch, prec = _acc_dtype(q.dtype)
    o = _prep(o)
    delta = torch.empty((B, H, T), dtype=acc_torch, device=q.device)
    block_d = 64 if q.device.type == "cuda" else 16
    _bwd_delta_kernel[(triton.cdiv(T, block_d), B * H)](
        o,
        do,
        delta,
        o.stride(0),
        o.stride(1),
        o.stride(2),
        do.stride(0),
        do.stride(1),
        do.stride(2),
        H,
        T,
        BLOCK_M=block_d,
        HEAD_DIM=D,
        ACC=acc_tl,
    )
    dq = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, S, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, H, S, D), dtype=v.dtype, device=q.device)
    km, stride_km, has_km = _key_mask_arg(key_mask, q)
    cfg_kv, cfg_q = _bwd_blocks(D, q.device, q.dtype)
    sm_scale = 1.0 / math.sqrt(D)
    common = (
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        do.stride(0),
        do.stride(1),
        do.stride(2),
        stride_km,
        H,
        T,
        S,
        sm_scale * _LOG2E,
        sm_scale,
    )
    kw = dict(HEAD_DIM=D, CAUSAL=causal, HAS_KM=has_km, PREC=prec, ACC=acc_tl)
    _bwd_dkdv_kernel[(triton.cdiv(S, cfg_kv["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, km, dk, dv, *common, **kw, **cfg_kv
    )
    _bwd_dq_kernel[(triton.cdiv(T, cfg_q["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, km, dq, *common, **kw, **cfg_q
    )
    return dq, dk, dv


def _num_splits(bh: int, S: int, block_n: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = max(1, (2 * sms + bh - 1) // bh)
    else:
        want = 4
    return max(1, min(want, triton.cdiv(S, 4 * block_n)))


def _decode_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    q, k, v = _prep(q), _prep(k), _prep(v)
    B, H, T, D = q.shape
    S = k.shape[2]
    acc_tl, acc_torch, prec = _acc_dtype(q.dtype)
    km, stride_km, has_km = _key_mask_arg(key_mask, q)
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
        stride_km,
        H,
        T,
        S,
        _LOG2E / math.sqrt(D),
        chunk,
        n_splits,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HEAD_DIM=D,
        CAUSAL=causal,
        HAS_KM=has_km,
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


# --------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile) and autograd
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("gptmed::flash_attn_fwd", mutates_args=())
def _flash_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, key_mask, causal)


@_flash_fwd_op.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty((B, H, T, D)), q.new_empty((B, H, T), dtype=lse_dtype)


@torch.library.custom_op("gptmed::flash_attn_bwd", mutates_args=())
def _flash_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(do, q, k, v, o, lse, key_mask, causal)


@_flash_bwd_op.register_fake
def _(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_mask, causal = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, key_mask)
    ctx.causal = causal


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, key_mask = ctx.saved_tensors
    dq, dk, dv = _flash_bwd_op(do, q, k, v, o, lse, key_mask, ctx.causal)
    return dq, dk, dv, None, None


_flash_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("gptmed::flash_attn_decode", mutates_args=())
def _flash_decode_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    return _decode_impl(q, k, v, key_mask, causal)


@_flash_decode_op.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    return q.new_empty(q.shape)


class _FlashAttention(torch.autograd.Function):
    """The eager path: the same kernels as the ops above, with none of their dispatch cost."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, causal):
        o, lse = _fwd_impl(q, k, v, key_mask, causal)
        ctx.save_for_backward(q, k, v, o, lse, key_mask)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        if torch.is_grad_enabled():  # create_graph=True: second-order terms would be silently lost
            raise RuntimeError(
                "the fused attention kernel has no double backward (create_graph=True); "
                "use GPTMED_ATTENTION=sdpa (or math) for higher-order gradients"
            )
        q, k, v, o, lse, key_mask = ctx.saved_tensors
        dq, dk, dv = _bwd_impl(do, q, k, v, o, lse, key_mask, ctx.causal)
        return dq, dk, dv, None, None


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
) -> torch.Tensor:
    """Fused attention. q: (B, nh, T, hs); k, v: (B, nh, S, hs), S >= T; key_mask: (B, S) bool or None.

    Returns (B, nh, T, hs). Differentiable in q, k, v. Without grad, a few queries against a long cache
    (T <= 16, S >= 256) take the split-K decode kernel.
    """
    need_grad = needs_grad(q, k, v)
    T, S = q.shape[2], k.shape[2]
    decode = not need_grad and T <= DECODE_MAX_T and S >= DECODE_MIN_S
    if torch.compiler.is_compiling():  # opaque ops for the compiler
        return (
            _flash_decode_op(q, k, v, key_mask, causal)
            if decode
            else _flash_fwd_op(q, k, v, key_mask, causal)[0]
        )
    # eager: straight to the kernels. The torch.library ops cost ~370 us of host time per forward +
    # backward on an H100 box (dispatch, autograd wrapping, a second op for the backward), more than
    # the kernels themselves at training shapes (fwd + bwd 0.21 ms at 32 x 8 x 512 x 64)
    if decode:
        return _decode_impl(q, k, v, key_mask, causal)
    if need_grad:
        return _FlashAttention.apply(q, k, v, key_mask, causal)
    return _fwd_impl(q, k, v, key_mask, causal)[0]


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The split-K decode kernel directly (no autograd), whatever the shapes. For tests and benchmarks."""
    if torch.compiler.is_compiling():
        return _flash_decode_op(q, k, v, key_mask, causal)
    return _decode_impl(q, k, v, key_mask, causal)
