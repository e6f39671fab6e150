"""Cross-entropy of a tied output projection without materialising the (N, V) logits.

``linear_cross_entropy(h, w, targets)`` == ``F.cross_entropy(h @ w.T, targets, ignore_index=-100)``
(mean over non-ignored targets). Eagerly, it walks the rows in chunks and computes the gradients of
``h`` and ``w`` in the same pass (softmax - onehot is the logits' gradient), so the logits never exist
whole and are never re-read: less memory traffic than logits -> log_softmax -> nll and back. On
the CPU, rows whose target is ignored (padding; questions under answer-only loss) are dropped first,
so they cost no logits at all. Under torch.compile it uses the plain formula (the compiler fuses it itself).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from gptmed.model.ops import is_tracing

__all__ = ["IGNORE_INDEX", "linear_cross_entropy"]

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MiB in fp32): rows = this // V; few chunks = few kernels


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_rows: int, dtype: torch.dtype
    ) -> torch.Tensor:
        C = h.size(-1)
        h2 = h.reshape(-1, C).to(dtype)  # (N, C) in the matmul dtype (bf16 under autocast)
        t = targets.reshape(-1)  # (N,)
        N = h2.size(0)
        wc = w.to(dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = t != IGNORE_INDEX
        count = valid.sum()
        n_valid = count.clamp(min=1)
        rows = None  # the rows with a target, when some have none: only those cost logits
        # (on the CPU: it takes a host sync, free there; on a GPU it would stall the stream)
        n_ok = int(count) if h.device.type == "cpu" else N
        if 0 < n_ok < N:
            rows = valid.nonzero().squeeze(1)
            h2, t, valid = h2.index_select(0, rows), t.index_select(0, rows), valid.index_select(0, rows)
            N = h2.size(0)
        tgt_all = torch.where(valid, t, torch.zeros_like(t)).unsqueeze(1)  # (N, 1)
        grad_h = torch.empty_like(h2) if need_grad else None
        grad_w = None
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # softmax / loss precision
        loss_sum = torch.zeros((), dtype=acc, device=h.device)
        for s in range(0, N, chunk_rows):
            hc = h2[s : s + chunk_rows]  # (n, C)
            vc = valid[s : s + chunk_rows]
            tgt = tgt_all[s : s + chunk_rows]
            logits = torch.mm(hc, wc.t()).to(acc)  # (n, V); softmax math in fp32 (no-op for fp32)
            # softmax in place with few full passes: max, subtract, gather target, exp, sum
            mx = logits.amax(dim=1, keepdim=True)  # (n, 1)
            logits.sub_(mx)
            picked = logits.gather(1, tgt).squeeze(1)  # shifted target logit (n,)
            logits.exp_()
            sumexp = logits.sum(dim=1)  # (n,)
            loss_sum = loss_sum + ((sumexp.log() - picked) * vc).sum()
            if need_grad:
                assert grad_h is not None
                # d loss_sum / d logits = valid * (softmax - onehot): one scaling pass + a scatter
                probs = logits.mul_((vc.to(sumexp.dtype) / sumexp).unsqueeze(1))
                probs.scatter_add_(1, tgt, -vc.to(probs.dtype).unsqueeze(1))
                probs = probs.to(dtype)  # no-op in fp32
                torch.mm(probs, wc, out=grad_h[s : s + chunk_rows])  # (n, C)
                if grad_w is None:
                    grad_w = torch.mm(probs.t(), hc)  # (V, C)
                else:
                    grad_w.addmm_(probs.t(), hc)
        loss = loss_sum / n_valid
        if need_grad:
            assert grad_h is not None and grad_w is not None
            if rows is not None:  # rows without a target get no gradient
                grad_h = torch.zeros(h.numel() // C, C, dtype=grad_h.dtype, device=h.device).index_copy_(
                    0, rows, grad_h
                )
            ctx.save_for_backward(grad_h.view(h.shape), grad_w, n_valid)
        ctx.h_dtype, ctx.w_dtype = h.dtype, w.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w, n_valid = ctx.saved_tensors
        scale = grad_out / n_valid
        gh = (grad_h * scale.to(grad_h.dtype)).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * scale.to(grad_w.dtype)).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None


def linear_cross_entropy(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, *, chunk_rows: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of ``h @ w.T`` against ``targets`` (``-100`` ignored).

    h: (..., C) hidden states; w: (V, C) output weights; targets: (...) int64. Returns a float32
    scalar. Under autocast the matmuls run in the autocast dtype and the softmax in float32.
    """
    if is_tracing():
        logits = F.linear(h, w)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_ELEMENTS // w.size(0))
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    with torch.autocast(device, enabled=False):
        loss = _LinearCrossEntropy.apply(h, w, targets, int(chunk_rows), dtype)  # type: ignore[no-untyped-call]
    return cast(torch.Tensor, loss)
