from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from gptmed.model import (
    GPTTransformer,
    ModelConfig,
    clean_state_dict,
    get_medium_config,
    get_small_config,
    get_tiny_config,
    unwrap,
    use_backend,
)
from gptmed.model.architecture import GPTTransformer as ArchGPT
from gptmed.model.configs.model_config import get_small_config as cfg_small


def tiny(vocab: int = 97, seq: int = 48, **kw: object) -> ModelConfig:
    base = dict(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=seq, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def test_manual_imports() -> None:
    assert ArchGPT is GPTTransformer
    assert cfg_small is get_small_config
    from gptmed.core import ModelConfig as CoreConfig

    assert ModelConfig is CoreConfig


@pytest.mark.parametrize(
    "builder,target", [(get_tiny_config, 2e6), (get_small_config, 10e6), (get_medium_config, 50e6)]
)
@pytest.mark.parametrize("use_rope", [True, False])
def test_presets_sizes_match_formula(builder, target: float, use_rope: bool) -> None:
    cfg = builder().replace(use_rope=use_rope)
    with torch.device("meta"):
        model = GPTTransformer(cfg)
    n = model.num_parameters()
    assert n == cfg.num_parameters()
    assert abs(n - target) / target < 0.15, (n, target)


def test_state_dict_keys_and_tied_embeddings() -> None:
    model = GPTTransformer(tiny(n_layers=1))
    keys = list(model.state_dict())
    per_block = [
        f"blocks.0.{k}"
        for k in (
            "ln1.weight",
            "ln1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "ln2.weight",
            "ln2.bias",
            "mlp.fc.weight",
            "mlp.fc.bias",
            "mlp.proj.weight",
            "mlp.proj.bias",
        )
    ]
    assert keys == ["tok_emb.weight", *per_block, "ln_f.weight", "ln_f.bias"]
    learned = GPTTransformer(tiny(n_layers=1, use_rope=False))
    assert list(learned.state_dict())[:2] == ["tok_emb.weight", "pos_emb.weight"]
    # the output projection is the token embedding
    ids = torch.randint(0, 97, (2, 5))
    h, _ = model.hidden_states(ids)
    torch.testing.assert_close(model(ids), h @ model.tok_emb.weight.t())


def test_gpt2_init_scales() -> None:
    cfg = tiny(d_model=256, n_heads=4, d_ff=1024, n_layers=8)
    model = GPTTransformer(cfg)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.qkv.bias.abs().max().item() == 0.0
    assert model.ln_f.weight.min().item() == 1.0


def test_param_groups_partition() -> None:
    model = GPTTransformer(tiny(use_rope=False))
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = sorted(names[id(p)] for p in decay["params"])
    no_names = {names[id(p)] for p in no_decay["params"]}
    assert len(decay_names) + len(no_names) == len(names)
    assert all(n.endswith(("qkv.weight", "proj.weight", "fc.weight")) for n in decay_names)
    assert {"tok_emb.weight", "pos_emb.weight", "ln_f.weight", "ln_f.bias"} <= no_names
    torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)  # accepted as is


def _skip_fused_without_kernel(backend: str, device: str) -> None:
    if backend != "fused":
        return
    pytest.importorskip("triton")
    from gptmed.model.kernels import triton_attention as ta

    if device == "cpu" and not ta.interpreting():
        pytest.skip("fused on CPU needs TRITON_INTERPRET=1")


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("backend", ["sdpa", "math", "fused"])
@pytest.mark.parametrize("use_rope", [True, False])
def test_kv_cache_matches_full_forward(device: str, dtype: torch.dtype, backend: str, use_rope: bool) -> None:
    _skip_fused_without_kernel(backend, device)
    if backend == "fused" and device == "cpu" and not use_rope:
        pytest.skip("interpreter time: the fused KV-cache path is covered with RoPE")
    model = GPTTransformer(tiny(use_rope=use_rope)).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, 97, (3, 13), device=device)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    with torch.no_grad(), use_backend(backend):
        full = model(ids)
        logits, past = model(ids[:, :6], use_cache=True)
        steps = [logits]
        for t in range(6, 13):
            logits, past = model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            steps.append(logits)
        assert len(past) == 2 and past[0][0].shape == (3, 4, 13, 16)
        # prefill of 4 more tokens on top of the cache (T > 1 with a past: bottom-right causal)
        _, past6 = model(ids[:, :6], use_cache=True)
        chunk = model(ids[:, 6:10], past_key_values=past6)
    torch.testing.assert_close(torch.cat(steps, 1), full, **tol)
    torch.testing.assert_close(chunk, full[:, 6:10], **tol)


@pytest.mark.parametrize("backend", ["sdpa", "math", "fused"])
@pytest.mark.parametrize("use_rope", [True, False])
def test_left_padded_batch_with_mask_and_positions(backend: str, use_rope: bool) -> None:
    _skip_fused_without_kernel(backend, "cpu")
    model = GPTTransformer(tiny(use_rope=use_rope)).eval()
    lens = [9, 4, 7]
    seqs = [torch.randint(4, 97, (n,)) for n in lens]
    T = max(lens)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = s
        mask[i, T - len(s) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    new = torch.randint(4, 97, (3, 3))
    with torch.no_grad(), use_backend(backend):
        logits, past = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
        assert torch.isfinite(logits).all()
        steps = []
        for t in range(3):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            step, past = model(
                new[:, t : t + 1],
                attention_mask=mask.bool(),
                position_ids=pos,
                past_key_values=past,
                use_cache=True,
            )
            steps.append(step)
        for i, s in enumerate(seqs):
            ref = model(torch.cat([s, new[i]]).unsqueeze(0))[0]  # (len + 3, V)
            torch.testing.assert_close(logits[i, T - len(s) :], ref[: len(s)], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(torch.cat(steps, 1)[i], ref[len(s) :], atol=1e-4, rtol=1e-4)


def test_bad_inputs_raise_value_errors_with_numbers() -> None:
    model = GPTTransformer(tiny(seq=16))
    with pytest.raises(ValueError, match=r"17 tokens > max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 97\).*max 97"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match=r"min -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="2-D"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask shape \(1, 3\) != .* \(1, 2\)"):
        model(torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 3))
    _, past = model(torch.zeros(1, 10, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match=r"10 cached \+ 7 new = 17 tokens"):
        model(torch.zeros(1, 7, dtype=torch.long), past_key_values=past)
    with pytest.raises(ValueError, match=r"past_key_values has 1 layers, the model has 2"):
        model(torch.zeros(1, 1, dtype=torch.long), past_key_values=past[:1])
    with pytest.raises(ValueError, match=r"position_ids must be in \[0, 16\)"):
        model(torch.zeros(1, 1, dtype=torch.long), position_ids=torch.tensor([[16]]))
    with pytest.raises(ValueError, match=r"d_model \(100\) must be divisible by n_heads \(3\)"):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match=r"logits_to_keep must be >= 0.*got -1"):
        model(torch.zeros(1, 2, dtype=torch.long), logits_to_keep=-1)


def test_logits_to_keep_returns_the_last_positions() -> None:
    torch.manual_seed(0)
    model = GPTTransformer(tiny()).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        full, past_full = model(ids, use_cache=True)
        for keep in (1, 4, 9, 20):  # more than T: all of them
            last, past = model(ids, use_cache=True, logits_to_keep=keep)
            assert last.shape == (2, min(keep, 9), 97)
            torch.testing.assert_close(last, full[:, -keep:], rtol=0, atol=1e-5)
            for (k, v), (fk, fv) in zip(past, past_full, strict=True):  # the cache is whole
                assert torch.equal(k, fk) and torch.equal(v, fv)


def test_dropout_train_vs_eval() -> None:
    model = GPTTransformer(tiny(dropout=0.5))
    ids = torch.randint(0, 97, (2, 8))
    model.train()
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


@pytest.mark.parametrize(("activation", "approximate"), [("gelu", "none"), ("gelu_tanh", "tanh")])
def test_mlp_activation_follows_the_config(activation: str, approximate: str) -> None:
    model = GPTTransformer(tiny(dropout=0.0, activation=activation)).eval()
    mlp = model.blocks[0].mlp
    x = torch.randn(2, 5, mlp.fc.in_features)
    with torch.no_grad():
        want = mlp.proj(F.gelu(mlp.fc(x), approximate=approximate))
        assert torch.equal(mlp(x), want)


def test_fused_loss_matches_cross_entropy() -> None:
    model = GPTTransformer(tiny(n_layers=1)).double()
    ids = torch.randint(0, 97, (3, 11))
    targets = torch.randint(0, 97, (3, 11))
    targets[0, :4] = -100
    targets[2, :] = -100
    params = [model.tok_emb.weight, model.blocks[0].attn.qkv.weight]
    fused = model(ids, targets=targets)
    (g_fused := torch.autograd.grad(fused, params))
    ref = F.cross_entropy(model(ids).reshape(-1, 97), targets.reshape(-1), ignore_index=-100)
    g_ref = torch.autograd.grad(ref, params)
    torch.testing.assert_close(fused, ref)
    for a, b in zip(g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b)
    from gptmed.model.loss import linear_cross_entropy

    h = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 13, (37,))
    for ignored in (0, 11, 37):  # none, some (dropped before the logits), all (loss 0, no gradient)
        t[:ignored] = -100
        (2 * linear_cross_entropy(h, w, t, chunk_rows=5)).backward()
        gh, gw = h.grad, w.grad
        h.grad = w.grad = None
        ref = F.cross_entropy(h @ w.t(), t) if ignored < 37 else (h @ w.t()).sum() * 0
        (2 * ref).backward()
        torch.testing.assert_close(gh, h.grad)
        torch.testing.assert_close(gw, w.grad)
        assert gh is not None and (gh[:ignored] == 0).all()
        h.grad = w.grad = None


def test_clean_state_dict_and_unwrap() -> None:
    model = GPTTransformer(tiny())
    wrapped = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    assert list(clean_state_dict(wrapped)) == list(model.state_dict())
    other = GPTTransformer(tiny())
    other.load_state_dict(wrapped)  # the pre-hook strips wrapper prefixes
    torch.testing.assert_close(other.tok_emb.weight, model.tok_emb.weight)
    assert unwrap(torch.nn.DataParallel(model)) is model


def test_checkpoint_of_another_shape_names_the_field_and_the_fix() -> None:
    from gptmed.core import CheckpointError

    trained = GPTTransformer(tiny(vocab=61)).state_dict()  # e.g. a 4000-piece tokenizer's model
    wrapped = {f"_orig_mod.{k}": v for k, v in trained.items()}  # after the prefix strip too
    for state in (trained, wrapped):
        with pytest.raises(
            CheckpointError, match="vocab_size 61 in the checkpoint, 97 in this model's config"
        ) as err:
            GPTTransformer(tiny()).load_state_dict(state)
        assert "ModelConfig.from_dict(checkpoint['model_config'])" in str(err.value)
    with pytest.raises(CheckpointError, match="d_model 64 in the checkpoint, 32 in this model's config"):
        GPTTransformer(tiny(vocab=61, d_model=32, n_heads=2)).load_state_dict(trained)
    with pytest.raises(CheckpointError, match="vocab_size 61 .*; d_model 64 in the checkpoint, 32"):
        GPTTransformer(tiny(d_model=32, n_heads=2)).load_state_dict(trained)
    with pytest.raises(
        CheckpointError, match=r"blocks.0.mlp.fc.weight is \(128, 64\) in the checkpoint, \(96, 64\)"
    ):
        GPTTransformer(tiny(vocab=61, d_ff=96)).load_state_dict(trained)
    GPTTransformer(tiny(vocab=61)).load_state_dict(trained)  # the same shape still loads


def test_compile_on_cpu_and_state_dict_roundtrip() -> None:
    cfg = tiny(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab=61, seq=16)
    model = GPTTransformer(cfg).eval()
    compiled = torch.compile(model)  # forward only: a backward graph would double the compile time
    ids = torch.randint(0, 61, (2, 16))
    assert unwrap(compiled) is model
    assert all("_orig_mod." not in k for k in unwrap(compiled).state_dict())
    fresh = GPTTransformer(cfg)
    fresh.load_state_dict(compiled.state_dict())  # even the prefixed dict loads
    fresh.eval()
    with torch.no_grad():
        out = compiled(ids)
        torch.testing.assert_close(fresh(ids), out, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_keeps_qkv_dtypes_and_loss_close(monkeypatch: pytest.MonkeyPatch) -> None:
    import gptmed.model.attention as attn_mod

    seen: list[tuple[torch.dtype, ...]] = []
    real = attn_mod.sdpa_attention

    def spy(q, k, v, **kw):  # type: ignore[no-untyped-def]
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, **kw)

    monkeypatch.setattr(attn_mod, "sdpa_attention", spy)
    model = GPTTransformer(tiny())
    ids = torch.randint(0, 97, (2, 9))
    targets = torch.randint(0, 97, (2, 9))
    with use_backend("sdpa"):
        ref = model(ids, targets=targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, targets=targets)
    loss.backward()
    assert seen[-1] == (torch.bfloat16,) * 3  # RoPE tables follow the activations' dtype
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 0.05
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.dtype == torch.float32


def test_segment_ids_make_a_packed_pair_equal_to_the_pair_alone() -> None:
    # Packed training rows hold several Q&A pairs; with segment_ids and restarting position_ids a
    # pair's logits inside the row are exactly those of the pair on its own (what generation sees).
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32, dropout=0.0
    )
    model = GPTTransformer(config).eval()
    first, second = torch.tensor([[2, 10, 11, 12, 3]]), torch.tensor([[2, 20, 21, 3]])
    row = torch.cat([first, second, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    segments = torch.tensor([[1] * 5 + [2] * 7])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        packed = model(row, segment_ids=segments, position_ids=positions)
        torch.testing.assert_close(packed[:, 5:9], model(second), rtol=0, atol=1e-6)
        torch.testing.assert_close(packed[:, :5], model(first), rtol=0, atol=1e-6)
        unmasked = model(row, position_ids=positions)
    assert (unmasked[:, 5:9] - model(second)).abs().max() > 1e-3  # without segments it differs
    with pytest.raises(ValueError, match="segment_ids must have input_ids' shape"):
        model(row, segment_ids=segments[:, :5])


def _segmented(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, segments, positions restarting per run, targets ignoring padding) for segment ids."""
    torch.manual_seed(1)
    segments = torch.tensor(ids)
    x = torch.randint(4, 64, segments.shape)
    positions = torch.zeros_like(segments)
    for r in range(segments.size(0)):
        for t in range(1, segments.size(1)):
            positions[r, t] = 0 if segments[r, t] != segments[r, t - 1] else positions[r, t - 1] + 1
    targets = x.roll(-1, dims=1)
    targets[segments < 0] = -100  # padding is never a target
    return x, segments, positions, targets


PACKED_CASES = {
    # two pairs in one row, one pair + padding in the other: runs vs mask
    "pairs-and-padding": ([[1] * 25 + [2] * 15, [3] * 30 + [-1] * 10], ("runs", "mask")),
    # one pair per row from the first token: all three plans are exact
    "one-pair-per-row": ([[1] * 40, [3] * 30 + [-1] * 10], ("runs", "causal", "mask")),
    # no padding at all (the per-run path keeps every token)
    "no-padding": ([[1] * 25 + [2] * 15, [3] * 10 + [4] * 30], ("runs", "mask")),
    # an id that comes back later is a new run on every path
    "id-repeats": ([[1] * 12 + [2] * 16 + [1] * 12, [5] * 40], ("runs", "mask")),
}


@pytest.mark.parametrize("case", list(PACKED_CASES))
def test_packed_rows_give_the_same_loss_and_grads_on_every_plan(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model picks per forward how to attend within segments (per run with padding dropped,
    # causal over whole rows, or one mask); at dropout 0 every plan trains the same function.
    import gptmed.model.architecture as arch
    from gptmed.model.attention import SegmentRuns, plan_segments

    ids, plans = PACKED_CASES[case]
    cfg = get_tiny_config(vocab_size=64, max_seq_len=64).replace(dropout=0.0)
    torch.manual_seed(0)
    model = GPTTransformer(cfg)
    x, segments, positions, targets = _segmented(ids)
    attended = segments >= 0

    def run(plan: str) -> tuple[float, list[torch.Tensor], torch.Tensor]:
        seen: list[str] = []

        def forced(runs: SegmentRuns, b: int, t: int, width: int) -> str:
            seen.append(plan_segments(runs, b, t, width))
            return plan

        monkeypatch.setattr(arch, "plan_segments", forced)
        model.zero_grad()
        loss = model(x, targets=targets, segment_ids=segments, position_ids=positions)
        loss.backward()
        assert len(seen) == 1  # the plan was asked for (the model's own choice is in `seen`)
        with torch.no_grad():
            h, presents = model.hidden_states(x, segment_ids=segments, position_ids=positions)
        assert presents == ()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters()], h

    results = {plan: run(plan) for plan in plans}
    loss_ref, g_ref, h_ref = results["mask"]
    for plan in plans:
        loss, grads, h = results[plan]
        assert loss == pytest.approx(loss_ref, rel=1e-6), plan
        for a, b in zip(grads, g_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(h[attended], h_ref[attended], atol=1e-5, rtol=1e-4)
    assert (results["runs"][2][~attended] == 0).all()  # padding outputs: zeros on the per-run path
    with pytest.raises(ValueError, match="cannot be combined with use_cache"):
        model(x, segment_ids=segments, use_cache=True)


def test_rows_of_padding_only_do_not_break_the_packed_path() -> None:
    cfg = get_tiny_config(vocab_size=64, max_seq_len=64).replace(dropout=0.0)
    model = GPTTransformer(cfg)
    x = torch.randint(4, 64, (2, 8))
    segments = torch.full((2, 8), -1)
    targets = torch.full((2, 8), -100)
    loss = model(x, targets=targets, segment_ids=segments)  # nothing to attend or to learn
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def _flatten(
    x: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, bucket: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The trainer's flat layout: padding dropped, one row (1, N), N rounded up to `bucket` with
    padding tokens (segment -1, target -100)."""
    keep = (segments >= 0).flatten()
    n = int(keep.sum())
    extra = -n % bucket

    def flat(t: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.cat([t.flatten()[keep], torch.full((extra,), fill, dtype=t.dtype)])[None]

    return flat(x, 0), flat(segments, -1), flat(positions, 0), flat(targets, -100)


def test_flat_row_of_a_batch_equals_its_rows_with_segment_ids() -> None:
    """A batch sent as one flat row (1, N), N > max_seq_len, padding dropped and bucket padding
    added, trains exactly like the same pairs in (B, T) rows with segment ids."""
    cfg = get_tiny_config(vocab_size=64, max_seq_len=40).replace(dropout=0.0)
    torch.manual_seed(0)
    model = GPTTransformer(cfg)
    x, segments, positions, targets = _segmented(
        [[1] * 25 + [2] * 15, [3] * 7 + [4] * 22 + [-1] * 11, [5] * 40, [-1] * 40]
    )
    fx, fseg, fpos, fy = _flatten(x, segments, positions, targets, bucket=16)
    assert fx.size(1) > cfg.max_seq_len and fx.size(1) % 16 == 0

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        ids, seg, pos, y = args
        loss = model(ids, targets=y, segment_ids=seg, position_ids=pos)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    rows_loss, rows_grads = run(x, segments, positions, targets)
    flat_loss, flat_grads = run(fx, fseg, fpos, fy)
    torch.testing.assert_close(flat_loss, rows_loss, atol=1e-6, rtol=1e-6)
    for a, b in zip(flat_grads, rows_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        h_rows, _ = model.hidden_states(x, segment_ids=segments, position_ids=positions)
        h_flat, _ = model.hidden_states(fx, segment_ids=fseg, position_ids=fpos)
    attended = segments >= 0
    torch.testing.assert_close(h_flat[0, : int(attended.sum())], h_rows[attended], atol=1e-5, rtol=1e-5)


def test_rows_longer_than_the_context_need_segments_and_positions() -> None:
    cfg = get_tiny_config(vocab_size=64, max_seq_len=16).replace(dropout=0.0)
    model = GPTTransformer(cfg)
    x = torch.randint(0, 64, (1, 24))
    segments = torch.tensor([[0] * 12 + [1] * 12])
    positions = torch.cat([torch.arange(12), torch.arange(12)])[None]
    with pytest.raises(ValueError, match="sequence too long.*pass segment_ids and position_ids"):
        model(x)
    with pytest.raises(ValueError, match="needs position_ids"):
        model(x, segment_ids=segments)
    with pytest.raises(ValueError, match="segment_ids must be an integer tensor"):
        model(x, segment_ids=segments.float(), position_ids=positions)
    long_segment = torch.tensor([[0] * 4 + [1] * 20])
    with pytest.raises(ValueError, match="a segment of 20 tokens > max_seq_len 16"):
        model(x, segment_ids=long_segment, position_ids=positions)
    assert model(x, segment_ids=segments, position_ids=positions).shape == (1, 24, 64)


def test_compiled_flat_row_attends_block_locally_without_recompiling() -> None:
    """Under torch.compile (no host sync, no data-dependent shapes) a flat row longer than the
    context takes the block-local mask on the sdpa backend: eager's loss, one graph for every
    segment layout of the same length."""
    from torch._dynamo.testing import CompileCounterWithBackend

    cfg = tiny(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab=61, seq=16)
    model = GPTTransformer(cfg)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    for lengths in ([5, 16, 9, 12], [16, 1, 16, 7, 2]):
        segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((6,), -1)])
        positions = torch.cat([torch.arange(n) for n in lengths] + [torch.zeros(6, dtype=torch.long)])
        x = torch.randint(0, 61, (1, 48))
        targets = x.roll(-1, 1).masked_fill(segments[None] < 0, -100)
        kw = dict(targets=targets, segment_ids=segments[None], position_ids=positions[None])
        with use_backend("sdpa"):
            loss = compiled(x, **kw)
            eager = model(x, **kw)  # eager CPU: per run
        torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1
