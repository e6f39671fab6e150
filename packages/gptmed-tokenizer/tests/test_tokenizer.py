"""The Tokenizer wrapper: special ids, plain-text look-alikes, round trips, id checks, damaged files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gptmed.core import DEFAULT_TEMPLATE, SPECIAL_IDS, TokenizerError
from gptmed.core import Tokenizer as TokenizerProtocol
from gptmed.tokenizer import TokenIdError, Tokenizer
from hypothesis import example, given, settings
from hypothesis import strategies as st

SPECIALS = {SPECIAL_IDS.pad, SPECIAL_IDS.unk, SPECIAL_IDS.bos, SPECIAL_IDS.eos}


def test_facts(tok: Tokenizer, trained: Path) -> None:
    assert isinstance(tok, TokenizerProtocol)
    assert tok.vocab_size == 600
    assert tok.special_ids == SPECIAL_IDS
    assert tok.sha256 == hashlib.sha256(trained.read_bytes()).hexdigest()
    assert tok.model_path == trained.resolve() and tok.model_path.is_absolute()
    sp = tok.processor
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert all(sp.is_control(i) for i in (0, 2, 3)) and sp.is_unknown(1)
    info = tok.info()
    assert info["model_type"] == "bpe" and info["byte_fallback"] and info["split_digits"]
    assert info["normalization"] == "identity" and info["add_dummy_prefix"] is False


@pytest.mark.parametrize("text", ["</s>", "<s>", "<0x41>", "<pad>", "<unk>", "a </s> b<s>c<0x41>"])
def test_control_lookalikes_are_plain_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert not SPECIALS & set(ids)
    assert tok.processor.piece_to_id("<0x41>") not in ids  # the text "<0x41>" is not the byte 'A'
    assert tok.decode(ids) == text


def test_no_bos_eos_and_digits_split(tok: Tokenizer) -> None:
    ids = tok.encode("Take 1234 mg")
    assert ids[0] != SPECIAL_IDS.bos and ids[-1] != SPECIAL_IDS.eos
    pieces = tok.pieces("1234")
    assert "".join(pieces) == "1234" and all(len(p) == 1 or p.startswith("<0x") for p in pieces)
    assert tok.encode("") == []


def test_newline_is_one_piece(tok: Tokenizer) -> None:
    assert tok.pieces("\n") == ["\n"]
    assert tok.pieces("a\n\nb").count("\n") == 2


def test_unseen_characters_use_bytes_not_unk(tok: Tokenizer) -> None:
    text = "Ω ж ☃ 𝔘 ﷺ"
    ids = tok.encode(text)
    assert SPECIAL_IDS.unk not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        "line one\nline two\n\n",
        "crlf\r\nline\r\n",
        "cr only\rx",
        "\ttab\tseparated\t",
        "emoji 🙂👍🏽 family 👨‍👩‍👧",
        "中文 日本語 한국어",
        "  leading and trailing spaces  ",
        "\u2581 SentencePiece's space symbol \u2581\u2581",
        "\x00 nul and \ufeff bom",
        "",
    ],
)
def test_round_trip_examples(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([text, "x"], num_threads=2)[0] == tok.encode(text)


_chars = st.characters(blacklist_categories=("Cs",))  # type: ignore[arg-type]  # lone surrogates: not text
_pieces = st.sampled_from(
    ["\n", "\r\n", "\r", "\t", " ", "  ", "🙂", "中文", "\u2581", "</s>", "<0x41>", "Q: ", "\nA:"]
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.one_of(st.text(_chars, max_size=12), _pieces), max_size=12).map("".join))
@example("a\r\nb\tc 🙂 中文\n\n")
def test_round_trip_property(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not SPECIALS & set(ids)


def test_decode_skips_special_ids(tok: Tokenizer) -> None:
    ids = tok.encode("hello there")
    assert (
        tok.decode([SPECIAL_IDS.bos, *ids, SPECIAL_IDS.eos, SPECIAL_IDS.pad, SPECIAL_IDS.pad])
        == "hello there"
    )
    assert tok.decode([SPECIAL_IDS.unk]) == ""
    assert tok.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 600, 10**9])
def test_decode_out_of_range_ids(tok: Tokenizer, bad: int) -> None:
    with pytest.raises(TokenIdError, match=r"out of range .*0\.\.599") as info:
        tok.decode([5, bad, 6])
    assert isinstance(info.value, ValueError) and isinstance(info.value, TokenizerError)
    with pytest.raises(TokenIdError):
        tok.id_to_piece(bad)


def test_decode_accepts_numpy(tok: Tokenizer) -> None:
    np = pytest.importorskip("numpy")
    ids = tok.encode("numpy ids")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "numpy ids"
    with pytest.raises(TokenIdError):
        tok.decode(["x"])  # type: ignore[list-item]


def test_template_encoding(tok: Tokenizer) -> None:
    q, a = "What is gout?", "A form of\narthritis."
    prompt = tok.encode_prompt(q)
    assert prompt == [SPECIAL_IDS.bos, *tok.encode(DEFAULT_TEMPLATE.render_prompt(q))]
    ids, mask = tok.encode_pair(q, a)
    answer = [*tok.encode(DEFAULT_TEMPLATE.render_answer(a)), SPECIAL_IDS.eos]
    assert ids == prompt + answer
    assert mask == [0] * len(prompt) + [1] * len(answer)
    assert tok.decode(ids) == "Q: What is gout?\nA: A form of\narthritis."
    assert tok.decode(answer) == " A form of\narthritis."


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer(tmp_path / "nope.model")
    with pytest.raises(TokenizerError, match="folder"):
        Tokenizer(tmp_path)


@pytest.mark.parametrize("cut", [0, 1, 7, 100, 0.5, 0.9, -1])
def test_truncated_model(trained: Path, tmp_path: Path, cut: float) -> None:
    data = trained.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (len(data) + cut if cut < 0 else cut)
    bad = tmp_path / "cut.model"
    bad.write_bytes(data[:n])
    with pytest.raises(TokenizerError, match="corrupt|empty"):
        Tokenizer(bad)


def test_truncated_at_every_field_boundary(trained: Path) -> None:
    """A protobuf cut between two pieces still parses in SentencePiece; gptmed refuses it."""
    data = trained.read_bytes()
    for n in range(0, len(data), max(1, len(data) // 97)):
        with pytest.raises(TokenizerError):
            Tokenizer.from_bytes(data[:n])


@pytest.mark.parametrize(
    "payload",
    [b"garbage" * 50, bytes(range(256)) * 4, b"\x00" * 1000, b'{"not": "a model"}', b"Q: x\nA: y\n"],
)
def test_garbage_model(tmp_path: Path, payload: bytes) -> None:
    bad = tmp_path / "bad.model"
    bad.write_bytes(payload)
    with pytest.raises(TokenizerError, match="corrupt"):
        Tokenizer(bad)


def test_foreign_sentencepiece_model_is_refused(tmp_path: Path) -> None:
    import sentencepiece as spm

    prefix = tmp_path / "plain"
    text = [f"some plain text for a default sentencepiece model number {i}" for i in range(200)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(prefix), vocab_size=50, minloglevel=2
    )
    with pytest.raises(TokenizerError, match="special ids"):
        Tokenizer(f"{prefix}.model")


def test_model_reader_agrees_with_protobuf(trained: Path) -> None:
    pytest.importorskip("google.protobuf")
    from gptmed.tokenizer._proto import parse_model
    from sentencepiece import sentencepiece_model_pb2 as pb

    data = trained.read_bytes()
    proto = pb.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(data)
    info = parse_model(data)
    assert info.num_pieces == len(proto.pieces) == 600
    spec = proto.trainer_spec
    assert info.trainer["vocab_size"] == spec.vocab_size
    model_type = pb.TrainerSpec.ModelType.Name(spec.model_type)  # type: ignore[attr-defined]
    assert info.trainer["model_type"] == model_type.lower()
    assert info.trainer["byte_fallback"] is spec.byte_fallback is True
    assert (info.trainer["pad_id"], info.trainer["bos_id"], info.trainer["eos_id"]) == (0, 2, 3)
    assert info.normalizer["name"] == proto.normalizer_spec.name == "identity"


def test_pickle_round_trip(tok: Tokenizer) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(tok))
    assert copy.sha256 == tok.sha256 and copy.model_path == tok.model_path
    assert copy.encode("pickled </s> text\n") == tok.encode("pickled </s> text\n")
