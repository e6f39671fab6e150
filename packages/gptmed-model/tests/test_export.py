"""The model under use_backend("math"), with explicit mask / positions / past, exports to ONNX and
runs in onnxruntime with other shapes than it was traced with (prefill with empty past, one-token
steps, left padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from gptmed.model import GPTTransformer, ModelConfig, use_backend  # noqa: E402


class _Flat(torch.nn.Module):
    def __init__(self, model: GPTTransformer) -> None:
        super().__init__()
        self.model = model
        self.n = model.config.n_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):  # type: ignore[no-untyped-def]
        pkv = tuple((past[2 * i], past[2 * i + 1]) for i in range(self.n))
        logits, presents = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=pkv,
            use_cache=True,
        )
        return (logits, *(t for kv in presents for t in kv))


@pytest.mark.parametrize("use_rope", [True])
def test_onnx_export_with_cache(tmp_path, use_rope: bool) -> None:  # type: ignore[no-untyped-def]
    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        max_seq_len=32,
        dropout=0.0,
        use_rope=use_rope,
    )
    model = GPTTransformer(cfg).eval()
    flat = _Flat(model)
    B, P, T = 2, 3, 4
    args = (
        torch.randint(0, 64, (B, T)),
        torch.ones(B, P + T, dtype=torch.long),
        torch.arange(P, P + T).expand(B, T).contiguous(),
        *[torch.randn(B, 2, P, 16) for _ in range(4)],
    )
    dyn = torch.export.Dim.DYNAMIC
    shapes = {
        "input_ids": {0: dyn, 1: dyn},
        "attention_mask": {0: dyn, 1: dyn},
        "position_ids": {0: dyn, 1: dyn},
        "past": tuple({0: dyn, 2: dyn} for _ in range(4)),
    }
    names = ["input_ids", "attention_mask", "position_ids", *[f"past_{i}" for i in range(4)]]
    with use_backend("math"):
        program = torch.onnx.export(flat, args, dynamic_shapes=shapes, dynamo=True, input_names=names)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    sess = ort.InferenceSession(str(path))
    for B, P, T in [(1, 0, 7), (3, 5, 1), (2, 2, 3)]:
        ids = torch.randint(0, 64, (B, T))
        mask = torch.ones(B, P + T, dtype=torch.long)
        if B > 1:
            mask[1, :1] = 0  # left padding
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, P:]
        past = [torch.randn(B, 2, P, 16) for _ in range(4)]
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
        feed.update({f"past_{i}": p.numpy() for i, p in enumerate(past)})
        outs = sess.run(None, feed)
        with torch.no_grad():
            ref = flat(ids, mask, pos, *past)
        for o, r in zip(outs, ref, strict=True):
            np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=1e-4)
