"""``GPTTransformer``: a pre-norm GPT decoder (nanoGPT's shape, with RoPE and a KV cache).

Shapes use one vocabulary: B batch, T new tokens, P cached (past) tokens, S = P + T keys,
C = d_model, nh heads, hs = head_dim = C // nh, V vocab.

State-dict keys (stable: checkpoints and the ONNX exporter rely on them)::

    tok_emb.weight                       (V, C)   also the output projection (tied)
    pos_emb.weight                       (max_seq_len, C)   only when use_rope=False
    blocks.{i}.ln1.weight / .bias        (C,)
    blocks.{i}.attn.qkv.weight / .bias   (3C, C) / (3C,)   rows: [q heads | k heads | v heads]
    blocks.{i}.attn.proj.weight / .bias  (C, C) / (C,)
    blocks.{i}.ln2.weight / .bias        (C,)
    blocks.{i}.mlp.fc.weight / .bias     (d_ff, C) / (d_ff,)
    blocks.{i}.mlp.proj.weight / .bias   (C, d_ff) / (C,)
    ln_f.weight / .bias                  (C,)

RoPE tables are non-persistent buffers (never in the state dict).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from gptmed.core import CheckpointError
from gptmed.core.config import ModelConfig
from gptmed.model.attention import (
    SegmentBounds,
    SegmentRuns,
    attention,
    plan_segments,
    runs_attention,
    segment_bounds,
    segment_runs,
    select_backend,
)
from gptmed.model.loss import linear_cross_entropy
from gptmed.model.ops import Dropout, apply_rope, is_tracing, rope

__all__ = ["GPTTransformer", "KVCache", "apply_rope", "clean_state_dict", "rope_tables", "unwrap"]

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` without ``_orig_mod.`` (torch.compile) / ``module.`` (DDP) prefixes."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile (``_orig_mod``) and DDP/DataParallel (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module) and type(model).__name__ in (
            "DistributedDataParallel",
            "DataParallel",
            "FullyShardedDataParallel",
        ):
            model = inner
            continue
        return model


def rope_tables(max_seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables, each (max_seq_len, head_dim // 2), float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))  # (hs/2,)
    t = torch.arange(max_seq_len, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)  # (max_seq_len, hs/2)
    return freqs.cos().float(), freqs.sin().float()


def _splits_runs(t: torch.Tensor) -> bool:
    """Packed rows may be split into runs: eager mode on the CPU, unless the fused kernel is forced
    (the Triton interpreter in tests). Under torch.compile the run lengths would be data-dependent
    shapes, and on CUDA the split costs a host sync per forward and a launch per run: there the
    segment layout stays on the device (:func:`segment_bounds`) and the fused kernel reads it."""
    return t.device.type == "cpu" and not is_tracing() and select_backend() != "fused"


def _reads_values(t: torch.Tensor) -> bool:
    """Whether input checks may read tensor values: always on the CPU; on an accelerator not while
    training (with grad), where reading a value back would stall the step until the GPU catches up."""
    return t.device.type == "cpu" or not torch.is_grad_enabled()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.use_rope = config.use_rope
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # fused q, k, v
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_drop = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        cos: torch.Tensor | None,  # (1 or B, T, 1, 1, hs/2) or None without RoPE
        sin: torch.Tensor | None,
        mask: torch.Tensor | SegmentRuns | SegmentBounds | None,  # bool (B, 1, T, S); or packed rows
        past: tuple[torch.Tensor, torch.Tensor] | None,  # k, v: (B, nh, P, hs)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim)  # (B, T, 3, nh, hs)
        qk, v = qkv.split((2, 1), dim=2)  # (B, T, 2, nh, hs), (B, T, 1, nh, hs): views
        if cos is not None and sin is not None:
            # cast the tables to the activations' dtype (bf16 under autocast: q, k, v must agree)
            qk = rope(qk, cos.to(qk.dtype), sin.to(qk.dtype))  # q and k rotated in one pass
        q, k = qk.unbind(2)  # (B, T, nh, hs)
        v = v.squeeze(2)
        if isinstance(mask, SegmentRuns):  # packed training rows, no past
            n = (B * T, self.n_heads, self.head_dim)
            y = runs_attention(q.reshape(n), k.reshape(n), v.reshape(n), mask)  # (B * T, nh, hs)
            return self.resid_drop(self.proj(y.view(B, T, C))), (k.transpose(1, 2), v.transpose(1, 2))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, nh, S, hs)
            v = torch.cat((past[1], v), dim=2)
        if isinstance(mask, SegmentBounds):  # packed rows, no past
            y = attention(q, k, v, causal=True, segments=mask)  # (B, nh, T, hs)
        else:
            y = attention(q, k, v, causal=True, mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # a view when y is (B, T, nh, hs) memory (the fused kernel)
        return self.resid_drop(self.proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)
        self.drop = Dropout(config.dropout)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"  # F.gelu's argument

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        out: torch.Tensor = self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))
        return out


class Block(nn.Module):
    """Pre-norm: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        mask: torch.Tensor | SegmentRuns | SegmentBounds | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln1(x), cos, sin, mask, past)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, present


class GPTTransformer(nn.Module):
    """GPT decoder: token embedding (+ learned positions or RoPE), ``n_layers`` pre-norm blocks,
    final LayerNorm, output projection tied to the token embedding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"GPTTransformer needs a gptmed.core.ModelConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = None if config.use_rope else nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        if config.use_rope:
            cos, sin = rope_tables(config.max_seq_len, config.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = None
            self.rope_sin = None
        self.reset_parameters()
        self._register_load_state_dict_pre_hook(self._strip_wrapper_prefixes)  # type: ignore[no-untyped-call]
        self._register_load_state_dict_pre_hook(self._check_shapes, with_module=True)  # type: ignore[no-untyped-call]

    # -- init ------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 L)."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_"):
                nn.init.ones_(p)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    @staticmethod
    def _strip_wrapper_prefixes(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in list(state_dict):
            rest = key[len(prefix) :] if key.startswith(prefix) else None
            if rest is None:
                continue
            clean = next(iter(clean_state_dict({rest: None})))
            if clean != rest:
                state_dict[prefix + clean] = state_dict.pop(key)

    @staticmethod
    def _check_shapes(module: GPTTransformer, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """A checkpoint of another shape (e.g. trained with a 4000-piece tokenizer, loaded into
        ``get_small_config()``'s 8000): one error naming the config field and the fix, instead of
        torch's list of size mismatches."""
        own = {prefix + name: t for name, t in (*module.named_parameters(), *module.named_buffers())}
        wrong = [
            (key, tuple(value.shape), tuple(own[key].shape))
            for key, value in state_dict.items()
            if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape)
        ]
        if not wrong:
            return
        cfg = module.config
        differ = []
        theirs = next((shape for key, shape, _ in wrong if key == prefix + "tok_emb.weight"), None)
        if theirs is not None:  # (vocab_size, d_model): the settings users change
            pairs = (("vocab_size", theirs[0], cfg.vocab_size), ("d_model", theirs[1], cfg.d_model))
            differ = [
                f"{name} {a} in the checkpoint, {b} in this model's config" for name, a, b in pairs if a != b
            ]
        key, shape, mine = wrong[0]
        what = "; ".join(differ) or f"{key} is {shape} in the checkpoint, {mine} in this model"
        raise CheckpointError(
            f"the checkpoint does not fit this model: {what}; tensors of another shape: {len(wrong)}",
            hint="build the model from the checkpoint's own config: "
            "GPTTransformer(ModelConfig.from_dict(checkpoint['model_config']))",
        )

    # -- facts -----------------------------------------------------------------------------------
    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters (the tied output projection counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on Linear weights; none on biases, LayerNorms and embeddings."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_matrix = p.dim() >= 2 and not name.startswith(("tok_emb.", "pos_emb."))
            (decay if is_matrix else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # -- checks ----------------------------------------------------------------------------------
    def _validate(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        past_key_values: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
        past_len: int,
        targets: torch.Tensor | None,
        segment_ids: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids has 0 tokens; need at least 1")
        self._validate_segments(input_ids, position_ids, segment_ids, past_len)
        if past_len + T > cfg.max_seq_len and segment_ids is None:
            raise ValueError(
                f"sequence too long: {past_len} cached + {T} new = {past_len + T} tokens "
                f"> max_seq_len {cfg.max_seq_len} (a packed row of several segments may be longer: "
                "pass segment_ids and position_ids)"
            )
        reads = _reads_values(input_ids)
        if reads and input_ids.numel():
            lo, hi = torch.aminmax(input_ids)
            if int(lo) < 0 or int(hi) >= cfg.vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {cfg.vocab_size}), got min {int(lo)}, max {int(hi)}"
                )
        if position_ids is not None:
            if tuple(position_ids.shape) != (B, T):
                raise ValueError(
                    f"position_ids shape {tuple(position_ids.shape)} != input_ids shape {(B, T)}"
                )
            if reads:
                lo, hi = torch.aminmax(position_ids)
                if int(lo) < 0 or int(hi) >= cfg.max_seq_len:
                    raise ValueError(
                        f"position_ids must be in [0, {cfg.max_seq_len}), got min {int(lo)}, max {int(hi)}"
                    )
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past_len + T):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != (batch, past + new) = "
                f"{(B, past_len + T)}"
            )
        if past_key_values is not None:
            if len(past_key_values) != cfg.n_layers:
                raise ValueError(
                    f"past_key_values has {len(past_key_values)} layers, the model has {cfg.n_layers}"
                )
            want = (B, cfg.n_heads, past_len, cfg.head_dim)
            for i, kv in enumerate(past_key_values):
                if len(kv) != 2 or tuple(kv[0].shape) != want or tuple(kv[1].shape) != want:
                    shapes = [tuple(t.shape) for t in kv]
                    raise ValueError(f"past_key_values[{i}] shapes {shapes}, expected (k, v) each {want}")
        if targets is not None and tuple(targets.shape) != (B, T):
            raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape {(B, T)}")

    def _validate_segments(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        segment_ids: torch.Tensor | None,
        past_len: int,
    ) -> None:
        """segment_ids: input_ids' shape, integer, no past. A row longer than max_seq_len (a flat
        batch of packed pairs) needs position_ids, and none of its segments may be longer than
        max_seq_len (each is one sequence: its positions restart at 0)."""
        if segment_ids is None:
            return
        shape = tuple(input_ids.shape)
        if tuple(segment_ids.shape) != shape or past_len:
            raise ValueError(
                f"segment_ids must have input_ids' shape {shape} and no past, got "
                f"{tuple(segment_ids.shape)} with {past_len} cached tokens"
            )
        if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
            raise ValueError(f"segment_ids must be an integer tensor, got {segment_ids.dtype}")
        limit, n = self.config.max_seq_len, shape[1]
        if n <= limit:
            return
        if position_ids is None:
            raise ValueError(
                f"a packed row of {n} tokens > max_seq_len {limit} needs position_ids "
                "(restarting at 0 in each segment)"
            )
        if _reads_values(segment_ids):
            bounds = segment_bounds(segment_ids, limit)
            index = torch.arange(n, device=segment_ids.device, dtype=torch.int32)
            longest = int(torch.where(bounds.attended(), index - bounds.lo + 1, 0).max())
            if longest > limit:
                raise ValueError(
                    f"a segment of {longest} tokens > max_seq_len {limit} in a packed row: "
                    "each segment is one sequence, at most max_seq_len tokens"
                )

    # -- forward ---------------------------------------------------------------------------------
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Final-LayerNorm output (B, T, C) and the per-layer (k, v) presents (B, nh, S, hs).

        segment_ids: (B, T) int or None. Tokens attend only to tokens of their own segment (packed
        training rows: one segment per Q&A pair, so no pair sees the pair before it). Segments are
        contiguous runs of one id; a negative id marks padding, which attends to nothing and whose
        outputs are unspecified (give them target -100). A batch may come as one flat row (1, N)
        longer than max_seq_len, padding dropped, with position_ids restarting per segment. On the
        eager CPU path attention runs per segment when that is cheaper than a (B, 1, T, T) mask;
        elsewhere the layout stays on the device (the fused kernel's segment mode, or a mask).
        With segment_ids the presents are not returned (an empty tuple: training has no cache).
        """
        B, T = input_ids.shape
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        x = self.tok_emb(input_ids)  # (B, T, C)
        cos = sin = None
        if self.rope_cos is not None and self.rope_sin is not None:
            if position_ids is None:
                cos = self.rope_cos[past_len : past_len + T].view(1, T, 1, 1, -1)  # (1, T, 1, 1, hs/2)
                sin = self.rope_sin[past_len : past_len + T].view(1, T, 1, 1, -1)
            else:
                cos = F.embedding(position_ids, self.rope_cos).unsqueeze(2).unsqueeze(2)  # (B, T, 1, 1, hs/2)
                sin = F.embedding(position_ids, self.rope_sin).unsqueeze(2).unsqueeze(2)
        elif self.pos_emb is not None:
            if position_ids is None:
                x = x + self.pos_emb.weight[past_len : past_len + T]  # (T, C) broadcast
            else:
                x = x + self.pos_emb(position_ids)
        x = self.drop(x)
        key_mask = None if attention_mask is None else (attention_mask != 0).view(B, 1, 1, -1)  # (B, 1, 1, S)
        keep: torch.Tensor | SegmentBounds | None = key_mask
        if segment_ids is not None:
            if key_mask is None and _splits_runs(x):  # eager CPU: maybe per run, padding dropped
                runs = segment_runs(segment_ids)
                plan = plan_segments(runs, B, T, self.config.d_model)
                if plan == "mask" and self.config.max_seq_len < T:  # never a T x T mask for a long row
                    plan = "runs"
                if plan == "runs":
                    return self._packed_hidden_states(x, cos, sin, runs), ()
                if plan == "mask":
                    keep = segment_bounds(segment_ids, self.config.max_seq_len)
            else:
                bounds = segment_bounds(segment_ids, self.config.max_seq_len)  # on the device, no sync
                keep = bounds if key_mask is None else key_mask & bounds.keep_mask()  # (B, 1, T, T)
        presents = []
        for i, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, cos, sin, keep, past)
            presents.append(present)
        return self.ln_f(x), (tuple(presents) if segment_ids is None else ())

    def _packed_hidden_states(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, runs: SegmentRuns
    ) -> torch.Tensor:
        """The blocks over packed rows as one (1, N, C) sequence of runs, padding tokens dropped
        (they cost no projection, MLP or attention); the result is (B, T, C), zeros at padding."""
        B, T, C = x.shape
        index = runs.token_index(x.device) if runs.padding() else None

        def flat(t: torch.Tensor) -> torch.Tensor:  # (B or 1, T, ...) -> (1, N, ...)
            t = t.expand(B, *t.shape[1:]).reshape(B * T, *t.shape[2:])
            return (t if index is None else t.index_select(0, index)).unsqueeze(0)

        x = flat(x)
        cos = None if cos is None else flat(cos)
        sin = None if sin is None else flat(sin)
        packed = runs if index is None else runs.attended()
        for block in self.blocks:
            x, _ = block(x, cos, sin, packed, None)
        h: torch.Tensor = self.ln_f(x)[0]  # (N, C)
        if index is not None:
            h = torch.zeros(B * T, C, dtype=h.dtype, device=h.device).index_copy(0, index, h)
        return h.view(B, T, C)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        use_cache: bool = False,
        targets: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> Any:
        """Logits for every position, or for the last ``logits_to_keep`` ones (0: all; Hugging
        Face's argument: a prefill needs only the last position's).

        input_ids: (B, T) int64. position_ids: (B, T), default ``arange(P, P + T)``.
        attention_mask: (B, P + T) 0/1 or bool, 0 = padded key (left padding); default all ones.
        past_key_values: ``n_layers`` tuples (k, v), each (B, nh, P, hs).

        Returns logits (B, T, V) float, (B, min(logits_to_keep, T), V) with ``logits_to_keep``;
        with ``use_cache`` a pair (logits, presents), presents being ``n_layers`` tuples (k, v)
        each (B, nh, P + T, hs).
        With ``targets`` (B, T) int64 (``-100`` = ignore) it returns the mean cross-entropy loss (a
        scalar) computed in chunks without materialising the logits (faster, less memory); the
        trainer's path.
        segment_ids (B, T) int, training only (no past): attention stays inside each segment, so packed
        Q&A pairs do not attend to one another (pass position_ids that restart per segment too).
        With segment_ids and position_ids, T may exceed max_seq_len (a whole batch as one flat row
        (1, N), padding dropped); each segment stays at most max_seq_len tokens.

        Input values (token ids, positions, segment lengths) are checked on the CPU and whenever
        grad is off; on an accelerator during training only shapes and dtypes are, since reading a
        value back would stall every step (CUDA's embedding asserts on an out-of-range id itself).
        """
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if not is_tracing():
            self._validate(
                input_ids, position_ids, attention_mask, past_key_values, past_len, targets, segment_ids
            )
            if segment_ids is not None and use_cache:
                raise ValueError("segment_ids is for training: it cannot be combined with use_cache")
            if logits_to_keep < 0 or (logits_to_keep and targets is not None):
                raise ValueError(
                    f"logits_to_keep must be >= 0 and cannot be combined with targets, got {logits_to_keep}"
                )
        h, presents = self.hidden_states(
            input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            segment_ids=segment_ids,
        )
        if targets is not None:
            return linear_cross_entropy(h, self.tok_emb.weight, targets)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = F.linear(h, self.tok_emb.weight)  # (B, T, V) or (B, logits_to_keep, V), tied weights
        if use_cache:
            return logits, presents
        return logits
