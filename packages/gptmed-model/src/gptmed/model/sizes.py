"""Parameter counts, FLOPs per token and memory estimates for a ``ModelConfig`` (no torch needed).

Counts are exact for :class:`~gptmed.model.architecture.GPTTransformer` (tested against the built
module). FLOPs follow the PaLM / nanoGPT convention: a matmul with ``n`` weights costs ``2 n`` FLOPs
per token forward and ``4 n`` backward, attention scores and values cost ``2 * 2 * L * T * C`` forward
per token at context ``T`` (the full square, causal masking not subtracted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gptmed.core.config import PRESETS, ModelConfig, get_config
from gptmed.core.errors import ConfigError

__all__ = ["SizeReport", "format_size_table", "preset_reports", "size_report"]

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class SizeReport:
    name: str
    params: int  # unique parameters (tied output projection counted once)
    non_embedding_params: int  # params minus token (and learned position) embeddings
    matmul_params: int  # weights used in matmuls per token, output projection included
    fwd_flops_per_token: int  # forward FLOPs per token at seq_len
    train_flops_per_token: int  # forward + backward = 3x forward
    weights_bytes: int  # parameters in `dtype`
    train_bytes: int  # estimate: fp32 master weights + grads + AdamW moments + activations
    activation_bytes: int  # estimate of activations kept for backward at batch_size x seq_len
    batch_size: int
    seq_len: int
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_report(
    config: ModelConfig,
    *,
    name: str = "custom",
    batch_size: int = 16,
    seq_len: int | None = None,
    dtype: str = "fp32",
) -> SizeReport:
    """Size facts of ``config`` at ``batch_size`` x ``seq_len`` (default: ``config.max_seq_len``)."""
    if dtype not in _BYTES:
        raise ConfigError(f"dtype must be one of {sorted(_BYTES)}, got {dtype!r}")
    T = config.max_seq_len if seq_len is None else seq_len
    if T <= 0 or config.max_seq_len < T:
        raise ConfigError(
            f"seq_len must be in [1, {config.max_seq_len}] (max_seq_len), got {T}",
            hint="pass a smaller --seq-len or a larger --max-seq-len",
        )
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    C, F, L, V = config.d_model, config.d_ff, config.n_layers, config.vocab_size
    params = config.num_parameters()
    emb = V * C + (0 if config.use_rope else config.max_seq_len * C)
    matmul = L * (C * 3 * C + C * C + 2 * C * F) + V * C
    fwd = 2 * matmul + 2 * 2 * L * T * C
    nb = _BYTES[dtype]
    tokens = batch_size * T
    # kept for backward, per token per layer: ln1 in/out, qkv, roped q/k, attention out, proj in,
    # ln2 in/out, fc out, gelu out (~12 C + 2 F values) + dropout masks (bytes) when dropout > 0
    per_tok_layer = (12 * C + 2 * F) * nb + (2 * C if config.dropout > 0 else 0)
    act = tokens * (L * per_tok_layer + 2 * C * nb)  # + embeddings / final norm; CE is chunked
    train = params * 16 + act  # fp32 weights 4 + grads 4 + AdamW m, v 8
    return SizeReport(
        name=name,
        params=params,
        non_embedding_params=params - emb,
        matmul_params=matmul,
        fwd_flops_per_token=fwd,
        train_flops_per_token=3 * fwd,
        weights_bytes=params * nb,
        train_bytes=train,
        activation_bytes=act,
        batch_size=batch_size,
        seq_len=T,
        dtype=dtype,
    )


def preset_reports(
    *,
    vocab_size: int = 8000,
    max_seq_len: int = 512,
    batch_size: int = 16,
    seq_len: int | None = None,
    dtype: str = "fp32",
) -> list[SizeReport]:
    """One :class:`SizeReport` per preset (tiny, small, medium)."""
    return [
        size_report(
            get_config(name, vocab_size=vocab_size, max_seq_len=max_seq_len),
            name=name,
            batch_size=batch_size,
            seq_len=seq_len,
            dtype=dtype,
        )
        for name in PRESETS
    ]


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.3g}E{unit}"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def format_size_table(reports: list[SizeReport]) -> str:
    """A plain-text table of reports."""
    if not reports:
        return ""
    r0 = reports[0]
    head = [
        "model",
        "params",
        "non-emb",
        "fwd FLOPs/tok",
        "train FLOPs/tok",
        f"weights ({r0.dtype})",
        f"train mem (B={r0.batch_size}, T={r0.seq_len})",
    ]
    rows = [
        [
            r.name,
            f"{r.params:,}",
            f"{r.non_embedding_params:,}",
            _human(r.fwd_flops_per_token),
            _human(r.train_flops_per_token),
            _mib(r.weights_bytes),
            _mib(r.train_bytes),
        ]
        for r in reports
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join(lines)
