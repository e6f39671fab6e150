"""Parquet input (the ``parquet`` extra): files written by pyarrow in the test, read by convert.

The nox session installs the extra, so these run in CI; without pyarrow only the install-hint
test runs (it blocks the import in a subprocess, so it runs either way)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from data_testutil import PAIRS, read_pairs
from gptmed.core import DataError
from gptmed.data import QAReader, ReadOptions, convert, detect_format, iter_records


def test_without_pyarrow_the_error_names_the_extra(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["pyarrow"] = None  # what an environment without the extra sees: ImportError
        from gptmed.data.cli import main
        main(["convert", {str(tmp_path / "x.parquet")!r}, "-o", {str(tmp_path / "o.txt")!r}])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f'Error: {tmp_path / "x.parquet"}: reading Parquet needs pyarrow; pip install "gptmed-data[parquet]"'
    ]
    assert not (tmp_path / "o.txt").exists()


pa = pytest.importorskip("pyarrow", reason='needs the parquet extra: pip install "gptmed-data[parquet]"')
pq = pytest.importorskip("pyarrow.parquet")


def _write(path, columns: dict[str, list[object]], **kw):
    pq.write_table(pa.table(columns), path, **kw)
    return path


def test_convert_reads_the_question_and_answer_columns(tmp_path, cli):
    # Other columns around them, the answer first: the columns are found by name.
    src = _write(
        tmp_path / "qa.parquet",
        {
            "Answer": [p.answer for p in PAIRS],
            "id": list(range(len(PAIRS))),
            "Question": [p.question for p in PAIRS],
        },
    )
    result = cli("convert", src, "-o", tmp_path / "out.txt")
    assert result.exit_code == 0, result.output
    assert f"converted {src} (parquet)" in result.output
    assert read_pairs(tmp_path / "out.txt") == PAIRS


def test_named_fields_and_many_row_groups(tmp_path):
    n = 10_000  # several row groups and several 4096-row batches, in order
    src = _write(
        tmp_path / "big",  # no extension: detected from the PAR1 magic
        {
            "prompt_text": [f"Question {i}?" for i in range(n)],
            "reply_text": [f"Answer {i}." for i in range(n)],
        },
        row_group_size=3000,
    )
    assert detect_format(src) == "parquet"
    pairs = list(iter_records(src, question_field="prompt_text", answer_field="reply_text"))
    assert len(pairs) == n
    assert pairs[0].question == "Question 0?" and pairs[-1].answer == f"Answer {n - 1}."
    assert [p.question for p in pairs] == [f"Question {i}?" for i in range(n)]


def test_a_bad_row_is_named_and_can_be_skipped(tmp_path):
    answers: list[object] = [f"Answer {i}." for i in range(6000)]
    answers[4999] = None  # row 5000, in the second 4096-row batch
    src = _write(tmp_path / "x.parquet", {"question": [f"Q{i}?" for i in range(6000)], "answer": answers})
    with pytest.raises(DataError) as err:
        convert(src, tmp_path / "o.txt")
    assert str(err.value) == (
        f"{src}: row 5000: the answer is null, not a string; "
        "fix the record, or pass --skip-invalid to skip and count such records"
    )
    assert not (tmp_path / "o.txt").exists()
    report = convert(src, tmp_path / "o.txt", skip_invalid=True)
    assert (report.read, report.written, report.invalid) == (6000, 5999, {"not_string": 1})
    assert report.examples == [f"{src}: row 5000: the answer is null, not a string"]


def test_a_column_that_is_not_text_is_invalid_per_row(tmp_path):
    src = _write(tmp_path / "x.parquet", {"question": [1, 2], "answer": ["a", "b"]})
    reader = QAReader(src, ReadOptions(skip_invalid=True))
    assert list(reader) == []
    assert dict(reader.invalid) == {"not_string": 2}
    assert str(reader.examples[0]) == f"{src}: row 1: the question is a number (1), not a string"


def test_a_missing_column_lists_the_columns(tmp_path, cli):
    src = _write(tmp_path / "x.parquet", {"question": ["q?"], "text": ["a."]})
    with pytest.raises(DataError) as err:
        list(iter_records(src))
    assert str(err.value) == (
        f"{src}: cannot tell which field holds the answer; the fields found are 'question', 'text'; "
        "pass --answer-field NAME (tried answer, a, output, response, completion, reply)"
    )
    with pytest.raises(DataError, match=r"no answer field 'reply'; the fields found are 'question', 'text'"):
        list(iter_records(src, answer_field="reply"))
    result = cli("convert", src, "-o", tmp_path / "o.txt", "--answer-field", "text")
    assert result.exit_code == 0, result.output
    assert read_pairs(tmp_path / "o.txt")[0].answer == "a."


def test_a_damaged_file_is_a_one_line_error(tmp_path):
    good = _write(tmp_path / "good.parquet", {"question": ["q?"], "answer": ["a."]})
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-20])  # the footer is cut off
    proc = subprocess.run(
        [sys.executable, "-m", "gptmed.data.cli", "convert", str(bad), "-o", str(tmp_path / "o.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: cannot read the Parquet file: "), lines
    assert lines[0].endswith("; check that it is a complete Parquet file")
