"""Eval metrics on known strings."""

from __future__ import annotations

import math

import numpy as np
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


# ------------------------------------------------------------------------------ answer BPB
def _long_pairs(ctx: int):  # type: ignore[no-untyped-def]
    """Three short pairs and one whose answer alone runs past a ``ctx``-token context."""
    from conftest import make_pairs
    from gptmed.core import QAPair

    long_answer = " ".join(["A body temperature above 38 degrees, café au lait."] * 12)
    return [*make_pairs()[:3], QAPair("What is fever?", long_answer)]


def _brute_force_bits_per_byte(model, tok, pairs, context: int, stride: int) -> float:  # type: ignore[no-untyped-def]
    """The definition, one forward per answer token: the pairs laid out by gptmed-tokenizer's own
    training layout (mask 1 = answer token or EOS); token j predicted from ids[s:j] with s = 0 for
    j < context, else the least multiple of ``stride`` with j < s + context."""
    import torch
    from gptmed.tokenizer.dataset import encode_pairs

    enc, _ = encode_pairs(tok, pairs, 1)
    bits = 0.0
    for start, length in zip(enc.start.tolist(), enc.length.tolist(), strict=True):
        ids = enc.tokens[start : start + length].astype(np.int64)
        mask = enc.mask[start : start + length]
        for j in np.flatnonzero(mask).tolist():
            s = 0 if j < context else stride * math.ceil((j - context + 1) / stride)
            assert s < j < s + context
            with torch.no_grad():
                logits = model(torch.from_numpy(ids[None, s:j]))[0, -1].double()
            bits -= float(torch.log_softmax(logits, -1)[ids[j]]) / math.log(2)
    n_bytes = sum(len(p.answer.encode("utf-8")) + 1 for p in pairs)
    return bits / n_bytes


def test_answer_bpb_equals_a_brute_force_per_token_reference(artifacts) -> None:  # type: ignore[no-untyped-def]
    """On pairs one of which is longer than the context (scored in windows), the scorer's BPB is
    the per-token definition to fp tolerance, on the torch model, the .pt and the ONNX bundle."""
    from gptmed.inference import TextGenerator
    from gptmed.inference.evaluate import answer_bpb, score_answers
    from gptmed.inference.export.torch_backend import load_checkpoint_model
    from gptmed.tokenizer import Tokenizer

    model, _ = load_checkpoint_model(artifacts.checkpoint)
    tok = Tokenizer(artifacts.tokenizer)
    ctx = artifacts.config.max_seq_len
    pairs = _long_pairs(ctx)
    assert len(tok.encode_pair(pairs[-1].question, pairs[-1].answer)[0]) > 2 * ctx  # three windows or more
    for stride in (ctx // 2, ctx - 1, 17):
        expected = _brute_force_bits_per_byte(model, tok, pairs, ctx, stride)
        scores = score_answers(model, tok, pairs, stride=stride)
        assert scores.bits_per_byte == pytest.approx(expected, rel=1e-6), stride
        assert scores.windowed == 1 and scores.tokens == tuple(
            len(tok.encode_answer(p.answer)) for p in pairs
        )
    expected = _brute_force_bits_per_byte(model, tok, pairs, ctx, ctx // 2)
    onnx = TextGenerator.from_bundle(artifacts.bundle)
    as_pt = TextGenerator(model=str(artifacts.checkpoint))
    tuples = [(p.question, p.answer) for p in pairs]
    for scorer in (onnx, as_pt):
        assert answer_bpb(scorer, scorer.tokenizer, tuples) == pytest.approx(expected, rel=1e-5)
    assert answer_bpb(model, artifacts.tokenizer, tuples) == pytest.approx(expected, rel=1e-6)  # a path


def test_bpb_windows_refuse_a_stride_that_does_not_move(artifacts) -> None:  # type: ignore[no-untyped-def]
    from gptmed.core import ConfigError
    from gptmed.inference import TextGenerator
    from gptmed.inference.evaluate import score_answers

    gen = TextGenerator.from_bundle(artifacts.bundle)
    with pytest.raises(ConfigError, match="stride must be in"):
        score_answers(gen, gen.tokenizer, _long_pairs(96), stride=96)


# ------------------------------------------------------------------------------ EOS share, loops
def test_repeated_ngram_share_and_loops_on_hand_made_answers() -> None:
    from gptmed.inference.evaluate import is_looping, loop_rate, repeated_ngram_share

    assert repeated_ngram_share([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)  # 1 2 3 4 twice
    assert repeated_ngram_share([1, 2, 3]) == 0.0 and repeated_ngram_share([]) == 0.0
    assert repeated_ngram_share(list(range(100))) == 0.0
    cycle = [5, 6, 7] * 10  # 27 4-grams, 3 distinct
    assert repeated_ngram_share(cycle) == pytest.approx(24 / 27) and is_looping(cycle)
    sentence = list(range(10, 30))
    assert is_looping(sentence * 2)  # said twice: 20 of 37 4-grams repeat
    # 30 % exactly is not a loop; a share above it is
    exactly = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 9]  # 10 4-grams, 0123 1234 2345 repeat
    assert repeated_ngram_share(exactly) == pytest.approx(0.3) and not is_looping(exactly)
    assert repeated_ngram_share(exactly[:-1]) == pytest.approx(3 / 9) and is_looping(exactly[:-1])
    assert loop_rate([cycle, sentence, sentence * 2, [1]]) == pytest.approx(0.5)
    assert loop_rate([]) == 0.0


def test_eos_share_counts_eos_within_each_cap() -> None:
    from gptmed.inference.evaluate import ends_with_eos, eos_share

    eos = 3
    assert ends_with_eos([7, 8, 3], eos, 3) and not ends_with_eos([7, 8, 9, 3], eos, 3)
    assert not ends_with_eos([7, 8, 9], eos, 448) and ends_with_eos([3], eos, 1)
    outputs = [[5, 3], [5, 5, 5, 5], [5, 5, 5, 3], [3]]
    assert eos_share(outputs, eos, 448) == pytest.approx(3 / 4)
    assert eos_share(outputs, eos, [2, 4, 3, 1]) == pytest.approx(2 / 4)  # per-output caps
    assert eos_share([], eos, 448) == 0.0
    with pytest.raises(ValueError, match="2 caps for 4 outputs"):
        eos_share(outputs, eos, [1, 2])
