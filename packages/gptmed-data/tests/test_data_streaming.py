"""Streaming: the memory a conversion needs does not grow with the input (tracemalloc peak, and the
process's peak RSS for the formats whose readers allocate outside Python)."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from gptmed.data import convert


def _make(path: Path, fmt: str, n: int) -> None:
    rows = (
        (f"Question {i} about topic {i % 97}?", f"Answer {i}: " + "lorem ipsum dolor sit amet " * 6)
        for i in range(n)
    )
    if fmt == "sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE qa (question TEXT, answer TEXT)")
        conn.executemany("INSERT INTO qa VALUES (?, ?)", rows)
        conn.commit()
        conn.close()
        return
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if fmt == "txt":
            fh.writelines(f"Q: {q}\nA: {a}\n\n" for q, a in rows)
        elif fmt == "jsonl":
            fh.writelines(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
        elif fmt == "json":
            fh.write("[\n" + ",\n".join(json.dumps({"question": q, "answer": a}) for q, a in rows) + "\n]\n")
        else:
            w = csv.writer(fh, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["question", "answer"])
            w.writerows(rows)


def _peak(src: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        convert(src, out, overwrite=True)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "csv", "tsv", "sqlite"])
def test_peak_memory_is_flat_in_input_size(tmp_path, fmt):
    ext = "db" if fmt == "sqlite" else fmt
    small, big = tmp_path / f"small.{ext}", tmp_path / f"big.{ext}"
    _make(small, fmt, 1_000)
    _make(big, fmt, 8_000)  # ~1.8 MB
    _peak(small, tmp_path / "warm.txt")  # imports and caches outside the measurement
    p_small, p_big = _peak(small, tmp_path / "s.txt"), _peak(big, tmp_path / "b.txt")
    size = big.stat().st_size
    assert p_big < p_small + 512 * 1024, (p_small, p_big, size)
    assert p_big < size / 2, (p_big, size)  # a non-streaming reader holds the whole input


_PEAK_RSS = """
import re, sys
from gptmed.data import convert
convert(sys.argv[1], sys.argv[2], overwrite=True)
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc (VmHWM)")
@pytest.mark.parametrize("fmt", ["sqlite", "json", "csv"])
def test_peak_rss_is_flat_in_input_size(tmp_path, fmt):
    # tracemalloc sees only Python's allocations, not SQLite's page cache or the C parsers' buffers:
    # the process's peak resident set (VmHWM, which unlike ru_maxrss does not inherit the forking
    # parent's size) must not grow with the input either. Measured: ~23 MB for 0.2 MB and 45 MB
    # inputs alike, while json.load of the 45 MB file peaks at ~158 MB.
    ext = "db" if fmt == "sqlite" else fmt
    small, big = tmp_path / f"small.{ext}", tmp_path / f"big.{ext}"
    _make(small, fmt, 1_000)
    _make(big, fmt, 200_000)  # 40-46 MB

    def peak_kib(src: Path) -> int:
        cmd = [sys.executable, "-c", _PEAK_RSS, str(src), str(tmp_path / "out.txt")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        return int(done.stdout.split()[-1])

    p_small, p_big = peak_kib(small), peak_kib(big)
    assert p_big - p_small < 8 * 1024, (p_small, p_big, big.stat().st_size // 1024)
