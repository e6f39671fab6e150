"""Every bad-input policy of docs/data.md ("Policies: what happens to each kind of bad input"),
one test (or parametrized test) each."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pytest
from data_testutil import PAIRS, canonical, jsonl, make_sqlite, read_pairs
from gptmed.core import DataError, QAPair
from gptmed.data import QAReader, ReadOptions, convert, iter_records

ROWS = [{"question": p.question, "answer": p.answer} for p in PAIRS]


def csv_text(
    rows: list[dict[str, str]], delimiter: str = ",", header: tuple[str, ...] = ("question", "answer")
) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([r["question"], r["answer"]])
    return buf.getvalue()


SOURCES = {
    "txt": canonical(PAIRS),
    "csv": csv_text(ROWS),
    "tsv": csv_text(ROWS, "\t"),
    "jsonl": jsonl(ROWS),
    "json": json.dumps(ROWS, indent=2),
}


# --- empty input -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["txt", "csv", "tsv", "jsonl", "json"])
def test_zero_byte_file_has_no_records(write, tmp_path, ext):
    src = write(f"empty.{ext}", b"")
    with pytest.raises(DataError, match=r"no Q&A records in .*empty\."):
        convert(src, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("ext,header", [("csv", "question,answer\n"), ("tsv", "question\tanswer\r\n")])
def test_header_only_csv_has_no_records(write, tmp_path, ext, header):
    with pytest.raises(DataError, match="no Q&A records in"):
        convert(write(f"h.{ext}", header), tmp_path / "out.txt")


@pytest.mark.parametrize("ext", ["txt", "jsonl", "csv"])
def test_blank_lines_only_have_no_records(write, tmp_path, ext):
    with pytest.raises(DataError, match="no Q&A records in"):
        convert(write(f"b.{ext}", "\n\n  \n\r\n\n"), tmp_path / "out.txt")


def test_empty_json_array_has_no_records(write, tmp_path):
    with pytest.raises(DataError, match="no Q&A records in"):
        convert(write("a.json", " [ ] \n"), tmp_path / "out.txt")


# --- BOM and line endings ----------------------------------------------------------------------


@pytest.mark.parametrize("ext", sorted(SOURCES))
def test_utf8_bom_is_stripped_with_identical_output(write, tmp_path, ext):
    plain = convert(write(f"plain.{ext}", SOURCES[ext]), tmp_path / "out_plain.txt")
    bom = convert(write(f"bom.{ext}", "\ufeff" + SOURCES[ext]), tmp_path / "out_bom.txt")
    assert plain.written == bom.written == 3
    assert (tmp_path / "out_plain.txt").read_bytes() == (tmp_path / "out_bom.txt").read_bytes()
    assert (
        read_pairs(tmp_path / "out_bom.txt") == PAIRS
    )  # a BOM'd CSV header is 'question', not '\ufeffquestion'


@pytest.mark.parametrize("ending", ["\r\n", "\r", "mixed"])
@pytest.mark.parametrize("ext", ["txt", "csv", "tsv", "jsonl"])
def test_line_endings_are_normalised(write, tmp_path, ext, ending):
    text = SOURCES[ext]
    if ending == "mixed":
        lines = text.split("\n")
        seps = ["\r\n", "\r", "\n"]
        text = "".join(line + seps[i % 3] for i, line in enumerate(lines[:-1])) + lines[-1]
    else:
        text = text.replace("\n", ending)
    convert(write(f"e.{ext}", text), tmp_path / "out.txt")
    out = (tmp_path / "out.txt").read_bytes()
    assert b"\r" not in out
    assert read_pairs(tmp_path / "out.txt") == PAIRS


def test_crlf_inside_quoted_csv_field_becomes_lf(write, tmp_path):
    src = write("m.csv", 'question,answer\r\n"What is it?","Line one.\r\nLine two.\rLine three."\r\n')
    convert(src, tmp_path / "out.txt")
    assert read_pairs(tmp_path / "out.txt") == [QAPair("What is it?", "Line one.\nLine two.\nLine three.")]


def test_multiline_txt_answers_are_kept(write, tmp_path):
    text = "Q: Steps?\r\nA: First.\r\n\r\nSecond, after a blank line.\r\n\\Q: not a question\r\n\r\nQ: Next?\nA: Yes.\n"
    convert(write("m.txt", text), tmp_path / "out.txt")
    assert read_pairs(tmp_path / "out.txt") == [
        QAPair("Steps?", "First.\n\nSecond, after a blank line.\nQ: not a question"),
        QAPair("Next?", "Yes."),
    ]


# --- encodings ---------------------------------------------------------------------------------


def test_latin1_is_an_error_with_line_offset_and_hint(write, tmp_path):
    data = "Q: What is a café?\nA: A small restaurant.\n\nQ: Où?\nA: Partout, même à Paris.\n".encode(
        "latin-1"
    )
    src = write("l1.txt", data)
    with pytest.raises(DataError) as err:
        convert(src, tmp_path / "out.txt")
    msg = str(err.value)
    offset = data.index("é".encode("latin-1"))
    assert "l1.txt:1" in msg and f"byte offset {offset}" in msg and "0xe9" in msg and "--encoding" in msg
    assert not (tmp_path / "out.txt").exists()
    convert(src, tmp_path / "out.txt", encoding="latin-1")
    assert read_pairs(tmp_path / "out.txt")[0] == QAPair("What is a café?", "A small restaurant.")


def test_latin1_error_names_a_later_line(write, tmp_path):
    data = ("Q: a?\nA: b.\n\n" * 1000 + "Q: x?\nA: na\xefve\n").encode("latin-1")
    csv_data = b"question,answer\n" + b"x,y\n" * 3000 + b"q,na\xefve\n"
    with pytest.raises(DataError, match=r"l\.csv:3002: .*byte offset " + str(csv_data.index(b"\xef"))):
        list(iter_records(write("l.csv", csv_data)))
    with pytest.raises(DataError, match=r"l\.txt:3002: .*byte offset " + str(data.index(b"\xef"))):
        list(iter_records(write("l.txt", data)))


@pytest.mark.parametrize(
    "codec,hint",
    [
        ("utf-16", "--encoding utf-16"),
        ("utf-16-le", "--encoding utf-16-le"),
        ("utf-16-be", "--encoding utf-16-be"),
    ],
)
def test_utf16_is_an_error_with_hint_and_readable_with_encoding(write, tmp_path, codec, hint):
    src = write("w.csv", SOURCES["csv"].encode(codec))
    with pytest.raises(DataError, match=r"w\.csv:1: .*byte offset \d+.*" + hint):
        convert(src, tmp_path / "out.txt")
    convert(src, tmp_path / "out.txt", encoding=codec)
    assert read_pairs(tmp_path / "out.txt") == PAIRS


def test_unknown_encoding_is_a_data_error(write, tmp_path):
    with pytest.raises(DataError, match="unknown encoding"):
        convert(write("x.txt", SOURCES["txt"]), tmp_path / "o.txt", encoding="klingon")


# --- NUL bytes and lone surrogates -------------------------------------------------------------


@pytest.mark.parametrize("ext", ["txt", "csv", "jsonl"])
def test_nul_bytes_are_removed_and_counted(write, tmp_path, ext):
    nul = "\\u0000" if ext == "jsonl" else "\x00"  # JSON spells NUL as an escape
    text = SOURCES[ext].replace("DNA is", f"DNA{nul} is", 1)
    report = convert(write(f"n.{ext}", text), tmp_path / "out.txt")
    assert report.cleaned == {"nul_removed": 1}
    assert read_pairs(tmp_path / "out.txt") == PAIRS
    assert b"\x00" not in (tmp_path / "out.txt").read_bytes()


def test_lone_surrogate_in_json_is_rejected_or_skipped_and_counted(write, tmp_path):
    text = '[{"question": "Bad?", "answer": "x \\ud800 y"}, ' + json.dumps(ROWS)[1:]
    src = write("s.json", text)
    with pytest.raises(DataError, match=r"record 1 \(line 1\).*lone surrogate U\+D800"):
        convert(src, tmp_path / "out.txt")
    report = convert(src, tmp_path / "out.txt", skip_invalid=True)
    assert report.invalid == {"lone_surrogate": 1} and report.written == 3


def test_nul_in_sqlite_text_is_removed(tmp_path):
    db = make_sqlite(tmp_path / "n.db", [("Q\x00?", "An answer.")])
    report = convert(db, tmp_path / "out.txt")
    assert report.cleaned["nul_removed"] == 1
    assert read_pairs(tmp_path / "out.txt") == [QAPair("Q?", "An answer.")]


# --- canonical text errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,line,what",
    [
        ("Q: one?\nA: yes.\n\nQ: two?\n\nQ: three?\nA: ok.\n", 4, "question without an answer"),
        ("A: orphan answer\n\nQ: one?\nA: yes.\n", 1, "an answer before any question"),
        ("Q: one?\nA: yes.\n\nstray text here\n", 2, None),
        ("hello\nQ: one?\nA: yes.\n", 1, "a line outside any Q&A record"),
        ("Q: one?\nA: yes.\nA: again\n", 3, "a second 'A:' line"),
        ("Q: one?\nA:   \n\nQ: two?\nA: fine.\n", 2, "empty answer"),
    ],
)
def test_txt_errors_name_the_line_or_skip_and_count(write, tmp_path, text, line, what):
    src = write("bad.txt", text + "\nQ: ok?\nA: fine.\n")
    if what is None:
        # A stray line after an answer is an answer continuation line in the canonical grammar.
        convert(src, tmp_path / "out.txt")
        assert read_pairs(tmp_path / "out.txt")[0].answer == "yes.\n\nstray text here"
        assert read_pairs(tmp_path / "out.txt")[1] == QAPair("ok?", "fine.")
        return
    with pytest.raises(DataError, match=rf"bad\.txt:{line}: {what}.*--skip-invalid"):
        convert(src, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    report = convert(src, tmp_path / "out.txt", skip_invalid=True)
    assert sum(report.invalid.values()) == 1 and report.written >= 1
    assert report.examples[0].startswith(f"{src}:{line}: ")


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_unterminated_quote_is_detected(write, tmp_path):
    text = 'question,answer\nWhat?,Fine.\n"Broken?,This quote never closes.\nNext?,Would be swallowed.\nLast?,Too.\n'
    with pytest.raises(DataError, match=r"u\.csv:3: unterminated quoted field"):
        convert(write("u.csv", text), tmp_path / "out.txt")
    with pytest.raises(DataError, match="unterminated"):  # not skippable: the parser lost the record bounds
        convert(write("u.csv", text), tmp_path / "out.txt", skip_invalid=True)
    assert not (tmp_path / "out.txt").exists()


def test_csv_unclosed_quote_closed_later_is_a_field_count_error(write, tmp_path):
    text = 'question,answer\n"Broken?,no close\nA?,B\nC?",D,E\nF?,G\n'
    with pytest.raises(
        DataError, match=r"c\.csv:2: 3 fields, the header has 2 \(the record runs over lines 2-4"
    ):
        convert(write("c.csv", text), tmp_path / "out.txt")
    report = convert(write("c.csv", text), tmp_path / "out.txt", skip_invalid=True)
    assert report.invalid == {"field_count": 1} and report.written == 1


def test_csv_field_over_limit(write, tmp_path):
    src = write("big.csv", "question,answer\nBig?," + "x" * 5000 + "\n")
    with pytest.raises(
        DataError, match=r"big\.csv:2: a field longer than 1000 characters.*--max-field-chars"
    ):
        convert(src, tmp_path / "out.txt", max_field_chars=1000)
    assert convert(src, tmp_path / "out.txt", max_field_chars=10_000).written == 1
    assert csv.field_size_limit() == 131072  # the global limit is restored


@pytest.mark.parametrize(
    "header", ["Question,Response", "q,a", "input,output", "prompt,response", "Query,Reply"]
)
def test_csv_common_column_names_are_detected(write, tmp_path, header):
    src = write("c.csv", f"{header}\nWhat?,That.\n")
    convert(src, tmp_path / "out.txt")
    assert read_pairs(tmp_path / "out.txt") == [QAPair("What?", "That.")]


def test_csv_missing_column_lists_columns_found(write, tmp_path):
    src = write("m.csv", "id,prompt_text,reply_text\n1,What?,That.\n")
    with pytest.raises(
        DataError,
        match=r"m\.csv:1: cannot tell which field holds the question; the fields found "
        r"are 'id', 'prompt_text', 'reply_text'.*--question-field",
    ):
        convert(src, tmp_path / "out.txt")
    with pytest.raises(
        DataError, match=r"no answer field 'answer'; the fields found are 'id', 'prompt_text'"
    ):
        convert(src, tmp_path / "out.txt", question_field="prompt_text", answer_field="answer")
    convert(src, tmp_path / "out.txt", question_field="prompt_text", answer_field="reply_text")
    assert read_pairs(tmp_path / "out.txt") == [QAPair("What?", "That.")]


def test_csv_short_row_is_invalid(write, tmp_path):
    src = write("s.csv", "question,answer\nonly one field\nOk?,Yes.\n")
    with pytest.raises(DataError, match=r"s\.csv:2: 1 fields, the header has 2"):
        convert(src, tmp_path / "out.txt")


# --- JSON / JSONL ------------------------------------------------------------------------------


def test_truncated_json_array(write, tmp_path):
    text = json.dumps(ROWS, indent=1)
    for cut in (len(text) - 1, len(text) // 2, 3):
        src = write("t.json", text[:cut])
        with pytest.raises(
            DataError, match=r"t\.json:\d+: (invalid JSON|the JSON array is not closed).*truncated"
        ):
            convert(src, tmp_path / "out.txt")
        assert not (tmp_path / "out.txt").exists()


def test_truncated_jsonl_last_line(write, tmp_path):
    text = jsonl(ROWS)[:-20]
    src = write("t.jsonl", text)
    with pytest.raises(DataError, match=r"t\.jsonl:3: invalid JSON \(truncated line\?\)") as info:
        convert(src, tmp_path / "out.txt")
    assert "starting at (" not in str(info.value)  # json's message without its cut-off position
    assert convert(src, tmp_path / "out.txt", skip_invalid=True).invalid == {"bad_json": 1}


def test_bad_jsonl_line_is_named(write, tmp_path):
    text = jsonl(ROWS[:1]) + "\n{not json}\n" + jsonl(ROWS[1:])
    with pytest.raises(DataError, match=r"b\.jsonl:3: invalid JSON: .*\(column 2\)"):
        convert(write("b.jsonl", text), tmp_path / "out.txt")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_nan_and_infinity_are_rejected(write, tmp_path, token, ext):
    body = f'{{"question": "Q?", "answer": {token}}}'
    src = write(f"n.{ext}", f"[{body}]" if ext == "json" else body + "\n")
    with pytest.raises(DataError, match=rf"the answer is {token} \(not valid JSON\), not a string"):
        convert(src, tmp_path / "out.txt")


def test_duplicate_keys_are_rejected(write, tmp_path):
    src = write("d.jsonl", '{"question": "Q?", "answer": "first", "answer": "second"}\n' + jsonl(ROWS))
    with pytest.raises(DataError, match=r"d\.jsonl:1: duplicate key 'answer'"):
        convert(src, tmp_path / "out.txt")
    report = convert(src, tmp_path / "out.txt", skip_invalid=True)
    assert report.invalid == {"duplicate_key": 1} and report.written == 3
    # A duplicate of a field we do not read is harmless.
    ok = write("ok.jsonl", '{"question": "Q?", "answer": "A.", "id": 1, "id": 2}\n')
    assert convert(ok, tmp_path / "ok.txt").written == 1


@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_deep_nesting_is_an_error_not_a_crash(write, tmp_path, ext):
    deep = "[" * 100_000 + "]" * 100_000
    text = f"[{deep}]" if ext == "json" else jsonl(ROWS[:1]) + deep + "\n"
    with pytest.raises(DataError, match="nested too deeply"):
        convert(write(f"deep.{ext}", text), tmp_path / "out.txt")


def test_nested_value_is_not_a_string(write, tmp_path):
    src = write("n.json", json.dumps([{"question": "Q?", "answer": {"text": "nested"}}]))
    with pytest.raises(DataError, match=r"record 1 \(line 1\): the answer is an object, not a string"):
        convert(src, tmp_path / "out.txt")


def test_single_object_instead_of_a_list(write, tmp_path):
    src = write("o.json", json.dumps({"question": "Q?", "answer": "A."}))
    with pytest.raises(
        DataError,
        match=r"expected a JSON array of objects, found a single object with keys "
        r"'question', 'answer'; wrap the object in \[ \]",
    ):
        convert(src, tmp_path / "out.txt")
    wrapped = write("w.json", json.dumps({"version": 2, "data": ROWS}))
    with pytest.raises(DataError, match="pass --records-key data"):
        convert(wrapped, tmp_path / "out.txt")
    assert convert(wrapped, tmp_path / "out.txt", records_key="data").written == 3


def test_records_key_walks_into_nested_objects(write, tmp_path):
    deep = write("d.json", json.dumps({"payload": {"meta": {"n": 3}, "items": ROWS}}))
    with pytest.raises(
        DataError,
        match=r"key 'payload' holds an object with keys 'meta', 'items'.*pass --records-key payload\.items",
    ):
        convert(deep, tmp_path / "a.txt", records_key="payload")
    assert (
        convert(deep, tmp_path / "b.txt", records_key="payload.items").written == 3
    )  # was "no key 'payload.items'"
    with pytest.raises(DataError, match=r"no key 'itemz' in 'payload'; keys: 'meta', 'items'"):
        convert(deep, tmp_path / "c.txt", records_key="payload.itemz")
    listed = write("l.json", json.dumps({"payload": [{"items": ROWS}]}))
    with pytest.raises(DataError, match=r"'payload' holds an array.*not an object with key 'items'"):
        convert(listed, tmp_path / "l.txt", records_key="payload.items")  # was: "keys: (none)"
    dotted = write("e.json", json.dumps({"a.b": ROWS}))  # a key that has a dot in its name wins
    assert convert(dotted, tmp_path / "e.txt", records_key="a.b").written == 3


@pytest.mark.parametrize(
    "value,described",
    [
        (42, "a number (42)"),
        (1.5, "a number (1.5)"),
        (True, "a boolean (true)"),
        (None, "null"),
        (["a", "b"], "an array"),
    ],
)
@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_non_string_values_are_invalid(write, tmp_path, ext, value, described):
    rows = [{"question": "Q?", "answer": value}, *ROWS]
    src = write(f"v.{ext}", json.dumps(rows) if ext == "json" else jsonl(rows))
    with pytest.raises(DataError, match=re.escape(f"the answer is {described}, not a string")):
        convert(src, tmp_path / "out.txt")
    report = convert(src, tmp_path / "out.txt", skip_invalid=True)
    assert report.invalid == {"not_string": 1} and report.written == 3


def test_jsonl_line_that_is_not_an_object(write, tmp_path):
    src = write("l.jsonl", jsonl(ROWS) + '["Q?", "A."]\n')
    with pytest.raises(DataError, match=r"l\.jsonl:4: expected a JSON object, found an array"):
        convert(src, tmp_path / "out.txt")


def test_json_missing_field_in_a_later_record(write, tmp_path):
    rows = [*ROWS, {"question": "Q?", "text": "A."}]
    with pytest.raises(
        DataError, match=r"record 4 \(line \d+\): no field 'answer'; the fields found are 'question', 'text'"
    ):
        convert(write("m.json", json.dumps(rows, indent=2)), tmp_path / "out.txt")


def test_json_extra_data_after_array(write, tmp_path):
    with pytest.raises(DataError, match="extra data after the closing"):
        convert(write("x.json", json.dumps(ROWS) + "\n[]"), tmp_path / "out.txt")


# --- SQLite ------------------------------------------------------------------------------------


def test_sqlite_missing_table_lists_tables(tmp_path):
    db = make_sqlite(tmp_path / "q.db", [("Q?", "A.")], table="pairs")
    with pytest.raises(DataError, match=r"no table 'qa_table'; the tables are 'pairs'"):
        convert(db, tmp_path / "out.txt", table="qa_table")
    assert convert(db, tmp_path / "out.txt").written == 1  # the one table with q/a columns


def test_sqlite_missing_column_lists_columns(tmp_path):
    db = make_sqlite(tmp_path / "q.db", [("Q?", "A.")], cols=("ask", "says"))
    with pytest.raises(
        DataError,
        match=r"no table has recognisable question/answer columns; tables: qa_table\(id, ask, says\)",
    ):
        convert(db, tmp_path / "out.txt")
    with pytest.raises(
        DataError,
        match=r"table 'qa_table': no question field 'question'; the fields found are 'id', 'ask', 'says'",
    ):
        convert(db, tmp_path / "out.txt", table="qa_table", question_field="question", answer_field="says")
    assert convert(db, tmp_path / "out.txt", question_field="ask", answer_field="says").written == 1


def test_sqlite_failing_user_query(tmp_path):
    db = make_sqlite(tmp_path / "q.db", [("Q?", "A.")])
    with pytest.raises(
        DataError, match=r"the query failed: no such column: nope; tables in the database: 'qa_table'"
    ):
        convert(db, tmp_path / "out.txt", query="SELECT nope FROM qa_table")
    with pytest.raises(DataError, match="the query failed"):
        convert(db, tmp_path / "out.txt", query="DELETE FROM qa_table")  # read-only connection
    report = convert(
        db, tmp_path / "out.txt", query="SELECT question AS q, answer AS a FROM qa_table WHERE id = 1"
    )
    assert report.written == 1


def test_sqlite_non_text_values_are_invalid(tmp_path):
    db = make_sqlite(tmp_path / "q.db", [("Q?", b"\xff\xfe"), ("R?", None), ("S?", "Fine.")])
    report = convert(db, tmp_path / "out.txt", skip_invalid=True)
    assert report.invalid == {"not_string": 2} and report.written == 1


def test_not_a_sqlite_file(write, tmp_path):
    with pytest.raises(DataError, match="not an SQLite database"):
        convert(write("x.db", "hello"), tmp_path / "out.txt")


# --- content policies --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "jsonl", "json"])
def test_empty_and_whitespace_fields_are_invalid(write, tmp_path, ext):
    rows = [*ROWS, {"question": "   ", "answer": "x"}, {"question": "Q?", "answer": "\t\n "}]
    text = {"csv": csv_text(rows), "jsonl": jsonl(rows), "json": json.dumps(rows)}[ext]
    src = write(f"e.{ext}", text)
    with pytest.raises(DataError, match="the question is empty or only whitespace"):
        convert(src, tmp_path / "out.txt")
    report = convert(src, tmp_path / "out.txt", skip_invalid=True)
    assert report.invalid == {"empty_question": 1, "empty_answer": 1}
    assert report.written == 3


def test_duplicates_exact_and_normalised_are_counted(write, tmp_path):
    rows = [*ROWS, ROWS[0], {"question": "what is  DNA", "answer": ROWS[0]["answer"].upper()}]
    src = write("d.jsonl", jsonl(rows))
    assert convert(src, tmp_path / "a.txt").written == 5
    exact = convert(src, tmp_path / "b.txt", dedupe="exact")
    assert exact.written == 4 and exact.removed == {"duplicate_exact": 1}
    norm = convert(src, tmp_path / "c.txt", dedupe="normalized")
    assert norm.written == 3 and norm.removed == {"duplicate_normalized": 2}
    assert read_pairs(tmp_path / "c.txt") == PAIRS  # the first occurrence is kept


def test_long_answers_are_kept_and_counted(write, tmp_path):
    long = " ".join(["word"] * 600)
    src = write("l.jsonl", jsonl([*ROWS, {"question": "Long?", "answer": long}]))
    report = convert(src, tmp_path / "out.txt")
    assert report.long_answers == 1 and report.written == 4
    assert "more than 500 words" in report.to_text()
    report = convert(src, tmp_path / "out2.txt", max_answer_words=500)
    assert report.removed == {"answer_too_long": 1} and report.written == 3


def test_length_filters(write, tmp_path):
    src = write("l.jsonl", jsonl([*ROWS, {"question": "Short?", "answer": "Yes."}]))
    report = convert(src, tmp_path / "o.txt", min_answer_words=10)
    assert report.removed == {"answer_too_short": 1} and report.written == 3
    report = convert(src, tmp_path / "p.txt", min_answer_chars=5, max_answer_chars=73)
    assert report.removed == {"answer_too_short": 1, "answer_too_long": 1}


def test_unicode_normalisation(write, tmp_path):
    src = write("u.jsonl", jsonl([{"question": "Cafe\u0301?", "answer": "\ufb01ne \u2460"}]))
    convert(src, tmp_path / "nfc.txt", unicode_normalize="NFC")
    convert(src, tmp_path / "nfkc.txt", unicode_normalize="NFKC")
    assert read_pairs(tmp_path / "nfc.txt") == [QAPair("Café?", "\ufb01ne \u2460")]
    assert read_pairs(tmp_path / "nfkc.txt") == [QAPair("Café?", "fine 1")]


# --- output safety -----------------------------------------------------------------------------


def test_existing_output_is_refused_unless_overwrite(write, tmp_path):
    src = write("in.jsonl", jsonl(ROWS))
    out = write("out.txt", "precious")
    with pytest.raises(DataError, match=r"out\.txt exists; pass --overwrite"):
        convert(src, out)
    assert out.read_text() == "precious"
    convert(src, out, overwrite=True)
    assert read_pairs(out) == PAIRS
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.txt"]  # no temp files left


def test_nothing_half_written_on_a_late_error(write, tmp_path):
    rows = ROWS * 2000
    src = write("late.jsonl", jsonl(rows) + "{broken\n")
    out = write("out.txt", "old content")
    with pytest.raises(DataError, match=r"late\.jsonl:6001: invalid JSON"):
        convert(src, out, overwrite=True)
    assert out.read_text() == "old content"
    assert sorted(os.listdir(tmp_path)) == ["late.jsonl", "out.txt"]


def test_all_records_skipped_leaves_no_output(write, tmp_path):
    src = write("bad.jsonl", '{"question": "Q?", "answer": 1}\n')
    with pytest.raises(DataError, match=r"no Q&A records left to write.*not_string 1"):
        convert(src, tmp_path / "out.txt", skip_invalid=True)
    assert not (tmp_path / "out.txt").exists()


def test_converting_a_file_onto_itself_with_overwrite(write, tmp_path):
    src = write("same.txt", "\ufeff" + SOURCES["txt"].replace("\n", "\r\n"))
    convert(src, src, overwrite=True)
    assert src.read_text(encoding="utf-8") == SOURCES["txt"]


def test_reader_counts_without_raising_when_skipping(write):
    src = write("x.jsonl", jsonl(ROWS) + "oops\n" + '{"question": "", "answer": "a"}\n')
    reader = QAReader(src, ReadOptions(skip_invalid=True))
    assert list(reader) == PAIRS
    assert reader.read == 5 and dict(reader.invalid) == {"bad_json": 1, "empty_question": 1}
