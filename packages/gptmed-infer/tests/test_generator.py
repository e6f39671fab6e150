"""TextGenerator on the bundle (onnxruntime) and on the checkpoint (torch): the manual's API,
answers only, stopping, max_length, batching, seeds, threads and input validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gptmed.core import ConfigError

QUESTIONS = [
    "What is fever?",
    "Explain asthma.",
    "Tell me about 腎臓.",
    "What is a fracture?",
    "Explain insulin.",
]


def test_manual_python_api_with_a_torch_model(artifacts) -> None:  # type: ignore[no-untyped-def]
    import torch
    from gptmed.inference.generator import TextGenerator
    from gptmed.model.architecture import GPTTransformer

    model = GPTTransformer(artifacts.config)
    checkpoint = torch.load(artifacts.checkpoint)
    model.load_state_dict(checkpoint["model_state_dict"])
    generator = TextGenerator(model=model, tokenizer_path=str(artifacts.tokenizer))
    answer = generator.generate(
        prompt="What is fever?", max_length=40, temperature=0.7, top_k=50, top_p=0.9, seed=0
    )
    assert isinstance(answer, str) and answer
    for q in QUESTIONS[:2]:  # step 5.4: positional prompt
        assert generator.generate(q, max_length=40, temperature=0.6)


def test_answers_only_no_echo_and_eos_stops(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    (result,) = onnx_gen.generate_results(["What is fever?"], temperature=0.0, max_length=60)
    assert result.text == "A body temperature above 38 degrees."
    assert "Q:" not in result.text and "fever?" not in result.text
    assert result.finish_reason == "eos"
    assert len(result.token_ids) < 60


def test_max_length_counts_generated_tokens(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    (result,) = onnx_gen.generate_results(["What is fever?"], temperature=0.0, max_length=3)
    assert len(result.token_ids) == 3
    assert result.finish_reason == "length"
    assert result.prompt_tokens == len(onnx_gen.encode_prompt("What is fever?"))


def test_stop_string_ends_the_answer_before_it(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    (result,) = onnx_gen.generate_results(["What is fever?"], temperature=0.0, max_length=60, stop=["38"])
    assert result.text == "A body temperature above"
    assert result.finish_reason == "stop"


def test_greedy_onnx_equals_torch_token_for_token(onnx_gen, torch_gen) -> None:  # type: ignore[no-untyped-def]
    prompts = [onnx_gen.encode_prompt(q) for q in QUESTIONS]
    assert onnx_gen.generate_ids(prompts, temperature=0.0, max_length=30) == torch_gen.generate_ids(
        prompts, temperature=0.0, max_length=30
    )
    assert onnx_gen.generate_batch(QUESTIONS, temperature=0.0) == torch_gen.generate_batch(
        QUESTIONS, temperature=0.0
    )


def test_batch_left_padding_matches_one_by_one(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    batched = onnx_gen.generate_batch(QUESTIONS, temperature=0.0, max_length=40)
    single = [onnx_gen.generate(q, temperature=0.0, max_length=40) for q in QUESTIONS]
    assert batched == single
    assert len({len(onnx_gen.encode_prompt(q)) for q in QUESTIONS}) > 1  # padding really happened


def test_same_seed_same_text(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    a = [onnx_gen.generate("Explain asthma.", temperature=1.5, top_k=0, top_p=1.0, seed=s) for s in (1, 2, 3)]
    b = [onnx_gen.generate("Explain asthma.", temperature=1.5, top_k=0, top_p=1.0, seed=s) for s in (1, 2, 3)]
    assert a == b
    assert len(set(a)) > 1  # high temperature: different seeds give different text


def test_a_seeded_question_gets_one_answer_alone_in_a_batch_or_streamed(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    kw = {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "seed": 5, "max_length": 20}
    alone = [onnx_gen.generate(q, **kw) for q in QUESTIONS]
    assert onnx_gen.generate_batch(QUESTIONS, **kw) == alone  # was: one generator for the batch
    assert onnx_gen.generate_batch(QUESTIONS[::-1], **kw) == alone[::-1]
    assert ["".join(onnx_gen.stream(q, **kw)) for q in QUESTIONS] == alone


def test_stream_pieces_add_up_to_generate(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    for q in ("Tell me about 腎臓.", "Tell me about café au lait spot."):
        pieces = list(onnx_gen.stream(q, temperature=0.0))
        assert len(pieces) > 1
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) == onnx_gen.generate(q, temperature=0.0)


def test_one_generator_shared_by_threads_equals_sequential(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    jobs = [(q, seed) for seed in range(3) for q in QUESTIONS]
    expected = [onnx_gen.generate(q, temperature=1.0, seed=seed, max_length=30) for q, seed in jobs]
    got: list[str | None] = [None] * len(jobs)

    def work(i: int) -> None:
        q, seed = jobs[i]
        got[i] = onnx_gen.generate(q, temperature=1.0, seed=seed, max_length=30)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_length": 0}, "max_length"),
    ],
)
def test_bad_parameters_fail_before_the_run(onnx_gen, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        onnx_gen.generate("What is fever?", **kwargs)


def test_empty_prompt_is_refused(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="empty"):
        onnx_gen.generate("   ")


def test_prompt_plus_max_length_beyond_context_is_refused(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    ctx = onnx_gen.config.max_seq_len
    with pytest.raises(ValueError, match=f"context of {ctx}"):
        onnx_gen.generate("What is fever?", max_length=ctx)
    with pytest.raises(ValueError, match="context"):
        onnx_gen.generate("fever " * 200, max_length=1)
    # the default max_length (100) is trimmed to the room left instead of failing
    assert onnx_gen.generate("What is fever?", temperature=0.0)


@pytest.mark.parametrize("bad", [[2, -1, 5], [2, 5, 10**6]])
def test_token_ids_out_of_range_are_refused(onnx_gen, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 400\)"):
        onnx_gen.generate_ids([bad], max_length=2)


@pytest.mark.parametrize("bad", [[2, 5.5], [2, "5"], [2, 10**30]])
def test_token_ids_that_are_not_integers_are_refused(onnx_gen, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="^prompt: token ids must be integers"):  # was "prompt 0: ..."
        onnx_gen.generate_ids([bad], max_length=2)
    with pytest.raises(ValueError, match="^prompt 2: token ids must be integers"):  # numbered from 1
        onnx_gen.generate_ids([[2, 5], bad], max_length=2)


def test_int8_variant_answers(artifacts) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference import TextGenerator

    gen = TextGenerator.from_bundle(artifacts.bundle, variant="int8")
    assert gen.bundle.model_file == "model.int8.onnx"
    assert gen.generate("What is fever?", temperature=0.0) == "A body temperature above 38 degrees."
    np.testing.assert_equal(gen.config.vocab_size, artifacts.config.vocab_size)


def test_checkpoint_tokenizer_is_verified_by_sha256(artifacts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import save_checkpoint
    from gptmed.core import ManifestError, QAPair, write_qa_text
    from gptmed.inference import TextGenerator
    from gptmed.inference.export.torch_backend import load_checkpoint_model
    from gptmed.tokenizer import Tokenizer, train_tokenizer

    write_qa_text(
        tmp_path / "other.txt", [QAPair(f"Other question {i}?", f"Other answer {i}.") for i in range(30)]
    )
    train_tokenizer(tmp_path / "other.txt", tmp_path / "other", vocab_size=300)
    model, _ = load_checkpoint_model(artifacts.checkpoint)
    # the manifest records the training tokenizer's sha256 but points at another file
    bad = save_checkpoint(
        model,
        Tokenizer(artifacts.tokenizer),
        tmp_path / "bad.pt",
        artifacts.config,
        tokenizer_path=tmp_path / "other.model",
    )
    with pytest.raises(ManifestError, match="not the one the model was trained with"):
        TextGenerator(model=str(bad))
    # the recorded tokenizer is picked up by default
    assert (
        TextGenerator(model=str(artifacts.checkpoint)).tokenizer.sha256
        == Tokenizer(artifacts.tokenizer).sha256
    )


def test_a_retrained_or_moved_recorded_tokenizer(artifacts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Retraining the tokenizer at the path a checkpoint recorded keeps the old one beside it,
    where generation and export find it; a moved one gets an error that says what to pass."""
    import shutil

    from conftest import save_checkpoint
    from gptmed.core import QAPair, TokenizerError, write_qa_text
    from gptmed.inference import TextGenerator
    from gptmed.inference.export.torch_backend import load_checkpoint_model
    from gptmed.tokenizer import Tokenizer, train_tokenizer

    (tmp_path / "tok").mkdir()
    mine = tmp_path / "tok" / "my.model"
    shutil.copy(artifacts.tokenizer, mine)
    model, _ = load_checkpoint_model(artifacts.checkpoint)
    ckpt = save_checkpoint(
        model, Tokenizer(mine), tmp_path / "best.pt", artifacts.config, tokenizer_path=mine
    )
    expected = TextGenerator(model=str(ckpt)).generate("What is fever?", temperature=0)
    write_qa_text(tmp_path / "new.txt", [QAPair(f"New question {i}?", f"New answer {i}.") for i in range(30)])
    result = train_tokenizer(
        tmp_path / "new.txt", tmp_path / "tok" / "my", vocab_size=300
    )  # the manual's rerun
    assert result.kept_previous is not None
    assert TextGenerator(model=str(ckpt)).generate("What is fever?", temperature=0) == expected
    for path in (mine, result.kept_previous):
        path.unlink()  # moved away
    with pytest.raises(
        TokenizerError, match=r"the tokenizer recorded with .*best\.pt is missing: .*my\.model"
    ) as info:
        TextGenerator(model=str(ckpt))
    assert "pass --tokenizer" in str(info.value)


def test_stream_cancel_stops_within_one_token(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 3

    pieces = list(onnx_gen.stream("What is fever?", temperature=0.0, cancel=cancel))
    full = onnx_gen.generate("What is fever?", temperature=0.0)
    assert len(calls) == 3
    assert "".join(pieces) != full and full.startswith("".join(pieces))
