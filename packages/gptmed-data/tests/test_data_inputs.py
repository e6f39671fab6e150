"""Inputs that are not plain, whole files: damaged gzip, standard input, pipes and FIFOs, SIGTERM."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from data_testutil import PAIRS, canonical, jsonl, read_pairs
from gptmed.core import DataError
from gptmed.data import compute_stats, iter_records

ROWS = [{"question": p.question, "answer": p.answer} for p in PAIRS]
TRUNCATED = "Compressed file ended before the end-of-stream marker was reached"


def run_cli(
    *args: object, cwd: Path, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``gptmed-data ARGS`` in a real process; temp files go to ``cwd/tmp`` (checked empty after)."""
    (cwd / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(cwd / "tmp")}
    return subprocess.run(
        [sys.executable, "-m", "gptmed.data.cli", *map(str, args)],
        cwd=cwd,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# --- damaged .gz -------------------------------------------------------------------------------


def _truncated_gz(path: Path) -> Path:
    data = gzip.compress(canonical(PAIRS * 200).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("cmd", ["convert", "validate", "stats", "split"])
def test_truncated_gzip_is_a_one_line_error_naming_the_file(cli, tmp_path, cmd):
    # Before: gzip's EOFError reached click, which printed a bare "Aborted!" (exit 1).
    src = _truncated_gz(tmp_path / "trunc.txt.gz")
    extra = {"convert": ["-o", tmp_path / "o.txt"], "split": ["--out-dir", tmp_path / "d"]}.get(cmd, [])
    result = cli(cmd, src, *extra)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {src}: corrupt or truncated gzip file ({TRUNCATED}); decompress it and check it (gzip -t)"
    ]
    assert "Aborted" not in result.output
    assert list(tmp_path.iterdir()) == [src]  # nothing written


def test_truncated_gzip_with_debug_shows_the_error_not_aborted(cli, tmp_path):
    src = _truncated_gz(tmp_path / "trunc.qa.gz")
    with pytest.raises(DataError, match="corrupt or truncated gzip file"):
        cli("--debug", "convert", src, "-o", tmp_path / "o.txt")
    with pytest.raises(DataError, match=f"{src}: corrupt or truncated gzip file"):
        list(iter_records(src))


@pytest.mark.parametrize("name", ["fake.txt.gz", "fake.gz"])  # by suffix, and by content detection
def test_file_that_is_not_gzip_names_the_file_and_says_what_to_do(cli, tmp_path, name):
    src = tmp_path / name
    src.write_bytes(b"garbage")
    result = cli("convert", src, "-o", tmp_path / "o.txt")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {src}: corrupt or truncated gzip file (Not a gzipped file (b'ga')); decompress it and check "
        "it (gzip -t), or drop the .gz from the name of a file that is not compressed"
    ]


# --- standard input, pipes, FIFOs --------------------------------------------------------------


@pytest.mark.parametrize("source", ["-", "/dev/stdin"])
@pytest.mark.parametrize("content", [canonical(PAIRS), jsonl(ROWS)], ids=["txt", "jsonl"])
def test_standard_input_is_read_once_and_its_format_detected(tmp_path, source, content):
    # Before: /dev/stdin read as "the file is empty" (detection had drained the pipe) and
    # "-" was "no such file: -".
    proc = run_cli("convert", source, "-o", "o.txt", cwd=tmp_path, stdin=content.encode())
    assert proc.returncode == 0, proc.stderr
    assert read_pairs(tmp_path / "o.txt") == PAIRS
    assert list((tmp_path / "tmp").iterdir()) == []  # the copy of the input is removed


def test_split_reads_standard_input_twice_from_its_copy(tmp_path):
    proc = run_cli(
        "split", "-", "--out-dir", "d", "--val", "0.34", cwd=tmp_path, stdin=canonical(PAIRS).encode()
    )
    assert proc.returncode == 0, proc.stderr
    assert "split <stdin>" in proc.stdout
    got = read_pairs(tmp_path / "d" / "train.txt") + read_pairs(tmp_path / "d" / "val.txt")
    assert sorted(got, key=str) == sorted(PAIRS, key=str)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_standard_input_errors_name_stdin(tmp_path):
    proc = run_cli("convert", "-", "-o", "o.txt", cwd=tmp_path, stdin=b"Q: no answer\n")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: <stdin>:1: question without an answer;")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_without_extension_is_read_once(tmp_path):
    # Before: the content detection read the FIFO, the reader opened it again and waited forever.
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as fh:
            fh.write(canonical(PAIRS).encode())

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    proc = run_cli("convert", fifo, "-o", "o.txt", cwd=tmp_path, timeout=20)
    thread.join(5)
    assert proc.returncode == 0, proc.stderr
    assert f"converted {fifo} (txt)" in proc.stdout
    assert read_pairs(tmp_path / "o.txt") == PAIRS


# --- SIGTERM -----------------------------------------------------------------------------------


def _big_input(path: Path) -> Path:
    block = canonical(PAIRS * 1000)
    path.write_text("\n".join([block] * 150))  # ~37 MB: a conversion of about half a second
    return path


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("cmd", ["convert", "split"])
def test_sigterm_exits_143_and_leaves_no_temp_files(tmp_path, cmd):
    # Before: SIGTERM killed the process and left .out.jsonl.tmp-XXXX (and split's folder) behind.
    src = _big_input(tmp_path / "big.txt")
    before = set(tmp_path.iterdir())
    args = ["-o", "out.jsonl"] if cmd == "convert" else ["--out-dir", "bs"]
    watch = tmp_path if cmd == "convert" else tmp_path / "bs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptmed.data.cli", cmd, src.name, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (watch.is_dir() and any(".tmp-" in p.name for p in watch.iterdir())):
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert set(tmp_path.iterdir()) == before  # no temp files, no new folder


# --- stats stops at an invalid record like convert ---------------------------------------------


def test_stats_library_raises_on_an_invalid_record_unless_skipping(write):
    src = write("bad.jsonl", jsonl(ROWS) + "{oops\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:4: invalid JSON.*--skip-invalid"):
        compute_stats(src)
    assert compute_stats(src, skip_invalid=True).invalid == {"bad_json": 1}
