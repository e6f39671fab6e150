"""Progress: the readers' ReadProgress callback, and the CLI's tqdm bar (drawn on a terminal only)."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys

import pytest
from data_testutil import PAIRS, jsonl, make_sqlite
from gptmed.data import ReadProgress, compute_stats, convert, split, validate
from gptmed.data.readers.reader import PROGRESS_EVERY

ROWS = [{"question": p.question, "answer": p.answer} for p in PAIRS]
N = 3 * 3000  # records in the test input: two calls on the way (4096, 8192) and one at the end


def _check_calls(calls: list[ReadProgress], size: int, stage: str = "reading") -> None:
    assert [c.records for c in calls] == [PROGRESS_EVERY, 2 * PROGRESS_EVERY, N]
    assert {c.stage for c in calls} == {stage}
    assert {c.total_bytes for c in calls} == {size}
    done = [c.bytes_read for c in calls]
    assert all(d is not None for d in done)
    assert done == sorted(done) and 0 < done[0] < size  # type: ignore[operator]
    assert done[-1] == size  # the end: the whole file


@pytest.mark.parametrize("dedupe", ["none", "exact"])  # the batch path and the per-record path
def test_convert_reports_records_and_bytes(write, tmp_path, dedupe):
    src = write("p.jsonl", jsonl(ROWS * 3000))
    calls: list[ReadProgress] = []
    convert(src, tmp_path / "a.txt", progress=calls.append, dedupe=dedupe)
    _check_calls(calls, src.stat().st_size)


@pytest.mark.parametrize("name", ["p.csv", "p.json", "p.txt"])
def test_every_text_format_counts_bytes(write, tmp_path, name):
    if name.endswith(".csv"):
        text = "question,answer\n" + "".join(f'"{r["question"]}","{r["answer"]}"\n' for r in ROWS * 3000)
    elif name.endswith(".json"):
        import json

        text = json.dumps(ROWS * 3000, indent=1)
    else:
        text = "\n".join(f"Q: {r['question']}\nA: {r['answer']}\n" for r in ROWS * 3000)
    src = write(name, text)
    calls: list[ReadProgress] = []
    validate(src, progress=calls.append)
    _check_calls(calls, src.stat().st_size)
    calls.clear()
    compute_stats(src, progress=calls.append)
    _check_calls(calls, src.stat().st_size)


def test_gzip_input_counts_compressed_bytes(write, tmp_path):
    rows = [{"question": f"Q{i}?", "answer": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(N)]
    src = write("p.jsonl.gz", gzip.compress(jsonl(rows).encode()))  # ~400 kB compressed
    calls: list[ReadProgress] = []
    convert(src, tmp_path / "a.txt", progress=calls.append)
    _check_calls(calls, src.stat().st_size)


def test_sqlite_counts_records_without_a_size(tmp_path):
    db = make_sqlite(tmp_path / "p.db", [(p.question, p.answer) for p in PAIRS * 3000])
    calls: list[ReadProgress] = []
    convert(db, tmp_path / "a.txt", progress=calls.append)
    assert [c.records for c in calls] == [PROGRESS_EVERY, 2 * PROGRESS_EVERY, N]
    assert {(c.bytes_read, c.total_bytes) for c in calls} == {(None, None)}


def test_split_reports_each_pass(write, tmp_path):
    src = write("p.jsonl", jsonl([{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(N)]))
    calls: list[ReadProgress] = []
    split(src, tmp_path / "out", progress=calls.append)
    stages = [c.stage for c in calls]
    assert stages == ["pass 1 of 2"] * 3 + ["pass 2 of 2"] * 3
    assert calls[2].records == calls[5].records == N


def _convert_on(tmp_path, stderr_tty: bool) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run convert in a subprocess with stderr on a pseudo-terminal or a pipe; its stderr text."""
    src = tmp_path / "big.jsonl"
    src.write_text(jsonl(ROWS * 20000))  # ~6 MB
    cmd = [
        sys.executable,
        "-m",
        "gptmed.data.cli",
        "convert",
        str(src),
        "-o",
        str(tmp_path / "o.txt"),
        "--overwrite",
    ]
    if not stderr_tty:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
        return proc, proc.stderr.decode()
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # A terminal of 24 rows and 100 columns (a new pseudo-terminal is 0 x 0: tqdm would hide the bar).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave) as child:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out = child.stdout.read() if child.stdout else b""
        child.wait(timeout=120)
    os.close(master)
    return subprocess.CompletedProcess(cmd, child.returncode, out, b""), b"".join(chunks).decode(
        errors="replace"
    )


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_cli_draws_a_bar_on_a_terminal_only(tmp_path):
    proc, err = _convert_on(tmp_path, stderr_tty=True)
    assert proc.returncode == 0, err
    assert "reading:" in err and "%|" in err and "B/s" in err  # bytes, rate (and ETA) on a terminal
    assert b"pairs written" in proc.stdout
    proc, err = _convert_on(tmp_path, stderr_tty=False)
    assert proc.returncode == 0, err
    assert err == ""  # a pipe (CI, a log file): no bar, nothing on stderr
