"""The gptmed-data command: exit codes, one-line errors, reports, and the manual's snippets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_testutil import PAIRS, canonical, jsonl, make_sqlite, read_pairs
from gptmed.core import QAPair

ROWS = [{"question": p.question, "answer": p.answer} for p in PAIRS]


def test_version_and_help(cli):
    result = cli("--version")
    assert result.exit_code == 0 and "gptmed-data, version 0.1.0" in result.output
    for cmd in ("convert", "validate", "stats", "split", "synth", "sample"):
        result = cli(cmd, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, cmd


def test_manual_json_snippet_is_one_command(cli, tmp_path):
    # USER_MANUAL 1.2: json.load + f.write loop over item['question'] / item['answer'].
    (tmp_path / "qa_data.json").write_text(json.dumps(ROWS, indent=2))
    result = cli("convert", tmp_path / "qa_data.json", "-o", tmp_path / "qa_data.txt")
    assert result.exit_code == 0, result.output
    assert "pairs written             3" in result.output
    assert read_pairs(tmp_path / "qa_data.txt") == PAIRS


def test_manual_csv_snippet_is_one_command(cli, tmp_path):
    (tmp_path / "qa_data.csv").write_text(
        "question,answer\n" + "".join(f'"{r["question"]}","{r["answer"]}"\n' for r in ROWS)
    )
    result = cli("convert", tmp_path / "qa_data.csv", "-o", tmp_path / "qa_data.txt")
    assert result.exit_code == 0, result.output
    assert read_pairs(tmp_path / "qa_data.txt") == PAIRS


def test_manual_sqlite_snippet_is_one_command(cli, tmp_path):
    db = make_sqlite(tmp_path / "qa_database.db", [(p.question, p.answer) for p in PAIRS])
    result = cli("convert", db, "-o", tmp_path / "qa_data.txt", "--table", "qa_table")
    assert result.exit_code == 0, result.output
    assert read_pairs(tmp_path / "qa_data.txt") == PAIRS
    result = cli("convert", db, "-o", tmp_path / "q2.txt", "--query", "SELECT question, answer FROM qa_table")
    assert result.exit_code == 0, result.output
    assert read_pairs(tmp_path / "q2.txt") == PAIRS


def test_bad_input_is_one_line_error_exit_1(cli, tmp_path):
    (tmp_path / "bad.jsonl").write_text(jsonl(ROWS) + "{oops\n")
    result = cli("convert", tmp_path / "bad.jsonl", "-o", tmp_path / "out.txt")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bad.jsonl:4" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.txt").exists()


def test_skip_invalid_report(cli, tmp_path):
    (tmp_path / "bad.jsonl").write_text(jsonl(ROWS) + "{oops\n")
    result = cli("convert", tmp_path / "bad.jsonl", "-o", tmp_path / "out.txt", "--skip-invalid", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["written"] == 3 and report["invalid"] == {"bad_json": 1} and report["skipped"] == 1


def test_existing_output_needs_overwrite(cli, tmp_path):
    (tmp_path / "in.txt").write_text(canonical(PAIRS))
    (tmp_path / "out.txt").write_text("keep")
    result = cli("convert", tmp_path / "in.txt", "-o", tmp_path / "out.txt")
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert (tmp_path / "out.txt").read_text() == "keep"
    assert cli("convert", tmp_path / "in.txt", "-o", tmp_path / "out.txt", "--overwrite").exit_code == 0


def test_missing_input_file(cli, tmp_path):
    result = cli("convert", tmp_path / "nope.csv", "-o", tmp_path / "out.txt")
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_usage_errors_exit_2(cli, tmp_path):
    (tmp_path / "in.txt").write_text(canonical(PAIRS))
    assert cli("convert", tmp_path / "in.txt").exit_code == 2  # no -o
    assert cli("convert", tmp_path / "in.txt", "-o", tmp_path / "o.txt", "--dedupe", "fuzzy").exit_code == 2
    result = cli(
        "convert",
        tmp_path / "in.txt",
        "-o",
        tmp_path / "o.txt",
        "--min-answer-words",
        "9",
        "--max-answer-words",
        "3",
    )
    assert result.exit_code == 2 and "greater than" in result.output
    assert cli("sample").exit_code == 2


def test_debug_shows_traceback(cli, tmp_path):
    from gptmed.core import DataError

    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError):
        cli("--debug", "convert", tmp_path / "e.txt", "-o", tmp_path / "o.txt")


def test_validate_exit_codes(cli, tmp_path):
    (tmp_path / "ok.txt").write_text(canonical(PAIRS))
    assert cli("validate", tmp_path / "ok.txt").exit_code == 0
    (tmp_path / "bad.txt").write_text("Q: no answer\n\nQ: fine?\nA: yes.\n")
    result = cli("validate", tmp_path / "bad.txt")
    assert result.exit_code == 1 and "bad.txt:1: question without an answer" in result.output
    result = cli("validate", tmp_path / "bad.txt", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["ok"] is False


def test_stats_json(cli, tmp_path):
    (tmp_path / "in.txt").write_text(canonical(PAIRS))
    result = cli("stats", tmp_path / "in.txt", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["pairs"] == 3 and data["answer_words"]["min"] == 11


def test_split_cli(cli, tmp_path):
    (tmp_path / "in.txt").write_text(canonical([QAPair(f"Q{i}?", f"A{i}.") for i in range(20)]))
    result = cli(
        "split",
        tmp_path / "in.txt",
        "--out-dir",
        tmp_path / "d",
        "--val",
        "0.1",
        "--test",
        "0.1",
        "--seed",
        "42",
    )
    assert result.exit_code == 0, result.output
    assert [len(read_pairs(tmp_path / "d" / f"{n}.txt")) for n in ("train", "val", "test")] == [16, 2, 2]


def test_synth_cli(cli, tmp_path):
    result = cli(
        "synth",
        "--out",
        tmp_path / "f.txt",
        "--facts",
        "20",
        "--seed",
        "7",
        "--heldout-out",
        tmp_path / "h.txt",
    )
    assert result.exit_code == 0, result.output
    assert len(read_pairs(tmp_path / "f.txt")) == 60 and len(read_pairs(tmp_path / "h.txt")) == 20
    again = cli("synth", "--out", tmp_path / "g.txt", "--facts", "20", "--seed", "7")
    assert again.exit_code == 0
    assert (tmp_path / "f.txt").read_bytes() == (tmp_path / "g.txt").read_bytes()


def test_sample_cli(cli, tmp_path):
    from gptmed.data import sample_path

    result = cli("sample", "-o", tmp_path / "s.txt")
    assert result.exit_code == 0
    assert (tmp_path / "s.txt").read_bytes() == sample_path().read_bytes()
    result = cli("sample", "--info")
    assert result.exit_code == 0 and "Q&A pairs" in result.output and "license" in result.output
    assert cli("sample", "-o", tmp_path / "s.txt").exit_code == 1


def test_sample_to_standard_output_writes_no_file_named_dash(tmp_path):
    from gptmed.data import sample_path

    proc = subprocess.run(
        [sys.executable, "-m", "gptmed.data.cli", "sample", "-o", "-"], cwd=tmp_path, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == sample_path().read_bytes()
    assert list(tmp_path.iterdir()) == []


def test_console_script_runs(tmp_path):
    (tmp_path / "in.jsonl").write_text(jsonl(ROWS))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptmed.data.cli",
            "convert",
            str(tmp_path / "in.jsonl"),
            "-o",
            str(tmp_path / "o.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_pairs(Path(tmp_path / "o.txt")) == PAIRS


def test_group_help_names_only_real_commands(cli):
    # Before: "Convert, check, clean, count and split" with no clean command.
    result = cli("--help")
    assert result.exit_code == 0
    summary = result.output.split("Options:")[0]
    assert "clean, count" not in summary and "--dedupe" in summary
    assert cli("clean", "--help").exit_code == 2


def test_validate_error_goes_to_stderr_and_the_summary_to_stdout(cli, tmp_path):
    # Before: "  error: ..." on stdout, stderr empty.
    (tmp_path / "enc.txt").write_bytes(b"Q: caf\xe9?\nA: yes.\n")
    for extra in ([], ["--json"]):
        result = cli("validate", tmp_path / "enc.txt", *extra)
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [
            f"Error: {tmp_path / 'enc.txt'}:1: not valid utf-8: byte 0xe9 at byte offset 6; pass --encoding "
            '(e.g. --encoding cp1252 for Windows/Excel "ANSI" files, latin-1, utf-16), or convert the file to UTF-8'
        ]
        assert "Error" not in result.stdout and "error:" not in result.stdout
    assert result.stdout.startswith("{")
    assert cli("validate", tmp_path / "enc.txt").stdout.endswith("0 valid pairs in 0 records\nINVALID\n")


def test_stats_stops_at_an_invalid_record_like_convert(cli, tmp_path):
    # Before: stats exited 0 (counting the bad line) while convert and split exited 1.
    (tmp_path / "bad.jsonl").write_text(jsonl(ROWS) + "{oops\n")
    errors = []
    for cmd, extra in (("stats", []), ("convert", ["-o", tmp_path / "o.txt"])):
        result = cli(cmd, tmp_path / "bad.jsonl", *extra)
        assert result.exit_code == 1 and result.stdout == ""
        errors.append(result.stderr)
    assert errors[0] == errors[1] and len(errors[0].splitlines()) == 1 and "bad.jsonl:4" in errors[0]
    result = cli("stats", tmp_path / "bad.jsonl", "--skip-invalid")
    assert result.exit_code == 0 and "invalid bad_json" in result.stdout


def test_reports_say_1_pair_not_1_pairs(cli, tmp_path):
    (tmp_path / "one.txt").write_text("Q: a?\nA: " + " ".join(["w"] * 501) + "\n")
    result = cli("split", tmp_path / "one.txt", "--out-dir", tmp_path / "d", "--val", "0")
    assert result.exit_code == 0
    assert "        1 pair          1 question  -> " in result.stdout
    result = cli("validate", tmp_path / "one.txt")
    assert "1 valid pair in 1 record\n" in result.stdout
    result = cli("convert", tmp_path / "one.txt", "-o", tmp_path / "o.txt")
    assert "note: 1 answer has more than 500 words" in result.stdout
    result = cli("split", tmp_path / "one.txt", "--out-dir", tmp_path / "e")
    assert result.exit_code == 1 and "1 distinct question is too few for val=0.1" in result.stderr


# Every input option reaches the library through each command that reads an input: each run below
# fails, or reads other pairs, when the command does not pass one of them on.
READING_COMMANDS = ("convert", "validate", "stats", "split")


def _read_with(cli, cmd: str, src: Path, out: Path, *args: str) -> tuple[int, list[tuple[str, str]], dict]:
    """Run ``cmd`` on ``src`` with ``--json``: its exit code, the pairs it wrote (convert: the
    output; split: train.txt, with --val 0) as sorted (question, answer), and its JSON report."""
    written = {"convert": out / "out.txt", "split": out / "train.txt"}.get(cmd)
    target = {"convert": ["-o", str(written)], "split": ["--out-dir", str(out), "--val", "0"]}.get(cmd, [])
    result = cli(cmd, src, *target, "--json", *args)
    pairs = read_pairs(written) if written is not None and written.exists() else []
    report = json.loads(result.stdout) if result.stdout.startswith("{") else {}
    return result.exit_code, sorted((p.question, p.answer) for p in pairs), report


@pytest.mark.parametrize("cmd", READING_COMMANDS)
def test_every_text_input_option_reaches_the_reader(cli, tmp_path, cmd):
    # A CSV under a .txt name (--format), in Latin-1 (--encoding), separated by ~ (--delimiter:
    # detection never tries it), with columns of no default name (--question/--answer-field), an
    # empty answer (--skip-invalid) and a "²" that NFKC turns into "2" (a duplicate once normalised).
    rows = ["Frage~Antwort", "Was ist ß?~Ein Buchstabe.", "Dose ²?~Zwei mg.", "Dose 2?~Zwei mg.", "Leer?~"]
    src = tmp_path / "latin.txt"
    src.write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    how = ["--format", "csv", "--encoding", "latin-1", "--delimiter", "~", "--question-field", "Frage"]
    how += ["--answer-field", "Antwort", "--skip-invalid"]
    code, pairs, report = _read_with(cli, cmd, src, tmp_path / "a", *how, "--unicode-normalize", "NFKC")
    if cmd in ("convert", "split"):
        expected = [("Dose 2?", "Zwei mg."), ("Dose 2?", "Zwei mg."), ("Was ist ß?", "Ein Buchstabe.")]
        assert (code, pairs) == (0, expected), report
    elif cmd == "stats":
        assert (code, report["pairs"], report["exact_duplicates"]) == (0, 3, 1), report
    else:  # validate lists invalid records whatever --skip-invalid says: exit 1 for the empty answer
        assert (code, report["pairs"], sum(report["invalid"].values())) == (1, 3, 1), report
    code, _, report = _read_with(cli, cmd, src, tmp_path / "b", *how, "--max-field-chars", "5")
    assert code != 0 and report.get("pairs", 0) == 0, report  # "Buchstabe." is over 5 characters


@pytest.mark.parametrize("cmd", READING_COMMANDS)
def test_every_table_and_json_input_option_reaches_the_reader(cli, tmp_path, cmd):
    db = make_sqlite(tmp_path / "two.db", [(p.question, p.answer) for p in PAIRS[:2]], table="a")
    make_sqlite(db, [(p.question, p.answer) for p in PAIRS], table="b")  # two tables: --table/--query
    doc = tmp_path / "doc.json"  # two lists of records: --records-key says which
    doc.write_text(json.dumps({"old": ROWS[:1], "new": ROWS}))
    runs = [
        (db, ["--table", "b"], PAIRS),
        (db, ["--query", "SELECT question, answer FROM b WHERE id = 2"], PAIRS[1:2]),
        (doc, ["--records-key", "new"], PAIRS),
    ]
    for i, (src, args, expected) in enumerate(runs):
        code, pairs, report = _read_with(cli, cmd, src, tmp_path / str(i), *args)
        assert code == 0, (args, report)
        if cmd in ("convert", "split"):
            assert pairs == sorted((p.question, p.answer) for p in expected), args
        else:
            assert report["pairs"] == len(expected), args
