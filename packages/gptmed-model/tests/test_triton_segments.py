"""The Triton kernel's segment mode (packed rows) against ``math`` with a dense mask.

Each layout mixes what the block ranges must get right: odd segment lengths, a length-1 segment, a
segment that spans several tiles, padding at a row end, a row of padding only, and a flat (1, N)
row of a whole batch. Under the interpreter (CPU CI) in float64 with 16 x 16 tiles (and unequal
tiles); on CUDA (`gpu`) the same layouts stretched 8x, in bf16/fp16 (relative error < 1e-2) and fp32.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICES, check_close
from gptmed.model.attention import math_attention, segment_bounds

triton = pytest.importorskip("triton")
from gptmed.model.kernels import flash_bwd, flash_fwd  # noqa: E402
from gptmed.model.kernels import triton_attention as ta  # noqa: E402
from test_triton_kernel import count_kernel_calls  # noqa: E402


def _row(*runs: tuple[int, int]) -> list[int]:
    return [seg for seg, n in runs for _ in range(n)]


LAYOUTS = {
    # (B, T) rows: pairs with padding; padding only; a 1-token segment then one spanning 3 tiles
    "rows": [
        _row((0, 5), (1, 23), (2, 11), (-1, 6)),
        _row((-1, 45)),
        _row((3, 1), (4, 44)),
    ],
    # a flat row of a whole batch (padding dropped, bucket padding at the end)
    "flat": [_row((0, 7), (1, 1), (2, 33), (3, 13), (4, 9), (-1, 7))],
}


def _stretch(ids: list[list[int]], scale: int) -> list[list[int]]:
    return [[s for s in row for _ in range(scale)] for row in ids]


def reference_keep(ids: list[list[int]]) -> torch.Tensor:
    """(B, 1, T, T) bool from the definition: key j <= query i, same run, query not padding."""
    B, T = len(ids), len(ids[0])
    keep = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b, row in enumerate(ids):
        start = 0
        for i, s in enumerate(row):
            if i and s != row[i - 1]:
                start = i
            if s >= 0:
                keep[b, 0, i, start : i + 1] = True
    return keep


def _run(ids: list[list[int]], device: str, dtype: torch.dtype, H: int = 2, D: int = 32) -> None:
    seg = torch.tensor(ids, device=device)
    B, T = seg.shape
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    bounds = segment_bounds(seg, window=T)
    out = ta.flash_attention(q, k, v, causal=True, segments=(bounds.lo, bounds.hi))
    do = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)

    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    qr, kr, vr = (t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v))
    keep = reference_keep(ids).to(device)
    attended = (seg >= 0)[:, None, :, None]
    ref = torch.where(attended, math_attention(qr, kr, vr, causal=True, mask=keep), 0.0)
    rdq, rdk, rdv = torch.autograd.grad(ref, (qr, kr, vr), do.to(ref_dtype))
    for name, got, want in (("out", out, ref), ("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv)):
        check_close(got, want, dtype, name)
    # padding attends to nothing and nothing attends to it: exact zeros
    pad = ~attended.expand_as(out)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert (t[pad] == 0).all(), f"{name} is not 0 at padding"


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_segments_match_math_with_a_dense_mask(layout, device, dtype) -> None:  # type: ignore[no-untyped-def]
    ids = LAYOUTS[layout] if device == "cpu" else _stretch(LAYOUTS[layout], 8)  # 64-wide tiles on a GPU
    _run(ids, device, dtype)


@pytest.mark.skipif(not ta.interpreting(), reason="tile shapes are forced in the interpreter only")
@pytest.mark.parametrize("tiles", ["kv-wide", "q-wide"])
def test_segment_block_ranges_with_unequal_tiles(tiles, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every tile shape the GPU candidates may pick (BLOCK_M != BLOCK_N, dK/dV and dQ tiles
    differing) keeps the masked / whole block split of segment rows exact."""
    narrow = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    wide = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    fwd, bwd = (wide, (narrow, wide)) if tiles == "kv-wide" else (narrow, (wide, narrow))
    monkeypatch.setattr(flash_fwd, "fwd_tiles", lambda *a: fwd)
    monkeypatch.setattr(flash_bwd, "bwd_tiles", lambda *a: bwd)
    _run(LAYOUTS["flat"], "cpu", torch.float64)


def test_segment_bounds_are_rejected_when_they_do_not_fit() -> None:
    q = torch.zeros(1, 2, 8, 16)
    lo = torch.zeros(1, 8, dtype=torch.int32)
    assert "int32" in (ta.segments_reason(q, q, (lo.long(), lo)) or "")
    assert "self-attention" in (ta.segments_reason(q, torch.zeros(1, 2, 9, 16), (lo, lo)) or "")
    with pytest.raises(ValueError, match="causal=True and no key_mask"):
        ta.flash_attention(q, q, q, causal=False, segments=(lo, lo))


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES[:2])
def test_compiled_segments_run_the_op_without_recompiling(device, dtype) -> None:  # type: ignore[no-untyped-def]
    """Under torch.compile the segment layout is data: a new layout reuses the graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(
        lambda q, k, v, lo, hi: ta.flash_attention(q, k, v, segments=(lo, hi)),
        backend=counter,
        fullgraph=True,
    )
    T = 29 if device == "cpu" else 296
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, 32, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    ref_in = [t.detach().to(torch.float64 if dtype == torch.float64 else torch.float32) for t in (q, k, v)]
    for cut in (T // 3, T // 2):
        ids = [[0] * cut + [1] * (T - cut)]
        bounds = segment_bounds(torch.tensor(ids, device=device), window=T)
        out = fn(q, k, v, bounds.lo, bounds.hi)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        ref_qkv = [t.clone().requires_grad_() for t in ref_in]
        ref = math_attention(*ref_qkv, mask=reference_keep(ids).to(device))
        ref_grads = torch.autograd.grad(ref.sum(), ref_qkv)
        check_close(out, ref, dtype, "compiled out")
        for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
            check_close(got, want, dtype, f"compiled {name}")
    assert counter.frame_count == 1


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
def test_model_flat_row_under_fused_kernel_matches_math(device, dtype, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The trainer's layout: one flat row (1, N), N > max_seq_len, positions restarting per segment,
    bucket padding at the end. The fused backend runs the segment kernel in every layer and gives
    math's loss and gradients."""
    from gptmed.model import GPTTransformer, ModelConfig, use_backend

    scale = 1 if device == "cpu" else 8
    cfg = ModelConfig(
        vocab_size=50, d_model=64, n_layers=2, n_heads=2, d_ff=128, max_seq_len=24 * scale, dropout=0.0
    )
    torch.manual_seed(0)
    model = GPTTransformer(cfg).to(device=device, dtype=dtype)
    lengths = [7 * scale, 24 * scale, 1, 13 * scale, 9]
    seg = torch.tensor(_row(*((i, n) for i, n in enumerate(lengths)), (-1, 5)), device=device)[None]
    positions = torch.cat([torch.arange(n) for n in lengths] + [torch.zeros(5, dtype=torch.long)])[None]
    ids = torch.randint(0, 50, seg.shape, device=device)
    targets = ids.roll(-1, 1).masked_fill(seg < 0, -100)
    assert seg.size(1) > cfg.max_seq_len
    calls = count_kernel_calls(monkeypatch)
    results = {}
    for backend in ("math", "fused"):
        model.zero_grad()
        with use_backend(backend):
            loss = model(ids, targets=targets, segment_ids=seg, position_ids=positions.to(device))
            loss.backward()
        results[backend] = (loss.detach().reshape(1), [p.grad.clone() for p in model.parameters()])
    assert calls == [True] * cfg.n_layers  # the segment kernel, once per layer, only in the fused run
    check_close(results["fused"][0], results["math"][0], dtype, "loss", low=3e-2)
    for i, (got, want) in enumerate(zip(results["fused"][1], results["math"][1], strict=True)):
        check_close(got, want, dtype, f"grad {i}", low=3e-2)
