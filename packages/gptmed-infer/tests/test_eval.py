"""Eval metrics on known strings."""

from __future__ import annotations

import pytest
from gptmed.inference.evaluate import exact_match, normalize_answer, rouge_l, token_f1


def test_normalisation_drops_case_punctuation_and_articles() -> None:
    assert normalize_answer("The Kidney, filters  blood!") == ["kidney", "filters", "blood"]


def test_metrics() -> None:
    assert exact_match("A broken bone.", "a broken bone") == 1.0
    assert exact_match("broken", "a broken bone") == 0.0
    assert token_f1("broken bone here", "a broken bone") == pytest.approx(0.8)
    assert rouge_l("bone broken", "broken bone") == pytest.approx(0.5)
    assert rouge_l("x", "y") == 0.0 and token_f1("", "") == 1.0


def test_a_long_question_does_not_cut_the_answers_batched_with_it(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    """Each pair's answer budget is its own: a question that leaves 3-8 tokens of room, first in the
    file, must not cap the other seven answers of its batch (it did: scores moved with the order)."""
    from conftest import make_pairs
    from gptmed.core import QAPair
    from gptmed.inference.evaluate import evaluate

    ctx = onnx_gen.config.max_seq_len
    words = "What is a fracture"
    for more in (" a fracture", " a"):
        while len(onnx_gen.encode_prompt(words + more + "?")) <= ctx - 3:
            words += more
    long_pair = QAPair(words + "?", "A broken bone.")
    assert 3 <= ctx - len(onnx_gen.encode_prompt(long_pair.question)) <= 8
    pairs = [long_pair, *make_pairs()[:7]]
    together = evaluate(onnx_gen, pairs, batch_size=8, examples=8)
    alone = evaluate(onnx_gen, pairs, batch_size=1, examples=8)
    reversed_order = evaluate(onnx_gen, pairs[::-1], batch_size=8, examples=8)
    assert [e["prediction"] for e in together.examples] == [e["prediction"] for e in alone.examples]
    assert [e["prediction"] for e in reversed_order.examples] == [e["prediction"] for e in alone.examples][
        ::-1
    ]
    assert (together.token_f1, together.rouge_l) == (alone.token_f1, alone.rouge_l)
    assert max(len(e["prediction"]) for e in together.examples[1:]) > 20  # answers, not stubs
