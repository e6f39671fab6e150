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
    saved = (attn_mod._selected, attn_mod._reason)
    set_backend(None)
    yield monkeypatch
    attn_mod._selected, attn_mod._reason = saved


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
