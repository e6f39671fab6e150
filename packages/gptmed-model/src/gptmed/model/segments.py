"""Packed rows as per-token segment limits, made on the tokens' device.

A packed row holds several segments (Q&A pairs): contiguous runs of one segment id, each attending
only to its own earlier tokens; a negative id marks padding, which attends to nothing. On CUDA and
under ``torch.compile`` the layout must stay *data*: no host sync to read it, no shape that depends
on it. :func:`segment_bounds` turns the ids into two (B, T) int32 tensors with a few static-shape
ops, once per forward, and every layer reuses them::

    lo[b, i]  first key query i may see (the start of its run); T for padding
    hi[b, j]  one past the last query that sees key j (the end of its run); 0 for padding

so query ``i`` sees key ``j`` iff ``lo[i] <= j <= i``. The fused Triton kernel reads them directly
(:mod:`gptmed.model.kernels.flash_common`); the other backends get a mask from them:
:func:`masked_segment_attention` builds a dense ``(B, 1, T, T)`` one for rows of at most
``window`` tokens and otherwise attends block-locally (:func:`blocked_segment_attention`), so a
flat row of N tokens never costs an ``N x N`` mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "AttendFn",
    "SegmentBounds",
    "blocked_segment_attention",
    "masked_segment_attention",
    "segment_bounds",
]

AttendFn = Callable[..., torch.Tensor]
"""An attention backend: ``fn(q, k, v, *, causal, mask) -> out`` (gptmed.model.attention's signature)."""


@dataclass(eq=False)
class SegmentBounds:
    """Per-token segment limits of packed rows (B, T) (see the module docstring).

    window: the longest segment the block-local mask path must cover (the model's ``max_seq_len``:
    positions restart per segment and stay below it); rows up to ``window`` tokens get a dense mask.
    """

    lo: torch.Tensor  # (B, T) int32
    hi: torch.Tensor  # (B, T) int32
    window: int
    _keep: torch.Tensor | None = field(default=None, init=False, repr=False)

    def attended(self) -> torch.Tensor:
        """(B, T) bool: True outside padding."""
        return self.lo < self.lo.size(1)

    def keep_mask(self) -> torch.Tensor:
        """(B, 1, T, T) bool, True where query i may see key j; built once, shared by the layers."""
        if self._keep is None:
            t = self.lo.size(1)
            pos = torch.arange(t, device=self.lo.device, dtype=torch.int32)
            keep = (pos[None, None, :] >= self.lo[:, :, None]) & (pos[None, None, :] <= pos[None, :, None])
            self._keep = keep.unsqueeze(1)
        return self._keep


def segment_bounds(segment_ids: torch.Tensor, window: int) -> SegmentBounds:
    """:class:`SegmentBounds` of ``segment_ids`` (B, T) int (any integer dtype), on its device.

    A run starts at each row start and at each change of id (an id that comes back later is a new
    run); negative ids are padding. Static-shape ops only: no host sync, traceable."""
    ids = segment_ids
    b, t = ids.shape
    idx = torch.arange(t, device=ids.device, dtype=torch.int32).expand(b, t)
    change = ids[:, 1:] != ids[:, :-1]  # (B, T - 1)
    edge = torch.ones(b, 1, dtype=torch.bool, device=ids.device)
    starts_here = torch.cat((edge, change), dim=1)  # (B, T)
    ends_here = torch.cat((change, edge), dim=1)
    start = torch.cummax(torch.where(starts_here, idx, 0), dim=1).values
    end = torch.cummin(torch.where(ends_here, idx + 1, t).flip(1), dim=1).values.flip(1)
    pad = ids < 0
    lo = torch.where(pad, t, start).to(torch.int32).contiguous()
    hi = torch.where(pad, 0, end).to(torch.int32).contiguous()
    return SegmentBounds(lo, hi, window)


def blocked_segment_attention(
    attend: AttendFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: SegmentBounds
) -> torch.Tensor:
    """Segment attention with a block-local mask: q, k, v (B, nh, T, hs) -> (B, nh, T, hs).

    The row is cut into blocks of W = ``bounds.window`` queries; block c attends to the keys of
    blocks c - 1 and c (2W keys), which hold every key of its segments as long as no segment is
    longer than W + 1 tokens. Work and mask memory are 2 N W instead of N^2."""
    B, H, T, D = q.shape
    W = bounds.window
    C = -(-T // W)
    pad = C * W - T
    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, C, W, D).transpose(1, 2).reshape(B * C, H, W, D)

    def key_blocks(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B * C, H, 2W, D)
        blocks = F.pad(x, (0, 0, W, pad)).unfold(2, 2 * W, W)  # (B, H, C, D, 2W), a leading empty block
        return blocks.permute(0, 2, 1, 4, 3).reshape(B * C, H, 2 * W, D)

    device = q.device
    qpos = torch.arange(C * W, device=device, dtype=torch.int32).view(C, W)
    kpos = (torch.arange(C, device=device, dtype=torch.int32)[:, None] - 1) * W + torch.arange(
        2 * W, device=device, dtype=torch.int32
    )  # (C, 2W): key positions of each block's window (negative: the empty block)
    lo = F.pad(bounds.lo, (0, pad), value=C * W).view(B, C, W, 1)
    keep = (kpos[None, :, None, :] >= lo) & (
        kpos[None, :, None, :] <= qpos[None, :, :, None]
    )  # (B, C, W, 2W)
    out = attend(qb, key_blocks(k), key_blocks(v), causal=False, mask=keep.view(B * C, 1, W, 2 * W))
    return out.view(B, C, H, W, D).transpose(1, 2).reshape(B, H, C * W, D)[:, :, :T]


def masked_segment_attention(
    attend: AttendFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: SegmentBounds
) -> torch.Tensor:
    """Segment attention through a mask-taking backend: q, k, v (B, nh, T, hs) -> (B, nh, T, hs),
    exactly 0 at padding (which then passes no gradient). Dense mask up to ``bounds.window`` tokens,
    block-local beyond."""
    if q.size(2) <= bounds.window:
        out = attend(q, k, v, causal=False, mask=bounds.keep_mask())
    else:
        out = blocked_segment_attention(attend, q, k, v, bounds)
    return torch.where(bounds.attended()[:, None, :, None], out, 0.0)
