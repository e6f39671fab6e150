"""The hand-written decode graph computes the model: every activation / position / head-size
variant against the torch forward, through a prefill and cached decode steps on one shared buffer."""

from __future__ import annotations

import numpy as np
import pytest
from gptmed.core import ModelConfig

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    ("activation", "use_rope", "d_model"),
    [("gelu", True, 32), ("gelu_tanh", True, 32), ("gelu", False, 48), ("gelu_tanh", False, 48)],
)
def test_graph_matches_torch_prefill_and_decode(activation: str, use_rope: bool, d_model: int) -> None:
    from gptmed.inference.bundle import kv_head_dim
    from gptmed.inference.export.graph import build_graph, graph_weights
    from gptmed.model import GPTTransformer

    cfg = ModelConfig(
        vocab_size=50, d_model=d_model, n_layers=2, n_heads=4, d_ff=64, max_seq_len=24,
        dropout=0.0, use_rope=use_rope, activation=activation,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPTTransformer(cfg).eval()
    weights = graph_weights(model)
    sess = ort.InferenceSession(
        build_graph(cfg, weights).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names_in = [i.name for i in sess.get_inputs()]
    names_out = [o.name for o in sess.get_outputs()]
    hs = kv_head_dim(cfg)
    assert hs % 8 == 0 and hs >= cfg.head_dim
    ids = np.random.default_rng(0).integers(4, 50, size=(1, 12))
    assert names_in[:4] == ["input_ids", "position_ids", "attention_mask", "num_logits_to_keep"]
    cache = [np.zeros((1, 4, 16, hs), dtype=np.float32) for _ in names_in[4:]]
    binding = sess.io_binding()
    binding.bind_output("logits", "cpu")  # first: get_outputs()[0]
    binding.bind_cpu_input("num_logits_to_keep", np.array([0], dtype=np.int64))  # every position
    for past, present, buf in zip(names_in[4:], names_out[1:], cache, strict=True):
        value = ort.OrtValue.ortvalue_from_numpy(buf)
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)

    def run(tokens: np.ndarray, start: int) -> np.ndarray:
        t = tokens.shape[1]
        binding.bind_cpu_input("input_ids", tokens.astype(np.int64))
        binding.bind_cpu_input("position_ids", np.arange(start, start + t, dtype=np.int64)[None])
        binding.bind_cpu_input("attention_mask", np.ones((1, start + t), dtype=np.int64))
        binding.bind_output("logits", "cpu")
        sess.run_with_iobinding(binding)
        return np.asarray(binding.get_outputs()[0].numpy())

    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()  # (1, 12, V)
    got = run(ids[:, :8], 0)  # prefill 8 tokens, then 4 cached steps
    assert np.abs(got - want[:, :8]).max() <= 1e-4
    for pos in range(8, 12):
        got = run(ids[:, pos : pos + 1], pos)
        assert np.abs(got[:, 0] - want[:, pos]).max() <= 1e-4


def test_num_logits_to_keep_returns_the_last_positions() -> None:
    """k = 0: every position; k: the last k, equal to those of the full run; k > T: all T."""
    from gptmed.inference.bundle import kv_head_dim
    from gptmed.inference.export.graph import build_graph, graph_weights
    from gptmed.model import GPTTransformer

    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16, dropout=0.0)
    torch.manual_seed(1)
    sess = ort.InferenceSession(
        build_graph(cfg, graph_weights(GPTTransformer(cfg).eval())).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    batch, width = 3, 7
    ids = np.random.default_rng(1).integers(4, 40, size=(batch, width))
    empty = np.zeros((batch, 4, 0, kv_head_dim(cfg)), dtype=np.float32)
    feeds = {
        "input_ids": ids,
        "position_ids": np.broadcast_to(np.arange(width), (batch, width)).astype(np.int64),
        "attention_mask": np.ones((batch, width), dtype=np.int64),
        **{i.name: empty for i in sess.get_inputs() if i.name.startswith("past_key_values.")},
    }

    def logits(keep: int) -> np.ndarray:
        return np.asarray(sess.run(["logits"], {**feeds, "num_logits_to_keep": np.array([keep])})[0])

    full = logits(0)
    assert full.shape == (batch, width, cfg.vocab_size)
    for keep in (1, 3, width):
        assert np.abs(logits(keep) - full[:, width - keep :]).max() <= 1e-6
    assert np.abs(logits(width + 5) - full).max() <= 1e-6
