"""Streaming detokenisation: whole characters only, stop strings never leak, pieces add up."""

from __future__ import annotations

from gptmed.inference.streaming import AnswerStream


def _pieces(tok, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], AnswerStream]:  # type: ignore[no-untyped-def]
    stream = AnswerStream(tok.decode, stop)
    pieces = [stream.push(i) for i in tok.encode(text)]
    pieces.append(stream.finish())
    return pieces, stream


def test_multibyte_characters_are_never_split(artifacts) -> None:  # type: ignore[no-untyped-def]
    from gptmed.tokenizer import Tokenizer

    tok = Tokenizer(artifacts.tokenizer)
    text = " Le café 腎臓 🙂 naïve — 東京 ✓ done"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # byte-fallback pieces are involved
    pieces, stream = _pieces(tok, text)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == stream.text() == text.strip()


def test_stop_string_is_cut_and_never_emitted(artifacts) -> None:  # type: ignore[no-untyped-def]
    from gptmed.tokenizer import Tokenizer

    tok = Tokenizer(artifacts.tokenizer)
    pieces, stream = _pieces(tok, " The answer.\nQ: next question", stop=("\nQ:",))
    assert stream.stopped
    assert "".join(pieces) == "The answer."
    assert not any("Q" in p for p in pieces)


def test_partial_stop_prefix_is_released_when_it_does_not_complete() -> None:
    table = {1: "abc", 2: "\n", 3: "Qx", 4: " end"}
    stream = AnswerStream(lambda ids: "".join(table[i] for i in ids), stop=("\nQ:",))
    assert stream.push(1) == "abc"
    assert stream.push(2) == ""  # could be the start of "\nQ:"
    assert stream.push(3) == "\nQx"
    assert stream.push(4) == " end"
    assert stream.finish() == ""
    assert stream.text() == "abc\nQx end"


def test_the_windowed_decode_equals_decoding_the_whole_answer(artifacts) -> None:  # type: ignore[no-untyped-def]
    """Each push decodes only the tokens since the last settled one: on random token streams (byte
    pieces, specials and multi-byte characters included) the text is the whole answer's decode."""
    import random

    from gptmed.tokenizer import Tokenizer

    tok = Tokenizer(artifacts.bundle / "tokenizer.model")
    rng = random.Random(0)
    tricky = [*tok.encode("腎臓 café 🙂 naïve"), 0, 1, 2, 3]
    for _ in range(200):
        ids = [rng.choice(tricky) if rng.random() < 0.4 else rng.randrange(tok.vocab_size) for _ in range(40)]
        stream = AnswerStream(tok.decode)
        for n, token in enumerate(ids, 1):
            stream.push(token)
            assert stream.text() == tok.decode(ids[:n]).lstrip(), ids[:n]
