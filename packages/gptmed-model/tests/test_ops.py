from __future__ import annotations

import pytest
import torch
from gptmed.model.architecture import rope_tables
from gptmed.model.ops import apply_rope, rope


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
