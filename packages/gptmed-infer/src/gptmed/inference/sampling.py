"""The one sampling implementation (numpy) behind every backend.

``Sampler.next_tokens(logits)`` turns the last-position logits of a batch into the next token per
row. In order: the repetition penalty (CTRL: a logit of a token already in the prompt or the
answer is divided by the penalty when positive, multiplied when negative), the frequency and
presence penalties (OpenAI: subtracted once per earlier use in the answer, and once if used at
all), the no-repeat n-gram rule (a token that would complete an n-gram the answer already holds
is never chosen), then greedy (``temperature == 0``) or temperature / top-k / top-p sampling. The
penalties and the n-gram rule apply to greedy decoding as well. Each row draws from its own
``numpy.random.Generator`` seeded with the seed, so a seeded question gets the same answer alone,
in a batch of any size, or streamed: its logits do not change with the batch (both graphs; the
int8 graph's activation scales are fixed at export). The ONNX and the torch backends (and the server) all hand
their logits to this code, so a greedy run is token-for-token the same on both.
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
    added to it, and to the row's answer, which the frequency / presence penalties and the
    no-repeat n-gram rule look at. Not thread-safe: one Sampler per generation call.
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
        self._counts: np.ndarray | None = None  # (B, V) uses of each token in the answer so far
        self._used: list[int] = []  # flat (row * vocab + id) of every count above 0: the penalised
        if config.frequency_penalty or config.presence_penalty:
            self._counts = np.zeros((batch, vocab), dtype=np.int32)
        self._ngram = int(config.no_repeat_ngram_size)
        self._answers: list[list[int]] = [[] for _ in range(batch)]  # chosen ids, with the n-gram rule
        self._followers: list[dict[tuple[int, ...], set[int]]] = [
            {} for _ in range(batch)
        ]  # (n-1)-gram -> next ids

    @property
    def _plain(self) -> bool:
        """Nothing but the logits decides (greedy can skip the float64 copy)."""
        return self._seen is None and self._counts is None and not self._ngram

    def next_tokens(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` (B, V) float -> (B,) int64 token ids."""
        if logits.ndim != 2 or logits.shape[1] != self.vocab:
            raise ValueError(f"logits must be (B, {self.vocab}), got {logits.shape}")
        cfg = self.config
        if cfg.temperature == 0 and self._plain:  # plain greedy reads the logits only
            return np.asarray(np.argmax(logits, axis=-1), dtype=np.int64)
        # float64, and inf clipped to the largest finite value: a penalty or temperature near 0
        # (1e-300) scales logits past float32's range, and inf - inf would make NaN probabilities.
        # Overflow to +-inf and underflow to 0 are the intended results there, not warnings.
        with np.errstate(over="ignore", under="ignore"):
            scores = logits.astype(np.float64)  # (B, V)
            if self._seen is not None:
                penalised = np.where(scores > 0, scores / self._penalty, scores * self._penalty)
                scores = np.where(self._seen, penalised, scores)
            if self._counts is not None:
                self._penalise_used(scores)
            if self._seen is not None or cfg.temperature != 0:  # greedy's argmax needs no clip
                big = np.finfo(np.float64).max
                scores = np.clip(scores, -big, big)
            if self._ngram:
                self._ban_repeats(scores)
            if cfg.temperature == 0:
                tokens = np.argmax(scores, axis=-1).astype(np.int64)
            else:
                tokens = self._sample(scores)
        self._record(tokens)
        return np.asarray(tokens, dtype=np.int64)

    def _penalise_used(self, scores: np.ndarray) -> None:
        """The frequency and presence penalties, in place on ``scores`` (B, V) float64: only the
        tokens the answers used so far change (a few hundred of B x V), so the cost does not grow
        with the vocabulary."""
        if not self._used:
            return
        assert self._counts is not None
        used = np.asarray(self._used, dtype=np.int64)
        flat = scores.reshape(-1)  # a view: scores is a fresh C-contiguous array
        if self.config.frequency_penalty:
            flat[used] -= self.config.frequency_penalty * self._counts.reshape(-1)[used]
        if self.config.presence_penalty:
            flat[used] -= self.config.presence_penalty

    def _ban_repeats(self, scores: np.ndarray) -> None:
        """``scores`` (B, V): -inf, in place, on each token that would repeat an n-gram of its row's
        answer; when that would be every token, the row is left as it is."""
        keep = self._ngram - 1  # the n-gram's first n - 1 ids are the answer's last n - 1
        for row, answer in enumerate(self._answers):
            if len(answer) >= keep:
                banned = self._followers[row].get(tuple(answer[len(answer) - keep :]))
                if banned and len(banned) < self.vocab:
                    scores[row, list(banned)] = -np.inf

    def _record(self, tokens: np.ndarray) -> None:
        """Add the chosen ``tokens`` (B,) to each row's history and answer."""
        if self._seen is not None:
            self._seen[np.arange(len(tokens)), tokens] = True
        # scalar updates: a row or a few per call, not worth numpy's fancy indexing
        if self._counts is not None:
            counts, vocab = self._counts, self.vocab
            for row, token in enumerate(tokens.tolist()):
                if counts[row, token] == 0:
                    self._used.append(row * vocab + token)
                counts[row, token] += 1
        if self._ngram:
            n = self._ngram
            for row, token in enumerate(tokens.tolist()):
                answer = self._answers[row]
                answer.append(token)
                if len(answer) >= n:
                    self._followers[row].setdefault(tuple(answer[len(answer) - n : -1]), set()).add(token)

    def _nucleus(self, probs: np.ndarray) -> None:
        """Top-p, in place on ``probs`` (B, V): each row keeps the smallest set of its most likely
        tokens whose mass reaches ``top_p`` (at least one), renormalised. Only the tokens with a
        probability above 0 are sorted (after top-k, k of them, not the vocabulary): the order,
        ties by id, and the sums are those of sorting the whole row."""
        top_p = float(self.config.top_p)
        for row in probs:
            candidates = np.flatnonzero(row)  # in id order
            p = row[candidates]
            order = np.argsort(-p, kind="stable")
            sorted_p = p[order]
            before = np.cumsum(sorted_p) - sorted_p  # mass of strictly better tokens
            row[candidates[order[before >= top_p]]] = 0.0
        probs /= probs.sum(axis=-1, keepdims=True)

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
            self._nucleus(probs)
        cdf = np.cumsum(probs, axis=-1)  # (B, V)
        u = np.array([[rng.random()] for rng in self.rngs]) * cdf[:, -1:]  # (B, 1)
        tokens = (cdf <= u).sum(axis=-1)
        # Never land on a zero-probability token at the top end through rounding.
        tokens = np.minimum(tokens, vocab - 1)
        bad = probs[np.arange(batch), tokens] == 0
        if bad.any():
            tokens[bad] = np.argmax(probs[bad], axis=-1)
        return np.asarray(tokens, dtype=np.int64)
