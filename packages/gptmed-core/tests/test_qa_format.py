"""The canonical Q&A text format: reader, writer, grammar edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from gptmed.core import DataError, QAPair, format_pair, read_qa_text, write_qa_text
from hypothesis import given, settings
from hypothesis import strategies as st


def _read(path: Path) -> list[QAPair]:
    return list(read_qa_text(path))


def test_manual_example_reads(tmp_path: Path) -> None:
    text = (
        "Q: What is machine learning?\nA: Machine learning is a subset of AI.\n\n"
        "Q: What is a neural network?\nA: A series of algorithms.\n"
    )
    (tmp_path / "qa.txt").write_text(text, encoding="utf-8")
    assert _read(tmp_path / "qa.txt") == [
        QAPair("What is machine learning?", "Machine learning is a subset of AI."),
        QAPair("What is a neural network?", "A series of algorithms."),
    ]


def test_multiline_answer_with_blank_lines_is_kept(tmp_path: Path) -> None:
    text = "Q: List two?\nA: First line.\n\nSecond paragraph.\n  indented\n\n\nQ: Next?\nA: Yes.\n"
    (tmp_path / "qa.txt").write_text(text, encoding="utf-8")
    pairs = _read(tmp_path / "qa.txt")
    assert pairs[0].answer == "First line.\n\nSecond paragraph.\n  indented"
    assert pairs[1] == QAPair("Next?", "Yes.")


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_line_endings_are_normalised(tmp_path: Path, newline: str) -> None:
    text = "Q: One?\nA: Yes it is.\nStill the answer.\n\nQ: Two?\nA: No.\n".replace("\n", newline)
    (tmp_path / "qa.txt").write_bytes(text.encode())
    assert _read(tmp_path / "qa.txt") == [
        QAPair("One?", "Yes it is.\nStill the answer."),
        QAPair("Two?", "No."),
    ]


def test_bom_is_stripped(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfQ: Hi?\nA: Hello there.\n")
    (tmp_path / "b.txt").write_bytes(b"Q: Hi?\nA: Hello there.\n")
    assert _read(tmp_path / "a.txt") == _read(tmp_path / "b.txt")


def test_crlf_split_across_read_chunks(tmp_path: Path) -> None:
    # 65536 is the reader's chunk size: put the CR of a CRLF at its last byte.
    head = "Q: Long?\nA: " + "x" * (65536 - len("Q: Long?\nA: ") - 1)
    data = (head + "\r\nmore\r\n").encode()
    assert data[65535:65537] == b"\r\n"
    (tmp_path / "qa.txt").write_bytes(data)
    assert _read(tmp_path / "qa.txt")[0].answer.endswith("x\nmore")


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("Q: No answer here?\n\nQ: Second?\nA: Yes.\n", 1, "question without an answer"),
        ("A: Answer first.\n", 1, "an answer before any question"),
        ("stray words\nQ: a?\nA: b.\n", 1, "a line outside any Q&A record"),
        ("Q: a?\nA: b.\nA: c.\n", 3, "a second 'A:' line"),
        ("Q: a?\nA:   \n", 2, "empty answer"),  # the line of the empty A:
        ("Q: a\nA: b\n\nQ: c\nA:\n", 5, "empty answer"),
        ("Q:  \nA: b\n", 1, "empty question"),
    ],
)
def test_syntax_errors_name_the_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        _read(path)
    assert f"{path}:{line}" in str(info.value)
    assert what in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"\xef\xbb\xbf"])
def test_no_records_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="no Q&A records in"):
        _read(path)


@pytest.mark.parametrize(
    ("codec", "named"), [("utf-16-le", "utf-16-le"), ("utf-16-be", "utf-16-be"), ("utf-16", "utf-16 ")]
)
def test_utf16_text_is_named_as_such(tmp_path: Path, codec: str, named: str) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes("Q: What is gout?\nA: Arthritis.\n".encode(codec))  # Windows "Unicode" text
    with pytest.raises(DataError, match="looks like UTF-16 text") as info:  # was: a line outside any record
        _read(path)
    assert f"--encoding {named}".strip() in str(info.value) + " "
    assert [p.question for p in read_qa_text(path, encoding=codec)] == ["What is gout?"]


def test_latin1_bytes_name_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("Q: Café?\nA: Oui.\n".encode() + "Q: Crème?\nA: brûlée.\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        _read(path)
    msg = str(info.value)
    assert f"{path}:3" in msg and "byte offset 23" in msg
    # a command any reader's user can run (eval and the tokenizer have no --encoding option)
    assert f"gptmed-data convert {path} -o qa.txt --encoding cp1252" in msg
    assert [p.question for p in read_qa_text(path, encoding="latin-1")][1] == "Crème?"


def test_writer_escapes_record_lookalikes(tmp_path: Path) -> None:
    pair = QAPair(
        "Q: nested?\nA: not an answer", "Line one\nQ: looks like a question\n\\backslash\nA: lookalike"
    )
    text = format_pair(pair)
    assert "\n\\Q: looks like" in text and "\n\\\\backslash" in text and "\n\\A: not an answer" in text
    write_qa_text(tmp_path / "out.txt", [pair, QAPair("b?", "c.")])
    assert _read(tmp_path / "out.txt") == [pair, QAPair("b?", "c.")]


def test_writer_refuses_existing_output_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    write_qa_text(out, [QAPair("a?", "b.")])
    with pytest.raises(FileExistsError):
        write_qa_text(out, [QAPair("c?", "d.")])
    assert _read(out) == [QAPair("a?", "b.")]

    def broken():
        yield QAPair("x?", "y.")
        raise RuntimeError("source failed")

    target = tmp_path / "half.txt"
    with pytest.raises(RuntimeError):
        write_qa_text(target, broken())
    assert list(tmp_path.iterdir()) == [out]


def test_empty_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="answer is empty"):
        QAPair("q?", " \n\t")


def test_from_normalized_builds_the_same_frozen_pair_without_copying() -> None:
    import dataclasses

    q, a = "What is it?", "First line.\n\nSecond line."
    pair = QAPair.from_normalized(q, a)
    assert pair == QAPair(q, a) and hash(pair) == hash(QAPair(q, a))
    assert pair.question is q and pair.answer is a  # the caller's strings, not copies
    assert format_pair(pair) == format_pair(QAPair(q, a))
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.question = "x"  # type: ignore[misc]
    # Trusted: the fields are not checked again (the caller's promise), unlike QAPair(q, a).
    assert QAPair.from_normalized(" padded ", "a").question == " padded "
    assert QAPair(" padded ", "a").question == "padded"


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=80,
)
_line_soup = st.lists(
    st.one_of(_text, st.sampled_from(["Q: x", "A: y", "\\", "\\Q: z", "", "  ", "Q:", "A:", "\r", "\ufeff"])),
    min_size=1,
    max_size=6,
).map("\n".join)
_field = st.one_of(_text, _line_soup).filter(
    lambda s: s.replace("\r\n", "\n").replace("\r", "\n").strip() != ""
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_field, _field), min_size=1, max_size=5))
def test_roundtrip_any_text(tmp_path_factory: pytest.TempPathFactory, raw: list[tuple[str, str]]) -> None:
    pairs = [QAPair(q, a) for q, a in raw]
    assert [QAPair.from_normalized(p.question, p.answer) for p in pairs] == pairs
    path = tmp_path_factory.mktemp("rt") / "qa.txt"
    write_qa_text(path, pairs)
    assert _read(path) == pairs
