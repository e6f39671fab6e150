"""The numpy sampler: parameter validation, greedy, top-k / top-p, penalty, seeds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from gptmed.core import ConfigError, GenerationConfig
from gptmed.inference.sampling import Sampler, make_config


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("top_k", -1),
        ("max_length", 0),
        ("max_length", -5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.nan),
        ("frequency_penalty", math.nan),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3.0),
        ("no_repeat_ngram_size", -1),
        ("no_repeat_ngram_size", 2.5),
        ("no_repeat_ngram_size", True),
    ],
)
def test_bad_sampling_parameter_names_it(param: str, value: float) -> None:
    with pytest.raises(ConfigError, match=param):
        make_config(None, **{param: value})


def _config(**fields: object) -> GenerationConfig:
    """A GenerationConfig without the default frequency penalty: each test here checks one rule."""
    return GenerationConfig(**{"frequency_penalty": 0.0, **fields})  # type: ignore[arg-type]


def test_default_frequency_penalty_makes_greedy_move_on() -> None:
    x = np.array([[2.0, 1.2, 0.0]], dtype=np.float32)
    assert GenerationConfig().frequency_penalty == 0.5
    # 0.5 per earlier use of a token in the answer: 0 (2.0), 0 (1.5), 1 (1.2 > 1.0), 0 (1.0 > 0.7)
    assert _greedy_run(GenerationConfig(temperature=0.0), x, 4) == [0, 0, 1, 0]
    assert _greedy_run(_config(temperature=0.0), x, 4) == [0, 0, 0, 0]  # raw logits: 0 for ever


def test_unset_parameters_keep_defaults() -> None:
    cfg = make_config(_config(temperature=0.3), temperature=None, top_k=7, stop="END")
    assert (cfg.temperature, cfg.top_k, cfg.stop) == (0.3, 7, ("END",))


def _logits(batch: int = 3, vocab: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, vocab)).astype(np.float32)


def test_temperature_zero_is_argmax() -> None:
    x = _logits()
    s = Sampler(_config(temperature=0.0), 3, 50)
    before = x.copy()
    tokens = s.next_tokens(x)
    assert np.array_equal(tokens, x.argmax(-1)) and tokens.dtype == np.int64
    assert np.array_equal(x, before)  # greedy reads the logits in place and never writes them


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    x = _logits(seed=1)
    for cfg in (
        _config(temperature=1.0, top_k=1, seed=3),
        _config(temperature=1.0, top_k=0, top_p=1e-9, seed=3),
    ):
        s = Sampler(cfg, 3, 50)
        for _ in range(5):
            assert np.array_equal(s.next_tokens(x), x.argmax(-1))


def test_top_k_never_samples_outside_the_k_best() -> None:
    x = _logits(batch=2, seed=2)
    top3 = np.argsort(-x, axis=-1)[:, :3]
    s = Sampler(_config(temperature=5.0, top_k=3, top_p=1.0, seed=0), 2, 50)
    for _ in range(200):
        tok = s.next_tokens(x)
        assert all(tok[b] in top3[b] for b in range(2))


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    x = np.log(probs).astype(np.float32)
    s = Sampler(_config(temperature=1.0, top_k=0, top_p=0.75, seed=0), 1, 4)
    seen = {int(s.next_tokens(x)[0]) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.75 <= 0.8


def test_sampling_frequencies_follow_the_distribution() -> None:
    probs = np.array([[0.6, 0.3, 0.1]])
    s = Sampler(_config(temperature=1.0, top_k=0, top_p=1.0, seed=123), 1, 3)
    counts = np.bincount([int(s.next_tokens(np.log(probs))[0]) for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(counts, probs[0], atol=0.04)


def test_same_seed_same_tokens_other_seed_differs() -> None:
    x = _logits(batch=4, vocab=200, seed=5)

    def run(seed: int) -> list[int]:
        s = Sampler(_config(temperature=1.5, top_k=0, top_p=1.0, seed=seed), 4, 200)
        return [int(t) for _ in range(10) for t in s.next_tokens(x)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_repetition_penalty_discourages_seen_tokens() -> None:
    x = np.array([[2.0, 1.9, -1.0, 0.5]], dtype=np.float32)
    s = Sampler(_config(temperature=0.0, repetition_penalty=2.0), 1, 4, history=[[0]])
    assert int(s.next_tokens(x)[0]) == 1  # 2.0 / 2 = 1.0 < 1.9
    assert int(s.next_tokens(x)[0]) == 0  # both seen now: 1.0 > 0.95 > 0.5


def test_each_row_draws_alone_so_batch_size_does_not_change_seeded_tokens() -> None:
    """A seeded row samples the same tokens alone as in a batch (one generator per row)."""
    x = _logits(batch=4, vocab=200, seed=5)
    batch = Sampler(_config(temperature=1.5, top_k=0, top_p=1.0, seed=3), 4, 200)
    together = np.stack([batch.next_tokens(x) for _ in range(12)], axis=1)  # (4, 12)
    for row in range(4):
        alone = Sampler(_config(temperature=1.5, top_k=0, top_p=1.0, seed=3), 1, 200)
        assert [int(alone.next_tokens(x[row : row + 1])[0]) for _ in range(12)] == together[row].tolist()


@pytest.mark.parametrize("temperature", [1e-50, 5e-324, 1e-30])
def test_a_tiny_temperature_is_greedy_not_nan(temperature: float) -> None:
    x = _logits(batch=3, vocab=50, seed=1)
    with np.errstate(all="raise"):  # no divide-by-zero, NaN or warning on the way
        s = Sampler(_config(temperature=temperature, top_k=0, top_p=1.0, seed=0), 3, 50)
        assert s.next_tokens(x).tolist() == np.argmax(x, axis=-1).tolist()


def test_a_tiny_repetition_penalty_gives_valid_tokens() -> None:
    x = np.array([[2.0, 1.9, -1.0, 0.5]], dtype=np.float32)
    s = Sampler(_config(temperature=1.0, repetition_penalty=1e-300, seed=0), 1, 4, history=[[0, 1]])
    with np.errstate(all="raise"):  # and no numpy warning reaches the user
        tokens = [int(s.next_tokens(x)[0]) for _ in range(5)]
    assert tokens[0] == 0  # the boosted seen token wins outright; nothing NaN
    assert all(0 <= t < 4 for t in tokens)


def _greedy_run(cfg: GenerationConfig, logits: np.ndarray, steps: int, history=None) -> list[int]:  # type: ignore[no-untyped-def]
    s = Sampler(cfg, 1, logits.shape[1], history)
    return [int(s.next_tokens(logits)[0]) for _ in range(steps)]


def test_no_repeat_ngram_never_repeats_an_ngram_of_the_answer_even_greedy() -> None:
    x = np.array([[3.0, 2.0, 1.0, 0.0, -1.0]], dtype=np.float32)  # greedy alone says 0 forever
    tokens = _greedy_run(_config(temperature=0.0, no_repeat_ngram_size=2), x, 11)
    assert tokens[:10] == [0, 0, 1, 0, 2, 0, 3, 0, 4, 0]  # "0 0" and "0 1" used up, then "0 2", ...
    # after that every token would repeat a bigram: the rule gives way to the logits, never to an
    # arbitrary id
    assert tokens[10] == 0
    three = _greedy_run(_config(temperature=0.0, no_repeat_ngram_size=3), x, 6)
    assert three == [0, 0, 0, 1, 0, 0]  # "0 0 0" once; after "0 0" again, 0 would repeat it
    # the prompt does not count: only n-grams of the answer are banned
    assert _greedy_run(_config(temperature=0.0, no_repeat_ngram_size=2), x, 2, [[0, 0]]) == [0, 0]
    sampled = _config(temperature=1.0, top_k=0, top_p=1.0, seed=1, no_repeat_ngram_size=2)
    many = _greedy_run(sampled, np.zeros((1, 6), dtype=np.float32), 25)
    pairs = list(itertools.pairwise(many))
    assert len(set(pairs)) == len(pairs)


def test_no_repeat_ngram_rows_are_independent() -> None:
    x = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]], dtype=np.float32)
    cfg = _config(temperature=0.0, no_repeat_ngram_size=2)
    s = Sampler(cfg, 2, 4)
    together = np.stack([s.next_tokens(x) for _ in range(8)], axis=1)
    for row in range(2):
        assert _greedy_run(cfg, x[row : row + 1], 8) == together[row].tolist()


def test_frequency_and_presence_penalties_count_the_answer() -> None:
    x = np.array([[2.0, 1.5, 0.0]], dtype=np.float32)
    # frequency 0.6: 0 (2.0), 1 (1.5 > 1.4), 0 (1.4 > 0.9), 1 (0.9 > 0.8), 0 (0.8 > 0.3), ...
    assert _greedy_run(_config(temperature=0.0, frequency_penalty=0.6), x, 5) == [0, 1, 0, 1, 0]
    # presence 0.6: once each, then the 0.6 no longer grows: 0 (1.4) beats 1 (0.9) for good
    assert _greedy_run(_config(temperature=0.0, presence_penalty=0.6), x, 4) == [0, 1, 0, 0]
    # neither looks at the prompt
    assert _greedy_run(_config(temperature=0.0, presence_penalty=0.6), x, 1, [[0]]) == [0]


def _nucleus_by_full_sort(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Top-p the plain way: stable sort of the whole row (ties by id), drop what comes after the
    smallest set reaching ``top_p``, renormalise."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    kept = np.where(drop, 0.0, probs)
    return kept / kept.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("top_k", [0, 1, 7])
def test_nucleus_sorting_only_candidates_equals_sorting_the_row(top_k: int) -> None:
    rng = np.random.default_rng(top_k)
    for top_p in (1e-9, 0.3, 0.9, 0.999999):
        scores = rng.normal(size=(4, 300))
        scores[:, 10] = scores[:, 20]  # a tie, broken by id either way
        if top_k:
            kth = np.sort(scores, axis=-1)[:, -top_k:][:, :1]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        expected = _nucleus_by_full_sort(probs, top_p)
        Sampler(_config(top_p=top_p), 4, 300)._nucleus(probs)
        assert np.array_equal(probs, expected)
