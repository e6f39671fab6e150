"""Attention: the ONE place that chooses the kernel, and decides once.

Every backend has the same signature, :func:`attention`::

    out = attention(q, k, v, causal=True, mask=None)
    # q: (B, nh, T, hs)   k, v: (B, nh, S, hs) with S >= T   ->   out: (B, nh, T, hs)

* ``causal`` is *bottom-right aligned*: query ``t`` sits at key position ``S - T + t`` (the layout of a
  KV cache: the ``T`` new queries are the last ``T`` keys). With ``S == T`` it is the usual causal mask.
* ``mask`` is an optional boolean tensor broadcastable to ``(B, nh, T, S)``; ``True`` = may attend.
  It is combined (AND) with the causal mask. The model passes key-padding masks ``(B, 1, 1, S)``.
* A query row that may attend to no key at all (a left-padding query) gets a finite but unspecified
  output on every backend (never NaN), so it cannot poison other positions.

Backends:

``fused``
    the project's own FlashAttention-style Triton kernel (:mod:`gptmed.model.kernels.triton_attention`),
    forward and backward, segment-aware (packed rows), plus a split-K decode path for short queries
    against a long KV cache. Chosen by default when CUDA is available and ``triton`` imports. Inputs
    it does not cover (CPU tensors, head dims other than 16/32/64/128, masks other than key padding)
    go to ``sdpa``. When the choice was automatic it also sends each call to whichever path measured
    faster there (``_speed_reason``: float32, decode steps, plain causal attention with few heads,
    short packed rows go to ``sdpa``); forced (``GPTMED_ATTENTION=fused``, :func:`set_backend`,
    :func:`use_backend`) it runs the kernel on every input it supports.
``sdpa``
    :func:`torch.nn.functional.scaled_dot_product_attention`, the default on CPU.
``math``
    the plain reference (matmul, masked_fill, softmax, matmul): no data-dependent control flow, no
    in-place ops, so it traces and exports (``torch.onnx.export`` runs the model under
    ``use_backend("math")``).

Packed training rows (``segment_ids``: several Q&A pairs per row, each attending only to itself)
take one of two forms. On the eager CPU path they go through :func:`runs_attention` when that is
cheaper than a ``(B, 1, T, T)`` mask: each run of equal segment id is its own short causal sequence,
so the work is ``sum(L_i^2)`` instead of ``B * T^2`` (CPU flash attention cannot skip masked blocks
at T <= 512), and padding runs cost nothing. :func:`segment_runs` finds the runs (one host sync);
:func:`plan_segments` decides. Everywhere else (CUDA, ``torch.compile``) :func:`segment_bounds`
turns the ids into per-token limits on the device (no host sync, no shape that depends on the
data) and ``attention(..., segments=bounds)`` runs the fused kernel's segment mode, or, on the
other backends, a mask: dense ``(B, 1, T, T)`` for rows up to ``bounds.window`` tokens, else
block-local (:func:`blocked_segment_attention`, never an ``N x N`` mask).

The automatic choice (:func:`select_backend`) is made on first use and logged once with its reason.
``GPTMED_ATTENTION=fused|sdpa|math`` forces it; :func:`use_backend` / :func:`set_backend` override it
(tests, exporters).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from gptmed.model.segments import (
    SegmentBounds,
    blocked_segment_attention,
    masked_segment_attention,
    segment_bounds,
)

__all__ = [
    "BACKENDS",
    "SegmentBounds",
    "SegmentRuns",
    "attention",
    "backend_reason",
    "blocked_segment_attention",
    "causal_keep_mask",
    "math_attention",
    "plan_segments",
    "runs_attention",
    "sdpa_attention",
    "segment_bounds",
    "segment_runs",
    "select_backend",
    "set_backend",
    "triton_available",
    "use_backend",
]

Backend = Literal["fused", "sdpa", "math"]
BACKENDS: tuple[str, ...] = ("fused", "sdpa", "math")

_log = logging.getLogger(__name__)

_selected: str | None = None  # the automatic (or set_backend) choice, made once
_reason: str = ""
_automatic = False  # _selected was decided by _decide() without GPTMED_ATTENTION
_override: list[str] = []  # use_backend() stack; the innermost wins
_logged_fallbacks: set[str] = set()


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {list(BACKENDS)}")
    return name


def triton_available() -> bool:
    """True when ``import triton`` works (the fused backend's only extra requirement)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _decide() -> tuple[str, str, bool]:
    """(backend, why, automatic)."""
    env = os.environ.get("GPTMED_ATTENTION", "").strip().lower()
    if env:
        return _check_name(env), "forced by GPTMED_ATTENTION", False
    if not torch.cuda.is_available():
        return "sdpa", "no CUDA device", True
    if not triton_available():
        why = "CUDA is available but triton is not importable (pip install 'gptmed-model[triton]')"
        return "sdpa", why, True
    why = f"CUDA device ({torch.cuda.get_device_name()}) and triton available; each call goes to the faster path"
    return "fused", why, True


def select_backend() -> str:
    """The backend in force: the innermost :func:`use_backend`, else the choice made once."""
    global _selected, _reason, _automatic
    if _override:
        return _override[-1]
    if _selected is None:
        _selected, _reason, _automatic = _decide()
        _log.info("attention backend: %s (%s)", _selected, _reason)
    return _selected


def _routes() -> bool:
    """Whether the backend in force was chosen automatically (then ``fused`` routes per call)."""
    return _automatic and not _override


def backend_reason() -> str:
    """Why :func:`select_backend` chose what it chose (after the first call)."""
    select_backend()
    return _override[-1] + " (use_backend override)" if _override else f"{_selected} ({_reason})"


def set_backend(name: str | None) -> None:
    """Set the process-wide backend (``None``: decide automatically again on next use)."""
    global _selected, _reason, _automatic
    _automatic = False
    if name is None:
        _selected, _reason = None, ""
        return
    _selected, _reason = _check_name(name), "set_backend()"
    _log.info("attention backend: %s (%s)", _selected, _reason)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block with another backend: ``with use_backend("math"): torch.onnx.export(...)``."""
    _override.append(_check_name(name))
    try:
        yield
    finally:
        _override.pop()


def causal_keep_mask(t: int, s: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool, True where query ``i`` (key position ``s - t + i``) may see key ``j``."""
    q_pos = torch.arange(t, device=device) + (s - t)  # (T,)
    k_pos = torch.arange(s, device=device)  # (S,)
    return k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)  # (T, S)


def _keep(q: torch.Tensor, k: torch.Tensor, causal: bool, mask: torch.Tensor | None) -> torch.Tensor | None:
    t, s = q.size(-2), k.size(-2)
    keep = causal_keep_mask(t, s, q.device) if causal else None
    if mask is not None:
        m = mask if mask.dtype == torch.bool else mask != 0
        keep = m if keep is None else keep & m
    return keep


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference: softmax(q k^T / sqrt(hs) masked) v, in the input dtype."""
    scale = 1.0 / (q.size(-1) ** 0.5)
    att = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, nh, T, S)
    keep = _keep(q, k, causal, mask)
    if keep is not None:
        # a finite fill (not -inf): fully masked rows become uniform instead of NaN
        att = att.masked_fill(keep.logical_not(), torch.finfo(att.dtype).min)
    att = torch.softmax(att, dim=-1)
    return torch.matmul(att, v)  # (B, nh, T, hs)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`torch.nn.functional.scaled_dot_product_attention` with our mask conventions."""
    t, s = q.size(-2), k.size(-2)
    if mask is None:
        if not causal or t == 1:  # one new query sees the whole cache
            return F.scaled_dot_product_attention(q, k, v)
        if t == s:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    keep = _keep(q, k, causal, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    # rows with no visible key: some kernels return NaN there; make them finite (zeros)
    if mask is not None:
        out = torch.nan_to_num(out, nan=0.0)
    return out


def _fallback(reason: str) -> None:
    """Log each reason once. Not while compiling: a logger call breaks the graph (at every attention
    call of a compiled model); eager calls log it."""
    if torch.compiler.is_compiling():
        return
    if reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        _log.info("fused attention falls back to sdpa: %s", reason)


# Where the automatic fused choice sends calls the kernel supports, from the H200 figures of issue 17
# (torch 2.11, triton 3.6, bench/attention.py, forward + backward, bf16, 8 heads of 64, B * T = 16k):
#
#   shape       sdpa causal   sdpa + dense segment mask   our kernel, causal (before segments)
#   B32 T512      0.25 ms            0.38 ms                     0.66 ms
#   B8  T2048     0.40 ms            1.02 ms                     0.72 ms
#   B4  T4096     0.68 ms            2.00 ms                     0.82 ms
#
# and 1.28-1.59x sdpa at 32 heads (plain causal, T 512-8192). The segment kernel was written without
# a GPU at hand: these limits are the figures above, to be moved by the next measurement
# (bench/gpu_check.sh prints the packed-pair table).
SDPA_MAX_HEADS = 8
"""Plain causal self-attention with at most this many heads goes to sdpa (faster at every H=8 shape)."""

SEGMENT_MASK_MAX_T = 512
"""Packed rows of at most this many tokens go to sdpa with a dense mask (0.38 vs 0.66 ms at B32 T512);
longer rows (and flat rows of a whole batch) to the kernel's segment mode (never a dense mask there)."""


def _speed_reason(
    q: torch.Tensor,
    k: torch.Tensor,
    causal: bool,
    mask: torch.Tensor | None,
    segmented: bool,
    decode_max_t: int,
) -> str | None:
    """Why the automatic fused choice sends a call the kernel supports to sdpa (None: the kernel)."""
    t, s = q.size(2), k.size(2)
    if q.is_cuda and q.dtype == torch.float32:
        return "float32 on CUDA (our kernel keeps fp32 exact, without tensor cores; sdpa is faster there)"
    if segmented:
        if t <= SEGMENT_MASK_MAX_T:
            return (
                f"packed rows of <= {SEGMENT_MASK_MAX_T} tokens: sdpa with a dense mask (H200, issue 17:"
                " 0.38 vs 0.66 ms at B32 H8 T512)"
            )
        return None
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    if q.is_cuda and t <= decode_max_t and not grad:
        return (
            "a decode step (few queries, no grad): sdpa is faster there (the split-K kernel is bound by"
            " host time: 0.06-0.24x sdpa on an H200, bench/attention.py)"
        )
    if causal and mask is None and t == s and q.size(1) <= SDPA_MAX_HEADS:
        return (
            f"causal attention with <= {SDPA_MAX_HEADS} heads: sdpa's flash kernel (H200, issue 17: 0.25-0.68 vs"
            " 0.66-0.82 ms at 8 heads)"
        )
    return None


def _fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    mask: torch.Tensor | None,
    segments: SegmentBounds | None,
) -> torch.Tensor:
    from gptmed.model.kernels import triton_attention as ta

    key_mask, why = ta.as_key_mask(mask, q, k)
    why = why or ta.unsupported_reason(q, k, v)
    if why is None and segments is not None:
        why = ta.segments_reason(q, k, (segments.lo, segments.hi))
    if why is None and _routes():
        why = _speed_reason(q, k, causal, mask, segments is not None, ta.DECODE_MAX_T)
    if why is not None:
        _fallback(why)
        if segments is not None:
            return masked_segment_attention(sdpa_attention, q, k, v, segments)
        return sdpa_attention(q, k, v, causal=causal, mask=mask)
    if segments is not None:
        return ta.flash_attention(q, k, v, causal=True, segments=(segments.lo, segments.hi))
    return ta.flash_attention(q, k, v, causal=causal, key_mask=key_mask)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    mask: torch.Tensor | None = None,
    segments: SegmentBounds | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention on the selected backend.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs), S >= T; mask: bool, broadcastable to (B, nh, T, S).
    segments: packed rows (:func:`segment_bounds`), for self-attention (S == T) without a mask: each
    query sees the earlier keys of its own segment, padding sees nothing and its output is 0.
    Returns (B, nh, T, hs). See the module docstring for the causal alignment and the mask meaning.
    """
    backend = select_backend()
    if segments is not None and (mask is not None or not causal or k.size(2) != q.size(2)):
        raise ValueError("segments are for causal self-attention (S == T) without a mask")
    if backend == "fused":
        return _fused(q, k, v, causal, mask, segments)
    fn = sdpa_attention if backend == "sdpa" else math_attention
    if segments is not None:
        return masked_segment_attention(fn, q, k, v, segments)
    return fn(q, k, v, causal=causal, mask=mask)


# -- packed rows: one causal sequence per run of equal segment id ("varlen") ---------------------------
RUN_OVERHEAD = 1_600_000
"""The fixed cost of one run (its slicing and an attention call, forward and backward), in attention
score elements times the model width (nh * hs): measured 185 us per extra run on 2 cores, the time
of about 6,200 score elements at width 256 (30 ns each with 4 heads of 64). Many tiny runs are
cheaper as one masked call."""


MASK_OVERHEAD = 1.25
"""A masked call's cost relative to plain causal attention of the same shape (the mask is built,
converted and read; measured 31 vs 35-51 ms for (4, 4, 511, 64) forward + backward on 2 cores)."""

PAD_TOKEN_COST = 7
"""What one padding token costs the rest of a block (projections and MLP, ~72 C^2 FLOPs forward and
backward) in attention score elements (~10 C FLOPs each) per unit of width C. The per-run path drops
padding from the whole block stack; the mask and causal paths compute it."""


@dataclass(frozen=True)
class SegmentRuns:
    """Packed rows (B, T) cut into runs of equal segment id, in row-major token order.

    lengths: run lengths (sum B * T); a run never crosses a row boundary.
    skip: per run, True for padding (a negative segment id): nothing attends to it and its output is 0.
    causal_exact: no row holds two attended runs and every row starts with its attended run, so
    plain causal attention over whole rows gives the same outputs at every attended position.
    """

    lengths: tuple[int, ...]
    skip: tuple[bool, ...]
    causal_exact: bool

    def work(self, width: int) -> float:
        """Attention cost of the runs in score elements, :data:`RUN_OVERHEAD` included."""
        per_run = RUN_OVERHEAD / width
        return sum(n * n + per_run for n, skip in zip(self.lengths, self.skip, strict=True) if not skip)

    def padding(self) -> int:
        """Tokens in padding runs."""
        return sum(n for n, skip in zip(self.lengths, self.skip, strict=True) if skip)

    def token_index(self, device: torch.device) -> torch.Tensor:
        """(N,) int64: the flat (row-major) positions of the tokens outside padding runs."""
        lengths = torch.tensor(self.lengths)
        attended = torch.logical_not(torch.tensor(self.skip, dtype=torch.bool))
        return torch.repeat_interleave(attended, lengths).nonzero().flatten().to(device)

    def attended(self) -> SegmentRuns:
        """The runs without the padding ones (the layout once padding tokens are dropped)."""
        kept = tuple(n for n, skip in zip(self.lengths, self.skip, strict=True) if not skip)
        return SegmentRuns(kept, (False,) * len(kept), causal_exact=len(kept) == 1)


def segment_runs(segment_ids: torch.Tensor) -> SegmentRuns:
    """The runs of ``segment_ids`` (B, T) int: a new run starts at each row start and at each change
    of id. Ids are expected to be contiguous per segment (as cumulative BOS counts are); negative
    ids mark padding. One host synchronisation (the run lengths are Python ints)."""
    ids = segment_ids.detach().to("cpu")
    b, t = ids.shape
    starts_here = torch.ones(b, t, dtype=torch.bool)
    starts_here[:, 1:] = ids[:, 1:] != ids[:, :-1]
    starts = starts_here.flatten().nonzero().flatten()
    ends = torch.cat((starts[1:], torch.tensor([b * t])))
    skip = ids.flatten()[starts] < 0
    attended_per_row = (starts_here & (ids >= 0)).sum(dim=1)
    return SegmentRuns(
        lengths=tuple((ends - starts).tolist()),
        skip=tuple(skip.tolist()),
        causal_exact=bool((attended_per_row == 1).all() and (ids[:, 0] >= 0).all()),
    )


def plan_segments(
    runs: SegmentRuns, batch: int, seq_len: int, width: int
) -> Literal["runs", "causal", "mask"]:
    """The cheapest exact way to attend within segments of a (batch, seq_len) input to attention of
    ``width`` = nh * hs: per run (padding dropped), plain causal attention over whole rows (when
    :attr:`SegmentRuns.causal_exact`), or one (B, 1, T, T) mask."""
    other: Literal["causal", "mask"] = "causal" if runs.causal_exact else "mask"
    if runs.padding() >= batch * seq_len:  # nothing to attend: no packed sequence to build
        return other
    whole = batch * seq_len * seq_len * (1.0 if other == "causal" else MASK_OVERHEAD)
    return "runs" if runs.work(width) < whole + runs.padding() * PAD_TOKEN_COST * width else other


def runs_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, runs: SegmentRuns) -> torch.Tensor:
    """Causal attention inside each run. q, k, v: (N, nh, hs), N = B * T tokens in row-major order
    (views are fine). Returns (N, nh, hs), zeros at padding runs.

    The splits are views and the one ``cat`` takes the place of the usual (B, nh, T, hs) -> (B, T, C)
    copy; autograd's split backward is one ``cat`` of the grads.
    """
    outs = []
    sizes = list(runs.lengths)
    pieces = zip(torch.split(q, sizes), torch.split(k, sizes), torch.split(v, sizes), runs.skip, strict=True)
    for qi, ki, vi, skip in pieces:
        if skip:
            outs.append(qi.new_zeros(qi.shape))
            continue
        y = attention(  # (1, nh, L, hs) strided views of the packed projections
            qi.transpose(0, 1).unsqueeze(0),
            ki.transpose(0, 1).unsqueeze(0),
            vi.transpose(0, 1).unsqueeze(0),
            causal=True,
        )
        outs.append(y.squeeze(0).transpose(0, 1))
    return torch.cat(outs)
