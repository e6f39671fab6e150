"""The one sampling implementation (numpy) behind every backend.

``Sampler.next_tokens(logits)`` turns the last-position logits of a batch into the next token per
row: repetition penalty, then greedy (``temperature == 0``) or temperature / top-k / top-p
sampling. Each row draws from its own ``numpy.random.Generator`` seeded with the seed, so a
seeded question gets the same answer alone, in a batch of any size, or streamed. The ONNX and the
torch backends both hand their logits to this code, so a greedy run is token-for-token the same
on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gptmed.core import GenerationConfig

__all__ = ["Sampler", "make_config"]


def make_config(base: GenerationConfig | None = None, **overrides: Any) -> GenerationConfig:
    """``base`` with the non-``None`` ``overrides`` applied, validated.

    A bad value raises ``ValueError`` (``gptmed.core.ConfigError``) naming the parameter, e.g.
    ``temperature must be >= 0, got -1``; NaN and inf are refused the same way.
    """
    cfg = base or GenerationConfig()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "stop" in changes and isinstance(changes["stop"], str):
        changes["stop"] = (changes["stop"],)
    if "max_tokens" in changes:  # OpenAI spelling
        changes["max_length"] = changes.pop("max_tokens")
    return cfg.replace(**changes) if changes else cfg


class Sampler:
    """Picks next tokens for a batch of ``batch`` rows over a vocabulary of ``vocab`` ids.

    ``history`` (the prompt ids of each row) seeds the repetition penalty; every chosen token is
    added to it. Not thread-safe: one Sampler per generation call.
    """

    def __init__(
        self,
        config: GenerationConfig,
        batch: int,
        vocab: int,
        history: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.config = config
        self.vocab = vocab
        self.rngs = [np.random.default_rng(config.seed) for _ in range(batch)]  # one per row
        self._penalty = float(config.repetition_penalty)
        self._seen: np.ndarray | None = None  # (B, V) bool, only with a penalty
        if self._penalty != 1.0:
            self._seen = np.zeros((batch, vocab), dtype=bool)
            for row, ids in enumerate(history or ()):
                if len(ids):
                    self._seen[row, np.asarray(ids, dtype=np.int64)] = True

    def next_tokens(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` (B, V) float -> (B,) int64 token ids."""
        if logits.ndim != 2 or logits.shape[1] != self.vocab:
            raise ValueError(f"logits must be (B, {self.vocab}), got {logits.shape}")
        cfg = self.config
        if cfg.temperature == 0 and self._seen is None:  # plain greedy reads the logits only
            return np.asarray(np.argmax(logits, axis=-1), dtype=np.int64)
        # float64, and inf clipped to the largest finite value: a penalty or temperature near 0
        # (1e-300) scales logits past float32's range, and inf - inf would make NaN probabilities.
        # Overflow to +-inf and underflow to 0 are the intended results there, not warnings.
        with np.errstate(over="ignore", under="ignore"):
            scores = logits.astype(np.float64)  # (B, V)
            if self._seen is not None:
                penalised = np.where(scores > 0, scores / self._penalty, scores * self._penalty)
                scores = np.where(self._seen, penalised, scores)
            big = np.finfo(np.float64).max
            scores = np.clip(scores, -big, big)
            if cfg.temperature == 0:
                tokens = np.argmax(scores, axis=-1).astype(np.int64)
            else:
                tokens = self._sample(scores)
        if self._seen is not None:
            self._seen[np.arange(len(tokens)), tokens] = True
        return np.asarray(tokens, dtype=np.int64)

    def _sample(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` (B, V) finite float64 before temperature -> sampled (B,) ids."""
        cfg = self.config
        batch, vocab = scores.shape
        k = cfg.top_k
        if 0 < k < vocab:
            kth = np.partition(scores, vocab - k, axis=-1)[:, vocab - k : vocab - k + 1]  # (B, 1)
            scores = np.where(scores < kth, -np.inf, scores)
        # The max is subtracted before dividing by the temperature, so every value is <= 0 and
        # the best is exactly 0 even when the temperature is tiny (then this is greedy).
        scores = (scores - scores.max(axis=-1, keepdims=True)) / cfg.temperature
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)  # (B, V)
        if cfg.top_p < 1.0:
            order = np.argsort(-probs, axis=-1, kind="stable")  # (B, V)
            sorted_p = np.take_along_axis(probs, order, axis=-1)
            before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of strictly better tokens
            drop_sorted = before >= float(cfg.top_p)  # keeps the smallest set reaching top_p (>= 1 token)
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, axis=-1)
            probs = np.where(drop, 0.0, probs)
            probs /= probs.sum(axis=-1, keepdims=True)
        cdf = np.cumsum(probs, axis=-1)  # (B, V)
        u = np.array([[rng.random()] for rng in self.rngs]) * cdf[:, -1:]  # (B, 1)
        tokens = (cdf <= u).sum(axis=-1)
        # Never land on a zero-probability token at the top end through rounding.
        tokens = np.minimum(tokens, vocab - 1)
        bad = probs[np.arange(batch), tokens] == 0
        if bad.any():
            tokens[bad] = np.argmax(probs[bad], axis=-1)
        return np.asarray(tokens, dtype=np.int64)
