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
    forward and backward, plus a split-K decode path for short queries against a long KV cache.
    Chosen by default when CUDA is available and ``triton`` imports. Inputs it does not cover
    (CPU tensors, head dims other than 16/32/64/128, masks other than key padding), float32 on
    CUDA (the kernel runs fp32 exactly, without tensor cores) and decode steps (at most 16 queries,
    no grad: one call is bound by host time, where sdpa's single kernel launch wins) go to ``sdpa``; call
    :func:`gptmed.model.kernels.triton_attention.flash_attention` directly to force it.
``sdpa``
    :func:`torch.nn.functional.scaled_dot_product_attention`, the default on CPU.
``math``
    the plain reference (matmul, masked_fill, softmax, matmul): no data-dependent control flow, no
    in-place ops, so it traces and exports (``torch.onnx.export`` runs the model under
    ``use_backend("math")``).

Packed training rows (``segment_ids``: several Q&A pairs per row, each attending only to itself)
go through :func:`runs_attention` when that is cheaper than a ``(B, 1, T, T)`` mask: each run of
equal segment id is its own short causal sequence, so the work is ``sum(L_i^2)`` instead of
``B * T^2`` (CPU flash attention cannot skip masked blocks at T <= 512), and padding runs cost
nothing. :func:`segment_runs` finds the runs; :func:`plan_segments` decides.

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

__all__ = [
    "BACKENDS",
    "SegmentRuns",
    "attention",
    "backend_reason",
    "causal_keep_mask",
    "math_attention",
    "plan_segments",
    "runs_attention",
    "sdpa_attention",
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


def _decide() -> tuple[str, str]:
    env = os.environ.get("GPTMED_ATTENTION", "").strip().lower()
    if env:
        return _check_name(env), "forced by GPTMED_ATTENTION"
    if not torch.cuda.is_available():
        return "sdpa", "no CUDA device"
    if not triton_available():
        return "sdpa", "CUDA is available but triton is not importable (pip install 'gptmed-model[triton]')"
    return "fused", f"CUDA device ({torch.cuda.get_device_name()}) and triton available"


def select_backend() -> str:
    """The backend in force: the innermost :func:`use_backend`, else the choice made once."""
    global _selected, _reason
    if _override:
        return _override[-1]
    if _selected is None:
        _selected, _reason = _decide()
        _log.info("attention backend: %s (%s)", _selected, _reason)
    return _selected


def backend_reason() -> str:
    """Why :func:`select_backend` chose what it chose (after the first call)."""
    select_backend()
    return _override[-1] + " (use_backend override)" if _override else f"{_selected} ({_reason})"


def set_backend(name: str | None) -> None:
    """Set the process-wide backend (``None``: decide automatically again on next use)."""
    global _selected, _reason
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
    if reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        _log.info("fused attention falls back to sdpa: %s", reason)


def _fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask: torch.Tensor | None
) -> torch.Tensor:
    from gptmed.model.kernels import triton_attention as ta

    key_mask, why = ta.as_key_mask(mask, q, k)
    if why is None:
        why = ta.unsupported_reason(q, k, v)
    if why is None and q.is_cuda and q.dtype == torch.float32:
        why = "float32 on CUDA (our kernel keeps fp32 exact, without tensor cores; sdpa is faster there)"
    if why is None and q.is_cuda and q.size(2) <= ta.DECODE_MAX_T and not ta.needs_grad(q, k, v):
        why = (
            "a decode step (few queries, no grad): sdpa is faster there (the split-K kernel is bound by"
            " host time: 0.06-0.24x sdpa on an H200, bench/attention.py)"
        )
    if why is not None:
        _fallback(why)
        return sdpa_attention(q, k, v, causal=causal, mask=mask)
    return ta.flash_attention(q, k, v, causal=causal, key_mask=key_mask)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention on the selected backend.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs), S >= T; mask: bool, broadcastable to (B, nh, T, S).
    Returns (B, nh, T, hs). See the module docstring for the causal alignment and the mask meaning.
    """
    backend = select_backend()
    if backend == "sdpa":
        return sdpa_attention(q, k, v, causal=causal, mask=mask)
    if backend == "math":
        return math_attention(q, k, v, causal=causal, mask=mask)
    return _fused(q, k, v, causal, mask)


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
