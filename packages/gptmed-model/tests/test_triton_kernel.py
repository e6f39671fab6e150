"""Parity of our Triton FlashAttention kernel with the math reference.

CPU: under the Triton interpreter (TRITON_INTERPRET=1, set in conftest.py), in float64, tolerance
atol = rtol = 1e-9 for outputs and dq/dk/dv. CUDA (`gpu` marker): bf16 and fp16 with a relative
error (||x - ref|| / ||ref||) below 1e-2 against a float32 math reference, fp32 below 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICES, check_close
from gptmed.model.attention import causal_keep_mask, math_attention

triton = pytest.importorskip("triton")
from gptmed.model.kernels import flash_bwd, flash_fwd  # noqa: E402
from gptmed.model.kernels import triton_attention as ta  # noqa: E402


def _inputs(B: int, H: int, T: int, S: int, D: int, device: str, dtype: torch.dtype):
    torch.manual_seed(1234)
    q = torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, S, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, S, D, device=device, dtype=dtype, requires_grad=True)
    return q, k, v


def _reference(q, k, v, causal, key_mask, do):  # type: ignore[no-untyped-def]
    ref_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    qr, kr, vr = (t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = math_attention(qr, kr, vr, causal=causal, mask=mask)
    grads = torch.autograd.grad(out, (qr, kr, vr), do.to(ref_dtype))
    return out, grads


# (B, H, T, S, D, causal): odd lengths, T < S (prefill on top of a cache), several head dims
SHAPES = [
    (1, 2, 19, 19, 32, True),
    (2, 1, 37, 37, 64, True),
    (1, 1, 21, 21, 128, True),
    (2, 2, 7, 30, 64, True),
    (1, 2, 17, 17, 32, False),
]


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
@pytest.mark.parametrize("B,H,T,S,D,causal", SHAPES)
def test_forward_and_gradients_match_math(B, H, T, S, D, causal, device, dtype) -> None:  # type: ignore[no-untyped-def]
    scale = 4 if device == "cuda" else 1  # longer sequences on a GPU
    T, S = T * scale, S * scale
    q, k, v = _inputs(B, H, T, S, D, device, dtype)
    out = ta.flash_attention(q, k, v, causal=causal)
    do = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    ref, (rdq, rdk, rdv) = _reference(q, k, v, causal, None, do)
    check_close(out, ref, dtype, "out")
    check_close(dq, rdq, dtype, "dq")
    check_close(dk, rdk, dtype, "dk")
    check_close(dv, rdv, dtype, "dv")


@pytest.mark.skipif(not ta.interpreting(), reason="tile shapes are forced in the interpreter only")
@pytest.mark.parametrize("tiles", ["kv-wide", "q-wide"])
@pytest.mark.parametrize("causal,T,S", [(True, 45, 45), (True, 21, 53), (False, 29, 29)])
def test_unequal_tiles_and_strided_inputs(tiles, causal, T, S, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every tile shape the GPU tables may pick (BLOCK_M != BLOCK_N, dK/dV and dQ tiles differing)
    keeps the masked / unmasked block split exact; q, k, v are strided views of one packed tensor,
    as the model passes them."""
    narrow = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    wide = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    fwd, bwd = (wide, (narrow, wide)) if tiles == "kv-wide" else (narrow, (wide, narrow))
    monkeypatch.setattr(flash_fwd, "fwd_tiles", lambda *a: fwd)
    monkeypatch.setattr(flash_bwd, "bwd_tiles", lambda *a: bwd)
    torch.manual_seed(7)
    B, H, D = 2, 2, 32
    packed = torch.randn(B, S, 3, H, D, dtype=torch.float64, requires_grad=True)
    q = packed[:, S - T :, 0].transpose(1, 2)  # (B, H, T, D), row stride 3 * H * D
    k, v = packed[:, :, 1].transpose(1, 2), packed[:, :, 2].transpose(1, 2)
    out = ta.flash_attention(q, k, v, causal=causal)
    do = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    ref, (rdq, rdk, rdv) = _reference(q, k, v, causal, None, do)
    for name, got, want in (("out", out, ref), ("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv)):
        check_close(got, want, torch.float64, name)


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
def test_key_padding_mask_forward_and_gradients(device, dtype) -> None:  # type: ignore[no-untyped-def]
    B, H, T, S, D = 3, 2, 13, 13, 32
    q, k, v = _inputs(B, H, T, S, D, device, dtype)
    key_mask = torch.ones(B, S, dtype=torch.bool, device=device)
    key_mask[1, :4] = False  # left padding: rows 0..3 of batch 1 see no key
    key_mask[2, :1] = False
    out = ta.flash_attention(q, k, v, causal=True, key_mask=key_mask)
    assert torch.isfinite(out).all()
    do = torch.randn_like(out)
    do[1, :, :4] = 0  # padded queries carry no loss (as in the model)
    do[2, :, :1] = 0
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    ref, (rdq, rdk, rdv) = _reference(q, k, v, True, key_mask, do)
    visible = (causal_keep_mask(T, S, q.device) & key_mask[:, None, None, :]).any(-1)  # (B, 1, T)
    rows = visible.unsqueeze(-1).expand(B, H, T, D)
    check_close(out[rows], ref[rows], dtype, "out")
    check_close(dq[rows], rdq[rows], dtype, "dq")
    check_close(dk, rdk, dtype, "dk")
    check_close(dv, rdv, dtype, "dv")


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
@pytest.mark.parametrize("T,S,masked", [(1, 45, False), (3, 45, True), (1, 300, True)])
def test_decode_path_matches_math(T, S, masked, device, dtype) -> None:  # type: ignore[no-untyped-def]
    B, H, D = 2, 2, 64
    q, k, v = (t.detach() for t in _inputs(B, H, T, S, D, device, dtype))
    key_mask = None
    if masked:
        key_mask = torch.ones(B, S, dtype=torch.bool, device=device)
        key_mask[0, :5] = False
    out = ta.decode_attention(q, k, v, causal=True, key_mask=key_mask)
    with torch.no_grad():  # the dispatching entry point takes the decode kernel for long caches
        auto = ta.flash_attention(q, k, v, causal=True, key_mask=key_mask)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    mask = None if key_mask is None else key_mask[:, None, None, :]
    ref = math_attention(q.to(ref_dtype), k.to(ref_dtype), v.to(ref_dtype), causal=True, mask=mask)
    check_close(out, ref, dtype, "decode")
    check_close(auto, ref, dtype, "dispatch")


def count_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each call of the Triton kernel's entry point (True: with segments); it still runs."""
    calls: list[bool] = []
    real = ta.flash_attention

    def counted(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append(kw.get("segments") is not None)
        return real(*args, **kw)

    monkeypatch.setattr(ta, "flash_attention", counted)
    return calls


@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
def test_model_under_fused_backend_matches_math(device, dtype, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A forced fused backend runs our kernel at every dtype it supports (fp32 on CUDA included):
    the test's name is the path it runs."""
    from gptmed.model import GPTTransformer, ModelConfig, use_backend

    cfg = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=2, d_ff=128, max_seq_len=32, dropout=0.0)
    model = GPTTransformer(cfg).to(device=device, dtype=dtype)
    ids = torch.randint(0, 50, (2, 11), device=device)
    targets = torch.randint(0, 50, (2, 11), device=device)
    calls = count_kernel_calls(monkeypatch)
    grads = {}
    for backend in ("math", "fused"):
        model.zero_grad()
        with use_backend(backend):
            loss = model(ids, targets=targets)
            loss.backward()
        grads[backend] = (loss.detach(), model.blocks[0].attn.qkv.weight.grad.clone())
    assert len(calls) == cfg.n_layers  # one kernel call per layer, none in the math run
    check_close(grads["fused"][0].reshape(1), grads["math"][0].reshape(1), dtype, "loss", low=3e-2)
    # two bf16/fp16 models that differ only in the attention kernel: looser bound (3e-2)
    check_close(grads["fused"][1], grads["math"][1], dtype, "qkv grad", low=3e-2)


@pytest.mark.skipif(not ta.interpreting(), reason="the interpreter runs the ops on the CPU")
def test_compiled_path_uses_the_ops_and_matches_eager() -> None:
    """Eager calls launch the kernels through a plain autograd.Function; under torch.compile the same
    kernels run as opaque torch.library ops. Both must give the same output and gradients."""
    q, k, v = _inputs(1, 2, 23, 23, 32, "cpu", torch.float64)
    do = torch.randn_like(q)
    out = ta.flash_attention(q, k, v, causal=True)
    grads = torch.autograd.grad(out, (q, k, v), do)

    compiled = torch.compile(
        lambda a, b, c: ta.flash_attention(a, b, c, causal=True), backend="aot_eager", fullgraph=True
    )
    out_c = compiled(q, k, v)
    grads_c = torch.autograd.grad(out_c, (q, k, v), do)
    check_close(out_c, out, torch.float64, "compiled out")
    for name, got, want in zip(("dq", "dk", "dv"), grads_c, grads, strict=True):
        check_close(got, want, torch.float64, f"compiled {name}")
    with torch.no_grad():  # the decode op under the compiler too
        qd = q.detach()[:, :, -1:]
        dec = torch.compile(lambda a, b, c: ta.decode_attention(a, b, c), backend="aot_eager", fullgraph=True)
        check_close(
            dec(qd, k.detach(), v.detach()),
            ta.decode_attention(qd, k.detach(), v.detach()),
            torch.float64,
            "decode",
        )


@pytest.mark.skipif(not ta.interpreting(), reason="the interpreter runs the kernels on the CPU")
def test_double_backward_is_refused_not_silently_wrong() -> None:
    """create_graph=True would need the backward's own gradient, which the kernels do not have:
    an error, never second-order terms quietly dropped (a gradient penalty would train wrongly)."""
    q, k, v = _inputs(1, 1, 9, 9, 16, "cpu", torch.float64)
    out = ta.flash_attention(q, k, v, causal=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
