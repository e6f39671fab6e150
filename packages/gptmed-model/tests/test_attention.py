from __future__ import annotations

import logging

import gptmed.model.attention as attn_mod
import pytest
import torch
from gptmed.model.attention import (
    attention,
    backend_reason,
    causal_keep_mask,
    math_attention,
    sdpa_attention,
    select_backend,
    set_backend,
    use_backend,
)


def qkv(
    B: int,
    H: int,
    T: int,
    S: int,
    D: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mk = lambda n: torch.randn(B, H, n, D, dtype=dtype, device=device, requires_grad=grad)  # noqa: E731
    return mk(T), mk(S), mk(S)


@pytest.fixture
def fresh_choice(monkeypatch: pytest.MonkeyPatch):
    """Forget the once-made choice for the test, restore it after."""
    saved = (attn_mod._selected, attn_mod._reason, attn_mod._automatic)
    set_backend(None)
    yield monkeypatch
    attn_mod._selected, attn_mod._reason, attn_mod._automatic = saved


def test_choice_is_made_once_and_logged_with_reason(fresh_choice, caplog: pytest.LogCaptureFixture) -> None:
    fresh_choice.delenv("GPTMED_ATTENTION", raising=False)
    with caplog.at_level(logging.INFO, logger="gptmed.model.attention"):
        first = select_backend()
        for _ in range(3):
            assert select_backend() == first
    records = [r.getMessage() for r in caplog.records if "attention backend" in r.getMessage()]
    assert len(records) == 1
    if not torch.cuda.is_available():
        assert first == "sdpa" and "no CUDA device" in records[0]
    assert first in backend_reason()


def test_env_forces_backend_and_overrides_nest(fresh_choice) -> None:
    fresh_choice.setenv("GPTMED_ATTENTION", "math")
    assert select_backend() == "math"
    with use_backend("sdpa"):
        assert select_backend() == "sdpa"
        with use_backend("math"):
            assert select_backend() == "math"
        assert select_backend() == "sdpa"
    assert select_backend() == "math"
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"), use_backend("flash"):
        pass
    set_backend(None)
    fresh_choice.setenv("GPTMED_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        select_backend()


def test_causal_mask_is_bottom_right_aligned() -> None:
    keep = causal_keep_mask(2, 4, torch.device("cpu"))
    assert keep.tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize(
    "T,S,causal,masked",
    [
        (9, 9, True, False),
        (3, 11, True, False),
        (1, 11, True, False),
        (6, 6, False, False),
        (9, 9, True, True),
        (1, 12, True, True),
        (4, 12, True, True),
    ],
)
def test_sdpa_matches_math(T: int, S: int, causal: bool, masked: bool) -> None:
    q, k, v = qkv(2, 3, T, S, 16, torch.float64)
    mask = None
    if masked:
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        mask[1, ..., :3] = False
    ref = math_attention(q, k, v, causal=causal, mask=mask)
    out = sdpa_attention(q, k, v, causal=causal, mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    # compare the rows that see at least one key (others are finite but unspecified)
    visible = torch.ones(2, 1, T, S, dtype=torch.bool)
    if causal:
        visible = visible & causal_keep_mask(T, S, q.device)
    if mask is not None:
        visible = visible & mask
    rows = visible.any(-1, keepdim=True).expand_as(ref)
    torch.testing.assert_close(out[rows], ref[rows], atol=1e-10, rtol=1e-10)


def test_fused_falls_back_to_sdpa_on_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    from gptmed.model.kernels import triton_attention as ta

    monkeypatch.setattr(ta, "interpreting", lambda: False)
    q, k, v = qkv(1, 2, 5, 5, 32)
    with use_backend("fused"):
        out = attention(q, k, v)
    torch.testing.assert_close(out, sdpa_attention(q, k, v))
    assert "tensors on cpu" in (ta.unsupported_reason(q, k, v) or "")


def test_fused_falls_back_for_unsupported_masks_and_head_dims() -> None:
    pytest.importorskip("triton")
    from gptmed.model.kernels import triton_attention as ta

    q, k, v = qkv(1, 2, 5, 5, 24)
    assert "head dim 24" in (ta.unsupported_reason(q, k, v) or "")
    full_mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    assert ta.as_key_mask(full_mask, q, k)[1] is not None
    km, why = ta.as_key_mask(torch.ones(1, 1, 1, 5, dtype=torch.bool), q, k)
    assert why is None and km is not None and km.shape == (1, 5)
    with use_backend("fused"):
        torch.testing.assert_close(attention(q, k, v), math_attention(q, k, v))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_automatic_fused_choice_routes_each_call_and_forced_fused_runs_the_kernel(
    fresh_choice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chosen automatically, `fused` sends a call to whichever path measured faster (decode steps,
    causal attention with <= 8 heads, short packed rows: sdpa, bit for bit); forced, it runs our
    kernel on every input it supports."""
    from gptmed.model.attention import segment_bounds
    from test_triton_kernel import count_kernel_calls

    fresh_choice.delenv("GPTMED_ATTENTION", raising=False)
    assert select_backend() == "fused"
    calls = count_kernel_calls(monkeypatch)
    decode = qkv(2, 4, 1, 300, 64, torch.bfloat16, "cuda")
    few_heads = qkv(2, 4, 256, 256, 64, torch.bfloat16, "cuda", grad=True)
    many_heads = qkv(2, 16, 256, 256, 64, torch.bfloat16, "cuda", grad=True)
    with torch.no_grad():
        assert torch.equal(attention(*decode), sdpa_attention(*decode))
    assert torch.equal(attention(*few_heads), sdpa_attention(*few_heads))
    assert calls == []
    attention(*many_heads)
    assert calls == [False]
    short = segment_bounds(torch.tensor([[0] * 100 + [1] * 156] * 2, device="cuda"), window=256)
    attention(*few_heads, segments=short)  # <= 512 tokens: sdpa with a dense mask
    flat = qkv(1, 4, 2048, 2048, 64, torch.bfloat16, "cuda", grad=True)
    ids = torch.arange(2048, device="cuda") // 300  # 7 segments in a flat row
    attention(*flat, segments=segment_bounds(ids[None], window=512))
    assert calls == [False, True]
    with use_backend("fused"):  # forced: the kernel everywhere it runs (decode steps included)
        with torch.no_grad():
            forced = attention(*decode)
        attention(*few_heads)
    assert not torch.equal(forced, sdpa_attention(*decode))
    assert calls == [False, True, False]
    torch.testing.assert_close(
        forced, math_attention(*(t.float() for t in decode)).bfloat16(), atol=2e-2, rtol=0
    )


def test_speed_routing_follows_the_measured_limits() -> None:
    """The automatic choice's static limits (H200 figures, attention.py): short packed rows and
    causal attention with <= 8 heads go to sdpa, long packed rows and more heads to the kernel."""
    from gptmed.model.attention import SDPA_MAX_HEADS, SEGMENT_MASK_MAX_T, _speed_reason

    def reason(H: int, T: int, segmented: bool = False, mask: torch.Tensor | None = None) -> str | None:
        q, k, _ = qkv(1, H, T, T, 16)
        return _speed_reason(q, k, True, mask, segmented, 16)

    assert "packed rows" in (reason(8, SEGMENT_MASK_MAX_T, segmented=True) or "")
    assert reason(8, SEGMENT_MASK_MAX_T + 1, segmented=True) is None
    assert "heads" in (reason(SDPA_MAX_HEADS, 64) or "")
    assert reason(SDPA_MAX_HEADS * 2, 64) is None
    assert reason(4, 64, mask=torch.ones(1, 1, 1, 64, dtype=torch.bool)) is None  # key padding: the kernel


# -- packed rows: segment limits on the device --------------------------------------------------------
def test_segment_bounds_mark_runs_and_padding() -> None:
    from gptmed.model.attention import segment_bounds

    ids = torch.tensor([[1, 1, 2, 2, 2, -1], [0, 0, 0, 0, 0, 0], [5, -1, -1, 6, 6, 5]])
    b = segment_bounds(ids, window=6)
    assert b.lo.dtype == torch.int32 and b.lo.is_contiguous() and b.hi.is_contiguous()
    assert b.lo.tolist() == [[0, 0, 2, 2, 2, 6], [0, 0, 0, 0, 0, 0], [0, 6, 6, 3, 3, 5]]
    assert b.hi.tolist() == [[2, 2, 5, 5, 5, 0], [6, 6, 6, 6, 6, 6], [1, 0, 0, 5, 5, 6]]
    assert b.attended().tolist()[2] == [True, False, False, True, True, True]
    keep = b.keep_mask()[2, 0]  # row 2: the returning id 5 is a run of its own
    assert keep[5].tolist() == [False, False, False, False, False, True]
    assert keep[4].tolist() == [False, False, False, True, True, False]


@pytest.mark.parametrize("backend", [math_attention, sdpa_attention])
def test_block_local_mask_equals_the_dense_mask(backend) -> None:  # type: ignore[no-untyped-def]
    """A row longer than the window attends block-locally (2W keys per block of W queries): the same
    outputs and gradients as one dense mask while no segment is longer than the window."""
    from gptmed.model.attention import masked_segment_attention, segment_bounds

    lengths = [5, 8, 1, 8, 3, 7, 2, 8]  # W = 8: segments up to the window, across block edges
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((4,), -1)])[None]
    T = ids.size(1)
    torch.manual_seed(0)
    base = qkv(1, 2, T, T, 8, torch.float64)
    do = torch.randn(1, 2, T, 8, dtype=torch.float64)
    results = []
    for window in (8, T):  # blocked, dense
        q, k, v = (t.clone().requires_grad_() for t in base)
        out = masked_segment_attention(backend, q, k, v, segment_bounds(ids, window))
        results.append((out, torch.autograd.grad(out, (q, k, v), do)))
    (blocked, g_blocked), (dense, g_dense) = results
    torch.testing.assert_close(blocked, dense, atol=1e-12, rtol=1e-12)
    for a, b in zip(g_blocked, g_dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert (blocked[:, :, -4:] == 0).all()  # padding: exactly 0


# -- packed rows: per-run attention -----------------------------------------------------------------
def test_segment_runs_cut_at_row_starts_and_id_changes() -> None:
    from gptmed.model.attention import segment_runs

    ids = torch.tensor([[1, 1, 2, 2, 2, -1], [2, 2, 2, 2, 2, 2], [0, 1, 1, 1, -1, -1]])
    runs = segment_runs(ids)
    assert runs.lengths == (2, 3, 1, 6, 1, 3, 2)  # row 1's id 2 does not merge with row 0's
    assert runs.skip == (False, False, True, False, False, False, True)
    assert not runs.causal_exact  # rows 0 and 2 hold two pairs
    single = segment_runs(torch.tensor([[1, 1, 1, -1], [4, 4, 4, 4]]))
    assert single.causal_exact and single.skip == (False, True, False)
    assert not segment_runs(torch.tensor([[-1, 1, 1, 1]])).causal_exact  # a row must start attended


def test_plan_picks_the_cheapest_exact_path() -> None:
    from gptmed.model.attention import SegmentRuns, plan_segments

    # one long row split in two (width 256): 2 * (256^2 + 6250) < 512^2 * 1.25 -> runs
    assert plan_segments(SegmentRuns((256, 256), (False, False), False), 1, 512, 256) == "runs"
    # a full row and a few padding tokens: causal over the whole row is as cheap and exact
    assert plan_segments(SegmentRuns((510, 2), (False, True), True), 1, 512, 256) == "causal"
    # a row of padding mostly: the run costs a fraction of the row
    assert plan_segments(SegmentRuns((100, 412), (False, True), True), 1, 512, 256) == "runs"
    # many short pairs: per-call overhead beats the (small) mask, more so for a narrow model
    short = SegmentRuns((32,) * 16, (False,) * 16, False)
    assert plan_segments(short, 1, 512, 256) == "runs"
    assert plan_segments(short, 1, 512, 32) == "mask"


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_runs_attention_equals_the_segment_mask_forward_and_backward(backend: str) -> None:
    from gptmed.model.attention import runs_attention, segment_runs

    torch.manual_seed(0)
    B, H, T, D = 3, 2, 11, 8
    ids = torch.tensor(
        [[1] * 4 + [2] * 5 + [-1] * 2, [3] * 11, [0] * 2 + [1] * 3 + [2] * 6]
    )  # pairs, a whole row, padding
    base = [torch.randn(B, T, H, D) for _ in range(3)]
    attended = (ids >= 0)[:, :, None, None]  # (B, T, 1, 1): outputs at padding are unspecified
    weights = torch.randn(B, T, H, D) * attended

    def loss_with_mask() -> tuple[torch.Tensor, list[torch.Tensor]]:
        q, k, v = (t.clone().requires_grad_() for t in base)
        keep = causal_keep_mask(T, T, q.device) & (ids[:, :, None] == ids[:, None, :])
        with use_backend(backend):
            y = attention(*(t.transpose(1, 2) for t in (q, k, v)), mask=keep.unsqueeze(1)).transpose(1, 2)
        (y * weights).sum().backward()
        return y * attended, [t.grad for t in (q, k, v)]  # type: ignore[misc]

    def loss_with_runs() -> tuple[torch.Tensor, list[torch.Tensor]]:
        q, k, v = (t.clone().requires_grad_() for t in base)
        with use_backend(backend):
            y = runs_attention(*(t.reshape(B * T, H, D) for t in (q, k, v)), segment_runs(ids))
        y = y.view(B, T, H, D)
        assert (y[~attended.expand_as(y)] == 0).all()  # padding outputs are zeros
        (y * weights).sum().backward()
        return y, [t.grad for t in (q, k, v)]  # type: ignore[misc]

    y_mask, g_mask = loss_with_mask()
    y_runs, g_runs = loss_with_runs()
    torch.testing.assert_close(y_runs, y_mask, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_runs, g_mask, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert g_runs[1][2, 1].abs().sum() > 0  # a key inside a pair does get gradient
