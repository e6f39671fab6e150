"""``ModelConfig`` with its presets, and ``GenerationConfig``.

Both are frozen dataclasses validated on construction: a bad value raises ``ValueError`` (a
:class:`~gptmed.core.errors.ConfigError`) that names the numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from gptmed.core.errors import ConfigError
from gptmed.core.template import DEFAULT_STOP

__all__ = [
    "ACTIVATIONS",
    "PRESETS",
    "GenerationConfig",
    "ModelConfig",
    "get_config",
    "get_medium_config",
    "get_small_config",
    "get_tiny_config",
]


# "gelu" is the default: same shape as GPT-2's tanh approximation (within 1e-3), and torch's CPU
# kernels for it are ~3x faster (forward 1.6 vs 7.8 ms, backward 3.1 vs 6.2 ms on an (8, 512, 1024)
# activation, 2 threads).
ACTIVATIONS = ("gelu", "gelu_tanh")


def _from_known_fields(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known: {sorted(known)}")
    return dict(data)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape of a ``GPTTransformer``. The fields are the user manual's."""

    vocab_size: int = 8000  # tokenizer vocabulary, special ids included
    d_model: int = 256  # hidden width
    n_layers: int = 10  # transformer blocks
    n_heads: int = 4  # attention heads; d_model must be divisible by it
    d_ff: int = 1024  # feed-forward inner width
    max_seq_len: int = 512  # longest sequence (prompt + answer) the model accepts
    dropout: float = 0.1  # dropout on attention output, MLP output and embeddings
    use_rope: bool = True  # rotary position embeddings (True) or learned absolute positions
    activation: str = "gelu"  # MLP activation: "gelu" (exact, erf) or "gelu_tanh" (GPT-2's approximation)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.vocab_size < 8:
            raise ConfigError(f"ModelConfig.vocab_size must be at least 8, got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.use_rope and self.head_dim % 2:
            raise ConfigError(
                f"RoPE needs an even head dim, got d_model/n_heads = {self.d_model}/{self.n_heads} = {self.head_dim}"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.use_rope, bool):
            raise ConfigError(f"ModelConfig.use_rope must be a bool, got {self.use_rope!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"ModelConfig.activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_parameters(self) -> int:
        """Parameter count of the standard GPTTransformer built from this config (tied embeddings)."""
        d, f = self.d_model, self.d_ff
        per_layer = (
            2 * 2 * d  # two LayerNorms (weight + bias)
            + d * 3 * d
            + 3 * d  # fused qkv projection
            + d * d
            + d  # attention output projection
            + d * f
            + f
            + f * d
            + d  # MLP
        )
        emb = self.vocab_size * d + (0 if self.use_rope else self.max_seq_len * d)
        return emb + self.n_layers * per_layer + 2 * d  # + final LayerNorm

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_from_known_fields(cls, data, "ModelConfig"))


def get_tiny_config(vocab_size: int = 8000, max_seq_len: int = 512) -> ModelConfig:
    """~2M parameters: for tests and smoke runs."""
    return ModelConfig(vocab_size, d_model=128, n_layers=5, n_heads=4, d_ff=512, max_seq_len=max_seq_len)


def get_small_config(vocab_size: int = 8000, max_seq_len: int = 512) -> ModelConfig:
    """~10M parameters: the recommended default."""
    return ModelConfig(vocab_size, d_model=256, n_layers=10, n_heads=4, d_ff=1024, max_seq_len=max_seq_len)


def get_medium_config(vocab_size: int = 8000, max_seq_len: int = 512) -> ModelConfig:
    """~50M parameters: for a GPU."""
    return ModelConfig(vocab_size, d_model=512, n_layers=15, n_heads=8, d_ff=2048, max_seq_len=max_seq_len)


PRESETS = {"tiny": get_tiny_config, "small": get_small_config, "medium": get_medium_config}
DEFAULT_MODEL_SIZE = "small"  # the preset when none is given (gptmed-model info, gptmed-train)


def get_config(size: str, vocab_size: int = 8000, max_seq_len: int = 512) -> ModelConfig:
    """The preset called ``size`` (tiny, small, medium)."""
    try:
        builder = PRESETS[size]
    except KeyError:
        raise ConfigError(f"unknown model size {size!r}; choose one of {sorted(PRESETS)}") from None
    return builder(vocab_size=vocab_size, max_seq_len=max_seq_len)


def _show(value: object) -> str:
    """``repr(value)``, shortened for huge integers (the repr of one over 4,300 digits raises)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _finite(name: str, value: object) -> float:
    number = math.nan
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() <= 1023:
        number = float(value)  # wider ints overflow float
    elif isinstance(value, float):
        number = value
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {_show(value)}")
    return number


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """How answers are sampled. ``temperature=0`` is greedy decoding."""

    temperature: float = 0.7  # 0 = greedy; higher = more random
    top_k: int = 50  # sample from the k most likely tokens; 0 = no limit
    top_p: float = 0.9  # nucleus sampling: smallest set with this much probability; 1 = no limit
    max_length: int = 100  # new tokens to generate at most (the prompt does not count)
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or answer (CTRL: logit / or *)
    stop: tuple[str, ...] = DEFAULT_STOP  # generation ends before any of these strings
    seed: int | None = None  # fixes sampling; the same seed gives the same text
    # subtracted from a logit once per earlier use of its token in the answer; 0.5 makes greedy
    # answers end (EOS 32% -> 98%) instead of looping (docs/inference.md, "Answers that end")
    frequency_penalty: float = 0.5
    presence_penalty: float = 0.0  # subtracted from a logit whose token the answer already holds
    no_repeat_ngram_size: int = 0  # n > 0: the answer never repeats one of its n-grams of tokens; 0 = off

    def __post_init__(self) -> None:
        if _finite("temperature", self.temperature) < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {_show(self.top_k)}")
        top_p = _finite("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length <= 0:
            raise ConfigError(f"max_length must be a positive integer, got {_show(self.max_length)}")
        if _finite("repetition_penalty", self.repetition_penalty) <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= _finite(name, getattr(self, name)) <= 2.0:
                raise ConfigError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        size = self.no_repeat_ngram_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"no_repeat_ngram_size must be an integer >= 0, got {_show(size)}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ConfigError(f"seed must be an integer >= 0 or None, got {_show(self.seed)}")

    def replace(self, **changes: Any) -> GenerationConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        data = _from_known_fields(cls, data, "GenerationConfig")
        if "stop" in data:
            data["stop"] = tuple(data["stop"])
        return cls(**data)
