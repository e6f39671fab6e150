from __future__ import annotations

import pytest
import torch
from gptmed.model.architecture import rope_tables
from gptmed.model.ops import Dropout, apply_rope, rope


def test_rope_function_matches_plain_and_is_a_rotation() -> None:
    cos, sin = rope_tables(16, 8)
    x = torch.randn(2, 16, 3, 8, dtype=torch.float64, requires_grad=True)
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]  # (T, 1, hs/2)
    out = rope(x, c, s)
    torch.testing.assert_close(out, apply_rope(x, c, s))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # rotations keep norms
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    x2 = x.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad(apply_rope(x2, c, s), x2, g)
    torch.testing.assert_close(gx, gx_ref)
    # position 0 is the identity
    torch.testing.assert_close(out[:, 0], x[:, 0])


def test_relative_position_property() -> None:
    cos, sin = rope_tables(32, 16)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    c, s = cos.double(), sin.double()

    def dot(i: int, j: int) -> float:
        return float(apply_rope(q, c[i], s[i]) @ apply_rope(k, c[j], s[j]))

    assert dot(5, 3) == pytest.approx(dot(12, 10))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_cpu_dropout_rate_is_p_and_output_is_unbiased(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    y = Dropout(p).train()(x)
    n = x.numel()
    sd = (p * (1 - p) / n) ** 0.5  # binomial standard deviation of the dropped fraction
    assert abs(float((y == 0).double().mean()) - p) < 5 * sd
    kept = y[y != 0]
    assert torch.all(kept == kept[0])  # one scale for every kept element
    keep = round((1 - p) * 32768)
    assert float(kept[0]) == pytest.approx(32768 / keep, rel=1e-6)  # E[y] = x exactly
    assert abs(float(y.double().mean()) - 1.0) < 5 * sd / (1 - p)


def test_cpu_dropout_gradient_is_the_same_mask_and_scale() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 33, 16, dtype=torch.float64, requires_grad=True)
    y = Dropout(0.2).train()(x)
    g = torch.randn_like(y)
    y.backward(g)
    mask = y != 0
    scale = 32768 / round(0.8 * 32768)
    assert torch.equal(x.grad, torch.where(mask, g * scale, 0.0))
    assert torch.equal(y, torch.where(mask, x.detach() * scale, 0.0))


def test_cpu_dropout_follows_the_torch_seed_and_is_identity_in_eval() -> None:
    d = Dropout(0.1)
    x = torch.randn(2, 64, 32)
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    assert torch.equal(a, d(x))  # resumable: the mask comes from torch's CPU generator
    assert d.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert dict(d.state_dict()) == {}  # same (empty) state as nn.Dropout
