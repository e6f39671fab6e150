"""Round trips through every format (hypothesis), format detection, the incremental JSON parser."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from data_testutil import PAIRS, canonical, jsonl, make_sqlite, read_pairs
from gptmed.core import DataError, QAPair, write_qa_text
from gptmed.data import convert, detect_format, iter_records
from gptmed.data.readers.json_stream import ArrayStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Field text: any unicode except surrogates and NUL (those are rejected/cleaned, tested elsewhere),
# with newlines, CR, tabs, quotes, commas and Q:/A:-looking lines mixed in.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_pieces = st.sampled_from(["\n", "\r\n", "\r", "Q: ", "A: ", "\\", '"', ",", "\t", " ", "\n\n", "é", "🙂"])
field_text = (
    st.lists(st.one_of(st.text(_chars, max_size=8), _pieces), min_size=1, max_size=8)
    .map("".join)
    .filter(lambda s: s.strip() != "")
)
pair_lists = st.lists(st.builds(QAPair, field_text, field_text), min_size=1, max_size=6)

SETTINGS = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _write_format(path: Path, fmt: str, pairs: list[QAPair]) -> None:
    rows = [{"question": p.question, "answer": p.answer} for p in pairs]
    if fmt == "txt":
        write_qa_text(path, pairs, overwrite=True)
    elif fmt == "jsonl":
        path.write_text(jsonl(rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        buf = io.StringIO(newline="")
        w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t")
        w.writerow(["question", "answer"])
        w.writerows([r["question"], r["answer"]] for r in rows)
        path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    else:
        path.unlink(missing_ok=True)
        make_sqlite(path, [(r["question"], r["answer"]) for r in rows])


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "csv", "tsv", "sqlite"])
@SETTINGS
@given(pairs=pair_lists)
def test_any_text_round_trips_through_every_format(tmp_path, fmt, pairs):
    src = tmp_path / f"in.{fmt if fmt != 'sqlite' else 'db'}"
    _write_format(src, fmt, pairs)
    out = tmp_path / "out.txt"
    report = convert(src, out, overwrite=True)
    assert report.written == len(pairs)
    assert read_pairs(out) == pairs
    back = tmp_path / "back.jsonl"
    convert(out, back, overwrite=True)
    assert list(iter_records(back)) == pairs


@settings(max_examples=60, deadline=None, database=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"question": field_text, "answer": field_text},
            optional={
                "n": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
                "x": st.lists(st.integers(), max_size=3),
                "o": st.fixed_dictionaries({"k": field_text}),
            },
        ),
        min_size=1,
        max_size=8,
    ),
    chunk=st.integers(min_value=1, max_value=400),
    batch=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
)
def test_incremental_json_parser_agrees_with_json_load(rows, chunk, batch, indent):
    text = json.dumps(rows, indent=indent, ensure_ascii=bool(chunk % 2))
    stream = ArrayStream(io.StringIO(text), "t.json")
    stream.chunk_chars = chunk  # tiny reads: every token gets split across buffer refills
    stream.batch = batch
    stream.min_batch_chars = 1  # batch even tiny runs
    assert stream.start() == "["
    assert list(stream.elements()) == json.loads(text)


def test_incremental_json_parser_reports_lines():
    text = '[\n {"question": "a", "answer": "b"},\n\n {"question": "c", "answer": "d"}\n]\n'
    stream = ArrayStream(io.StringIO(text), "t.json")
    stream.chunk_chars = 3
    stream.batch = False
    stream.start()
    lines = [stream.last_line for _ in stream.elements()]
    assert lines == [2, 4]


def test_numbers_split_across_chunks_are_parsed_whole():
    text = "[" + ", ".join(str(10**k) for k in range(30)) + "]"
    for chunk in (1, 2, 3, 5):
        stream = ArrayStream(io.StringIO(text), "t.json")
        stream.chunk_chars = chunk
        stream.start()
        assert list(stream.elements()) == [10**k for k in range(30)]


def test_json_batches_with_tricky_cut_points(tmp_path):
    # Strings full of "}," and nested objects make wrong cut guesses; values must not change.
    rows = [
        {
            "question": f"Q{i} }},{{ ?",
            "answer": "a}, b}," * (i % 7 + 1),
            "meta": {"k": {"z": [i, {"y": "},"}]}},
        }
        for i in range(3000)
    ]
    src = tmp_path / "t.json"
    src.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    pairs = list(iter_records(src))
    assert [(p.question, p.answer) for p in pairs] == [(r["question"], r["answer"]) for r in rows]


def test_invalid_json_array_records_are_named_with_lines(write, tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(5000)]
    rows[3456]["answer"] = 7
    src = write("big.json", json.dumps(rows, indent=1))
    line = json.dumps(rows, indent=1).split("\n").index(" {") + 1 + 4 * 3456
    with pytest.raises(
        DataError, match=rf"big\.json: record 3457 \(line {line}\): the answer is a number \(7\)"
    ):
        convert(src, tmp_path / "o.txt")
    report = convert(src, tmp_path / "o.txt", skip_invalid=True)
    assert report.examples == [f"{src}: record 3457 (line {line}): the answer is a number (7), not a string"]


@pytest.mark.parametrize(
    "name,content,fmt",
    [
        ("a.txt", "x", "txt"),
        ("a.json", "x", "json"),
        ("a.jsonl", "x", "jsonl"),
        ("a.ndjson", "x", "jsonl"),
        ("a.csv", "x", "csv"),
        ("a.tsv", "x", "tsv"),
        ("a.db", "x", "sqlite"),
        ("a.sqlite3", "x", "sqlite"),
        ("a.jsonl.gz", None, "jsonl"),
        ("noext", "Q: a\nA: b\n", "txt"),
        ("noext", '[{"q": 1}]', "json"),
        ("noext", '{"q": 1}\n{"q": 2}\n', "jsonl"),
        ("noext", '{\n"q": 1}', "json"),
        ("noext", "q,a\n1,2\n", "csv"),
        ("noext", "q\ta\n", "tsv"),
        ("noext", "\ufeffQ: x\nA: y\n", "txt"),
    ],
)
def test_detect_format(tmp_path, name, content, fmt):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert detect_format(path) == fmt


def test_detect_sqlite_by_content(tmp_path):
    db = make_sqlite(tmp_path / "data.bin", [("Q?", "A.")])
    assert detect_format(db) == "sqlite"
    assert list(iter_records(db)) == [QAPair("Q?", "A.")]


def test_undetectable_format_asks_for_format(tmp_path):
    (tmp_path / "x").write_text("just some words\n")
    with pytest.raises(DataError, match="pass --format"):
        detect_format(tmp_path / "x")


def test_format_override(tmp_path):
    src = tmp_path / "data.dat"
    src.write_text(jsonl([{"question": "Q?", "answer": "A."}]))
    assert list(iter_records(src, format="jsonl")) == [QAPair("Q?", "A.")]


def test_gzip_input(tmp_path):
    import gzip

    src = tmp_path / "in.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write(jsonl([{"question": p.question, "answer": p.answer} for p in PAIRS]))
    assert list(iter_records(src)) == PAIRS


def test_jsonl_output_round_trips(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(canonical(PAIRS))
    convert(src, tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [{"question": p.question, "answer": p.answer} for p in PAIRS]
    convert(src, tmp_path / "out.data", output_format="jsonl")
    assert (tmp_path / "out.data").read_text(encoding="utf-8").splitlines() == lines


def test_sqlite_table_and_query_mapping(tmp_path):
    db = tmp_path / "qa.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE faq (id INTEGER, ask TEXT, reply TEXT, lang TEXT)")
    conn.execute("CREATE TABLE other (x TEXT)")
    conn.executemany(
        "INSERT INTO faq VALUES (?, ?, ?, ?)", [(1, "Q1?", "A1.", "en"), (2, "Q2?", "A2.", "fr")]
    )
    conn.commit()
    conn.close()
    pairs = list(iter_records(db, table="faq", question_field="ask", answer_field="reply"))
    assert pairs == [QAPair("Q1?", "A1."), QAPair("Q2?", "A2.")]
    pairs = list(iter_records(db, query="SELECT ask AS question, reply AS answer FROM faq WHERE lang = 'fr'"))
    assert pairs == [QAPair("Q2?", "A2.")]


MEDQUAD = Path(__file__).resolve().parents[3] / ".." / "shared" / "datasets" / "medquad"


@pytest.mark.skipif(
    not (MEDQUAD / "train.qa.jsonl.gz").exists(), reason="../shared/datasets/medquad is absent"
)
def test_medquad_jsonl_and_txt_convert_to_the_same_pairs(tmp_path):
    a = convert(MEDQUAD / "train.qa.jsonl.gz", tmp_path / "a.txt")
    b = convert(MEDQUAD / "train.qa.txt.gz", tmp_path / "b.txt")
    assert a.written == b.written == a.read == 14_737
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


_messy = st.one_of(
    field_text,
    st.sampled_from(
        ["", "  ", "\t\n", " padded ", "nul\x00byte", "cr\rlf\r\n", "\u00e9t\u00e9", "x\n\nQ: y"]
    ),
    st.integers(),
    st.none(),
)


@settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(_messy, _messy), min_size=1, max_size=40))
def test_batch_fast_path_matches_the_per_record_path(tmp_path, rows):
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl([{"question": q, "answer": a} for q, a in rows]), encoding="utf-8")
    results = []
    for extra in ({}, {"max_answer_chars": 10**9}):  # the second forces the per-record path
        out = tmp_path / "out.txt"
        try:
            report = convert(src, out, overwrite=True, skip_invalid=True, **extra)
        except DataError as exc:
            results.append(("error", str(exc).split(" (")[0]))
            continue
        results.append(
            (
                out.read_bytes(),
                report.read,
                report.written,
                report.invalid,
                report.cleaned,
                report.long_answers,
            )
        )
    assert results[0] == results[1]


def test_excel_semicolon_csv_with_empty_rows_converts(tmp_path):
    """Excel in locales with a decimal comma saves ';'-separated CSV, with a BOM, CRLF and ';;;'
    rows where cells were once used."""
    src = tmp_path / "excel.csv"
    src.write_bytes(
        "\ufeffID;Question;Answer;Category\r\n"
        '1;What is gout?;"Gout is arthritis; it hurts.\r\nA lot.";joints\r\n'
        ";;;\r\n"
        "2;What is flu?;A viral infection, often seasonal.;viruses\r\n"
        ";;;\r\n;;;\r\n".encode()
    )
    report = convert(src, tmp_path / "out.txt")
    assert report.written == 2 and not report.invalid  # was: "cannot tell which field holds the question"
    assert read_pairs(tmp_path / "out.txt") == [
        QAPair("What is gout?", "Gout is arthritis; it hurts.\nA lot."),
        QAPair("What is flu?", "A viral infection, often seasonal."),
    ]


def test_comma_csv_with_semicolons_in_its_text_stays_comma_separated(tmp_path):
    src = tmp_path / "plain.csv"
    src.write_text('question,answer\n"What is gout?","Arthritis; painful; in joints."\n', encoding="utf-8")
    convert(src, tmp_path / "out.txt")
    assert read_pairs(tmp_path / "out.txt") == [QAPair("What is gout?", "Arthritis; painful; in joints.")]


def test_an_explicit_delimiter_is_used_and_checked(tmp_path):
    src = tmp_path / "pipes.csv"
    src.write_text("question|answer\nWhat is gout?|Arthritis, of a kind.\n", encoding="utf-8")
    convert(src, tmp_path / "out.txt", delimiter="|")
    assert read_pairs(tmp_path / "out.txt") == [QAPair("What is gout?", "Arthritis, of a kind.")]
    with pytest.raises(DataError, match="the delimiter must be one character"):
        convert(src, tmp_path / "out2.txt", delimiter=";;")
    assert not (tmp_path / "out2.txt").exists()


@pytest.mark.parametrize("name", ["out.json", "out.csv", "out.db", "-"])
def test_an_output_named_like_a_format_it_does_not_write_is_refused(tmp_path, name):
    src = tmp_path / "in.txt"
    write_qa_text(src, [QAPair("What is gout?", "Arthritis.")])
    with pytest.raises(DataError, match=r"cannot write \.|output '-'"):
        convert(src, tmp_path / name if name != "-" else name)  # out.json once held Q&A text
    assert not (tmp_path / name).exists()
    convert(src, tmp_path / "out.json", output_format="txt")  # asked for explicitly: fine
    with pytest.raises(DataError, match="output '-'"):
        convert(src, "-", output_format="txt")


def test_record_start_lookalikes_inside_records_are_reported(tmp_path):
    """By the grammar an indented '  Q:' or a lower-case 'q:' line is text of the record above;
    convert keeps that reading but says so (two pairs silently merged into one before)."""
    src = tmp_path / "messy.txt"
    src.write_text(
        "Q: First question?\nA: First answer.\n  Q: indented question?\n  A: indented answer.\n\n"
        "Q: Second question?\nA: Second answer.\nq: lower-case question?\na: lower-case answer.\n",
        encoding="utf-8",
    )
    report = convert(src, tmp_path / "out.txt")
    assert report.written == 2
    assert report.lookalikes == [f"{src}:3", f"{src}:4", f"{src}:8", f"{src}:9"]
    assert "note: 4 lines inside records look like a record start" in report.to_text()
    assert f"(first: {src}:3)" in report.to_text()
    clean = tmp_path / "clean.txt"
    write_qa_text(clean, [QAPair("Q?", "Some answer:\n  indented text, not a record")])
    assert convert(clean, tmp_path / "out2.txt").lookalikes == []
