# mypy: disable-error-code="untyped-decorator,no-untyped-def,no-any-return,no-untyped-call"
"""The FlashAttention forward kernel (layouts: :mod:`.flash_common`).

One program per (query block of ``BLOCK_M`` rows, batch*head). It streams key/value blocks of
``BLOCK_N`` through SRAM keeping the online-softmax state (running max ``m``, running sum ``l``,
unnormalised output ``acc``) in registers, in base 2 (``exp2``, the scale folded into
``qk_scale = sm_scale * log2(e)``), and writes the output and the log-sum-exp ``lse = m + log2(l)``
per row for the backward.

The key range of a query block is cut into at most three loops: blocks that need a per-element mask
(causal diagonal, sequence tail, key padding, segment starts) and, between them, blocks every query of
the block sees whole, which run without any mask.

* **Causal** is bottom-right aligned (query ``t`` is key position ``S - T + t``), so one kernel serves
  training (``T == S``) and chunked prefill on top of a KV cache (``T < S``).
* **Segments** (packed rows, ``T == S``): query ``i`` sees keys ``lo[i] <= j <= i``. The block's keys
  start at the smallest ``lo`` of its queries, so key blocks wholly before the block's segments are
  never visited: the work is about ``sum(L_i^2) / 2`` plus one block row per segment boundary. A
  query with nothing to see (padding) gets output 0.
* Masked scores get a large *finite* negative value, not ``-inf``: a block whose scores are all masked
  cannot produce ``NaN``, and a row that sees no key at all ends finite.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from gptmed.model.kernels.flash_common import LOG2E, NEG, Tiles, acc_dtype, prep, tiles_config

__all__ = ["fwd_impl", "fwd_tiles"]


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    K_bh,
    V_bh,
    KM_b,
    lo_q,
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
    HAS_SEG: tl.constexpr,
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
            if HAS_SEG:
                keep = keep & (offs_n[None, :] >= lo_q[:, None])
            qk = tl.where(keep, qk, NEG)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC, out_dtype=ACC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def query_block_ranges(
    SEG_LO_b,
    offs_m,
    qvalid,
    start_m,
    T,
    S,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KM: tl.constexpr,
    HAS_SEG: tl.constexpr,
):
    """Key ranges of one query block: masked [n_lo, full_lo), whole [full_lo, full_hi), masked
    [full_hi, n_hi); and each query's first visible key under segments (else a dummy). Shared by the
    forward and the dQ kernel."""
    if HAS_SEG:  # T == S, causal; padding queries have lo = T
        lo_q = tl.load(SEG_LO_b + offs_m, mask=qvalid, other=T)
        n_hi = tl.minimum(T, start_m + BLOCK_M)
        first = tl.min(lo_q, 0)
        n_lo = (first // BLOCK_N) * BLOCK_N
        n_hi = tl.where(first < n_hi, n_hi, n_lo)  # a block of padding only: nothing to visit
        # whole blocks: at or after every query's segment start, at or before the block's first query
        full_lo = tl.minimum(tl.maximum(tl.cdiv(tl.max(lo_q, 0), BLOCK_N) * BLOCK_N, n_lo), n_hi)
        full_hi = tl.minimum(tl.maximum(full_lo, ((start_m + 1) // BLOCK_N) * BLOCK_N), n_hi)
    else:
        lo_q = offs_m
        n_lo = 0
        full_lo = 0
        if CAUSAL:
            n_hi = tl.minimum(S, start_m + BLOCK_M + S - T)
            full_hi = tl.minimum(S, start_m + S - T + 1)  # keys every row of the block may see
        else:
            n_hi = S
            full_hi = S
        full_hi = (full_hi // BLOCK_N) * BLOCK_N
        if HAS_KM:
            full_hi = 0
    return lo_q, n_lo, full_lo, full_hi, n_hi


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    KM,
    SEG_LO,
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
    K_bh = K + b * stride_kb + h * stride_kh
    V_bh = V + b * stride_vb + h * stride_vh
    KM_b = KM + b * stride_kmb
    offs_m_pos = offs_m + (S - T)  # key position of each query (bottom-right causal)
    m_i = tl.full([BLOCK_M], NEG, dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=ACC)
    lo_q, n_lo, full_lo, full_hi, n_hi = query_block_ranges(
        SEG_LO + b * T, offs_m, qvalid, start_m, T, S, BLOCK_M, BLOCK_N, CAUSAL, HAS_KM, HAS_SEG
    )
    if HAS_SEG:  # key blocks that start inside some query's segment
        acc, l_i, m_i = _fwd_inner(
            acc,
            l_i,
            m_i,
            q,
            K_bh,
            V_bh,
            KM_b,
            lo_q,
            stride_kn,
            stride_vn,
            n_lo,
            full_lo,
            S,
            offs_m_pos,
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
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K_bh,
        V_bh,
        KM_b,
        lo_q,
        stride_kn,
        stride_vn,
        full_lo,
        full_hi,
        S,
        offs_m_pos,
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
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K_bh,
        V_bh,
        KM_b,
        lo_q,
        stride_kn,
        stride_vn,
        full_hi,
        n_hi,
        S,
        offs_m_pos,
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
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if HAS_SEG:  # padding sees nothing: output 0 (its masked blocks left a finite mean in acc)
        out = tl.where((lo_q <= offs_m)[:, None], out, 0.0)
    # O is (B, T, H, D) in memory
    tl.store(
        O + ((b * T + offs_m[:, None]) * H + h) * HEAD_DIM + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=qvalid[:, None],
    )
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_safe), mask=qvalid)


# --------------------------------------------------------------------------------------------------
# tiles and launch
# --------------------------------------------------------------------------------------------------
INTERPRETER_TILES: Tiles = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


def fwd_tiles(head_dim: int, device: torch.device, dtype: torch.dtype) -> Tiles:
    """Forward tiles. bf16/fp16 on an H100 (tile sweep, docs/bench/model.md): 64 x 64, 4 warps, 3 stages
    was fastest at head dim 64 and 128 (T 512-1024; 0.21 vs 0.29 ms for 128 x 64 / 8 warps at D=128)."""
    if device.type != "cuda":  # interpreter: small blocks keep tests fast and cover multi-block paths
        return dict(INTERPRETER_TILES)
    if dtype == torch.float32:  # twice the bytes per tile: smaller tiles to fit shared memory
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


# Segment kernels (bf16/fp16 on CUDA) pick their tiles by measurement, once per shape: the work per
# block depends on the segment layout, and the presets' small shapes (H 4-8, D 64) may prefer other
# tiles than the H100 sweep's (H 16-32). The first candidate is the sweep's choice; the others trade
# block size (less work wasted where a block straddles a segment boundary) against parallelism.
# The second has the largest tiles (tests/test_triton_compile.py checks its shared memory).
SEG_FWD_CANDIDATES: tuple[Tiles, ...] = (
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3},
)
TUNE_KEY = ["T", "H", "HEAD_DIM", "CAUSAL", "HAS_KM", "HAS_SEG"]  # + the tensors' dtypes (triton adds them)
_fwd_tuned = triton.autotune([tiles_config(t) for t in SEG_FWD_CANDIDATES], key=TUNE_KEY)(_fwd_kernel)


def autotuned(q: torch.Tensor, segments: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """Segment calls on CUDA in fp16/bf16 choose their tiles by measurement (once per shape)."""
    return segments is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    segments: tuple[torch.Tensor, torch.Tensor] | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(o (B, H, T, D) view of (B, T, H, D) memory, lse (B, H, T)) for q (B, H, T, D), k, v (B, H, S, D)."""
    q, k, v = prep(q), prep(k), prep(v)
    B, H, T, D = q.shape
    S = k.shape[2]
    acc_tl, acc_torch, prec = acc_dtype(q.dtype)
    o = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, T), dtype=acc_torch, device=q.device)
    km = q if key_mask is None else key_mask  # an unused pointer when there is no mask
    seg_lo = q if segments is None else segments[0]
    args = [q, k, v, km, seg_lo, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3]]
    args.append(km.stride(0) if key_mask is not None else 0)
    flags = dict(
        HEAD_DIM=D,
        CAUSAL=causal,
        HAS_KM=key_mask is not None,
        HAS_SEG=segments is not None,
        PREC=prec,
        ACC=acc_tl,
    )
    scale = LOG2E / math.sqrt(D)
    if autotuned(q, segments):
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
        _fwd_tuned[grid](*args, H, T, S, scale, **flags)
    else:
        cfg = fwd_tiles(D, q.device, q.dtype)
        _fwd_kernel[(triton.cdiv(T, cfg["BLOCK_M"]), B * H)](*args, H, T, S, scale, **flags, **cfg)
    return o.transpose(1, 2), lse
