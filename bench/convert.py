"""Benchmark: `gptmed-data convert` side by side with the USER_MANUAL's own conversion snippets.

Part 1 (MedQuAD, ../shared/datasets/medquad/train.qa.jsonl.gz; skipped when absent): the file is
decompressed to a temp folder and rewritten as a JSON array, a CSV file and an SQLite table. Each
format is converted by the manual's snippet (json.load loop, pandas iterrows, sqlite fetchall) and
by our converter, each in its own subprocess; wall time (median of --repeat runs) and peak RSS
(os.wait4 rusage of that one child) are reported, ratio first.

Part 2: peak RSS of our converter on generated jsonl / csv / txt / json inputs from 10 MB up to
1 GB (--quick: up to 100 MB), to show memory stays flat as the input grows.

--json-parsers (only this part): gptmed-data's own incremental JSON array parser vs ijson
(``pip install ijson``) on the generated 1 GB JSON array (--quick: 100 MB): CPU time and peak RSS
of one process per parser, run side by side (alternating) in two rounds. ijson is run as the
reader would need it (with a duplicate-key check, which the own parser's object hook does) and
without; its pure-Python backend, the fallback where no compiled one installs, on 100 MB.

    python bench/convert.py [--quick] [--repeat 3] [--md docs/bench/data.md]
    python bench/convert.py --json-parsers [--quick]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDQUAD = ROOT / ".." / "shared" / "datasets" / "medquad" / "train.qa.jsonl.gz"
PY = sys.executable

# The manual's snippets, verbatim except for the file names.
MANUAL = {
    "json": """import json

# Read JSON
with open('{inp}', 'r') as f:
    data = json.load(f)

# Convert to text format
with open('{out}', 'w') as f:
    for item in data:
        f.write(f"Q: {{item['question']}}\\n")
        f.write(f"A: {{item['answer']}}\\n\\n")

print(f"Converted {{len(data)}} Q&A pairs to text format")
""",
    "csv": """import pandas as pd

# Read CSV
df = pd.read_csv('{inp}')

# Convert to text format
with open('{out}', 'w') as f:
    for _, row in df.iterrows():
        f.write(f"Q: {{row['question']}}\\n")
        f.write(f"A: {{row['answer']}}\\n\\n")
""",
    "sqlite": """import sqlite3

# Connect to database
conn = sqlite3.connect('{inp}')
cursor = conn.cursor()

# Query Q&A pairs
cursor.execute("SELECT question, answer FROM qa_table")

# Convert to text format
with open('{out}', 'w') as f:
    for question, answer in cursor.fetchall():
        f.write(f"Q: {{question}}\\n")
        f.write(f"A: {{answer}}\\n\\n")

conn.close()
""",
}


# Each measured command is started by a small launcher process, because on Linux a child's
# ru_maxrss also counts the memory of the process it was forked from (until exec): the launcher
# is ~10 MiB, so the figure is the measured command's own peak.
LAUNCH = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
print(json.dumps({"status": status, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "err": p.stderr.read().decode()[-2000:]}))
"""


# Bytecode caching as in an installed package (pip compiles .pyc files at install time), kept
# out of the source tree: without it, PYTHONDONTWRITEBYTECODE=1 makes every run recompile.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "gptmed-bench-pycache")


def run(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, CPU seconds, peak RSS in MiB) of that one process."""
    out = subprocess.run([PY, "-c", LAUNCH, *cmd], capture_output=True, text=True, check=True, env=ENV).stdout
    res = json.loads(out)
    if res["status"] != 0:
        raise SystemExit(f"command failed ({res['status']}): {' '.join(cmd)}\n{res['err']}")
    return res["wall"], res["cpu"], res["maxrss_kb"] // 1024  # Linux: KiB


def measure(cmd: list[str], repeat: int) -> tuple[float, float, int]:
    """Median wall and CPU (user+sys) seconds and the largest peak RSS of ``repeat`` runs."""
    run(cmd)  # warm-up: bytecode cache and page cache
    runs = [run(cmd) for _ in range(repeat)]
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        max(r[2] for r in runs),
    )


def ours(inp: Path, out: Path) -> list[str]:
    return [PY, "-m", "gptmed.data.cli", "convert", str(inp), "-o", str(out), "--overwrite"]


def build_medquad(tmp: Path) -> dict[str, Path]:
    rows = []
    with gzip.open(MEDQUAD, "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            rows.append((obj["question"], obj["answer"]))
    files = {
        "jsonl": tmp / "mq.jsonl",
        "json": tmp / "mq.json",
        "csv": tmp / "mq.csv",
        "sqlite": tmp / "mq.db",
    }
    with open(files["jsonl"], "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
    with open(files["json"], "w", encoding="utf-8") as fh:
        json.dump([{"question": q, "answer": a} for q, a in rows], fh, indent=2)
    with open(files["csv"], "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer"])
        w.writerows(rows)
    conn = sqlite3.connect(files["sqlite"])
    conn.execute("CREATE TABLE qa_table (id INTEGER PRIMARY KEY, question TEXT, answer TEXT)")
    conn.executemany("INSERT INTO qa_table (question, answer) VALUES (?, ?)", rows)
    conn.commit()
    conn.close()
    files["txt"] = tmp / "mq.txt"
    with gzip.open(MEDQUAD.with_name("train.qa.txt.gz"), "rb") as src, open(files["txt"], "wb") as dst:
        shutil.copyfileobj(src, dst)
    return files


def pairs_in(path: Path) -> int:
    from gptmed.core import read_qa_text

    return sum(1 for _ in read_qa_text(path))


def compare(tmp: Path, files: dict[str, Path], repeat: int) -> list[str]:
    """Ours vs the manual's snippet for each format in ``files`` (ours only where it has none)."""
    lines = [
        "| format | input MB | CPU ratio ours/manual | ours CPU s | manual CPU s | ours wall s | manual wall s "
        "| RSS ratio | ours peak RSS MiB | manual peak RSS MiB | pairs (ours / manual) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for fmt, inp in files.items():
        size = inp.stat().st_size / 1e6
        w_ours, c_ours, m_ours = measure(ours(inp, tmp / f"ours.{fmt}.txt"), repeat)
        n_ours = pairs_in(tmp / f"ours.{fmt}.txt")
        (tmp / f"ours.{fmt}.txt").unlink()
        if fmt not in MANUAL:
            lines.append(
                f"| {fmt} (no manual snippet) | {size:.1f} | | {c_ours:.2f} | | {w_ours:.2f} | | | {m_ours} | | {n_ours} |"
            )
            print(lines[-1], flush=True)
            continue
        if fmt == "csv" and importlib.util.find_spec("pandas") is None:
            lines.append(
                f"| {fmt} | {size:.1f} | | {c_ours:.2f} | (pandas missing) | {w_ours:.2f} | | | {m_ours} | | |"
            )
            continue
        script = tmp / f"manual_{fmt}.py"
        script.write_text(MANUAL[fmt].format(inp=inp, out=tmp / f"manual.{fmt}.txt"))
        w_man, c_man, m_man = measure([PY, str(script)], repeat)
        n_man = pairs_in(tmp / f"manual.{fmt}.txt")
        (tmp / f"manual.{fmt}.txt").unlink()
        lines.append(
            f"| {fmt} | {size:.1f} | **{c_ours / c_man:.2f}** | {c_ours:.2f} | {c_man:.2f} | {w_ours:.2f} | {w_man:.2f} "
            f"| **{m_ours / m_man:.2f}** | {m_ours} | {m_man} | {n_ours} / {n_man} |"
        )
        print(lines[-1], flush=True)
    return lines


def part1(tmp: Path, repeat: int) -> list[str]:
    if not MEDQUAD.exists():
        return ["MedQuAD not found at ../shared/datasets/medquad: skipped."]
    files = build_medquad(tmp)
    return compare(tmp, {k: files[k] for k in ("json", "csv", "sqlite", "jsonl", "txt")}, repeat)


def part1b(tmp: Path, mb: int, repeat: int) -> list[str]:
    """The same comparison on generated inputs of ``mb`` MB (startup costs amortised)."""
    files = {}
    for fmt in ("json", "csv", "sqlite"):
        files[fmt] = tmp / f"big.{'db' if fmt == 'sqlite' else fmt}"
        generate(files[fmt], fmt, mb * 1_000_000)
    lines = compare(tmp, files, repeat)
    for path in files.values():
        path.unlink()
    return lines


def generate(path: Path, fmt: str, target_bytes: int) -> int:
    """Write ~target_bytes of distinct Q&A records in ``fmt``; return the record count."""
    answer = "The answer explains the topic in plain words, with a few details and an example. " * 4
    n = 0
    written = 0
    if fmt == "sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE qa_table (id INTEGER PRIMARY KEY, question TEXT, answer TEXT)")
        while written < target_bytes:
            rows = [
                (f"What is item {i} of set {i % 1009}?", f"Item {i}: {answer}") for i in range(n, n + 2000)
            ]
            conn.executemany("INSERT INTO qa_table (question, answer) VALUES (?, ?)", rows)
            written += sum(len(q) + len(a) + 8 for q, a in rows)
            n += len(rows)
        conn.commit()
        conn.close()
        return n
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            fh.write("question,answer\n")
        if fmt == "json":
            fh.write("[\n")
        while written < target_bytes:
            chunk = []
            for _ in range(2000):
                q, a = f"What is item {n} of set {n % 1009}?", f"Item {n}: {answer}"
                if fmt == "jsonl":
                    chunk.append(json.dumps({"question": q, "answer": a}) + "\n")
                elif fmt == "json":
                    chunk.append(("" if n == 0 else ",\n") + json.dumps({"question": q, "answer": a}))
                elif fmt == "csv":
                    chunk.append(f'"{q}","{a}"\n')
                else:
                    chunk.append(f"Q: {q}\nA: {a}\n\n")
                n += 1
            text = "".join(chunk)
            fh.write(text)
            written += len(text)
        if fmt == "json":
            fh.write("\n]\n")
    return n


def part2(tmp: Path, sizes_mb: list[int], formats: list[str]) -> list[str]:
    lines = [
        "| format | input MB | records | wall s | CPU s | MB/s (CPU) | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fmt in formats:
        for mb in sizes_mb:
            inp = tmp / f"gen_{mb}.{fmt}"
            n = generate(inp, fmt, mb * 1_000_000)
            size = inp.stat().st_size / 1e6
            t, cpu, rss = run(ours(inp, tmp / "gen_out.txt"))
            lines.append(f"| {fmt} | {size:.0f} | {n:,} | {t:.1f} | {cpu:.1f} | {size / cpu:.0f} | {rss} |")
            print(lines[-1], flush=True)
            inp.unlink()
            (tmp / "gen_out.txt").unlink()
    return lines


# One process per parser: iterate the array's elements (objects) and touch one field of each.
JSON_CHILD = """
import sys
import gptmed.data.readers  # the same imports on every side
variant, path = sys.argv[1], sys.argv[2]
n = 0
if variant == "startup":
    pass  # imports only: what every other row also pays
elif variant == "own":
    from gptmed.data.readers.json_stream import ArrayStream
    with open(path, encoding="utf-8") as fh:
        stream = ArrayStream(fh, path)
        assert stream.start() == "["
        for obj in stream.elements():
            n += type(obj["question"]) is str
else:
    import ijson
    backend = ijson.get_backend(variant.split("+")[0])
    map_type = None
    if variant.endswith("+dupcheck"):
        class DupCheck(dict):  # duplicate keys found, as the own parser's object hook does
            dups = frozenset()
            def __setitem__(self, key, value):
                if key in self:
                    self.dups = self.dups | {key}
                dict.__setitem__(self, key, value)
        map_type = DupCheck
    with open(path, "rb") as fh:
        for obj in backend.items(fh, "item", map_type=map_type, use_float=True):
            n += type(obj["question"]) is str
print(n)
"""


def json_parsers(tmp: Path, mb: int, rounds: int = 2) -> list[str]:
    """Own JSON array parser vs ijson: CPU seconds per round and peak RSS, one process each."""
    if importlib.util.find_spec("ijson") is None:
        return ["ijson is not installed (pip install ijson): skipped."]
    big, small = tmp / "big.json", tmp / "small.json"
    generate(big, "json", mb * 1_000_000)
    generate(small, "json", min(mb, 100) * 1_000_000)
    cases = [
        ("own", big),
        ("yajl2_c+dupcheck", big),
        ("yajl2_c", big),
        ("own", small),
        ("python+dupcheck", small),
        ("startup", small),
    ]
    cpu: dict[tuple[str, Path], list[float]] = {c: [] for c in cases}
    rss: dict[tuple[str, Path], int] = dict.fromkeys(cases, 0)
    for _ in range(rounds):
        for variant, path in cases:  # side by side: every parser once per round
            _, c, r = run([PY, "-c", JSON_CHILD, variant, str(path)])
            cpu[(variant, path)].append(c)
            rss[(variant, path)] = max(rss[(variant, path)], r)
            print(f"  {variant} {path.stat().st_size / 1e6:.0f} MB: {c:.2f} s CPU, {r} MiB", flush=True)
    lines = [
        "| parser | input MB | CPU s (rounds) | CPU ratio to own, start-up left out | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    startup = statistics.mean(cpu[("startup", small)])
    for variant, path in cases:
        own = statistics.mean(cpu[("own", path)]) - startup
        runs = " / ".join(f"{c:.2f}" for c in cpu[(variant, path)])
        ratio = (
            ""
            if variant == "startup"
            else f"**{(statistics.mean(cpu[(variant, path)]) - startup) / own:.2f}**"
        )
        size = "(imports only)" if variant == "startup" else f"{path.stat().st_size / 1e6:.0f}"
        lines.append(f"| {variant} | {size} | {runs} | {ratio} | {rss[(variant, path)]} |")
    return lines


def machine() -> str:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="part 2 up to 100 MB instead of 1 GB")
    ap.add_argument("--repeat", type=int, default=3, help="runs per part-1 measurement (median time)")
    ap.add_argument("--skip-part2", action="store_true", help="skip the RSS-vs-size runs")
    ap.add_argument("--medquad-only", action="store_true", help="only the MedQuAD comparison")
    ap.add_argument("--formats", default="jsonl,csv,txt,json", help="part 2 formats")
    ap.add_argument("--md", type=Path, help="also write the markdown report here")
    ap.add_argument("--json-parsers", action="store_true", help="only: own JSON array parser vs ijson")
    args = ap.parse_args()
    sizes = [10, 30, 100] if args.quick else [10, 100, 1000]
    command = "python bench/convert.py " + " ".join(sys.argv[1:])
    header = [
        "# gptmed-data convert: benchmark",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"load average at start {os.getloadavg()[0]:.1f}",
        f"- command: `{command.strip()}`",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="gptmed-bench-") as d:
        tmp = Path(d)
        print("\n".join(header), flush=True)
        if args.json_parsers:
            size = 100 if args.quick else 1000
            body = [f"## JSON array parsers: own vs ijson (~{size} MB)", "", *json_parsers(tmp, size)]
        else:
            body = ["## MedQuAD train split: ours vs the manual's snippets", "", *part1(tmp, args.repeat)]
        if not (args.medquad_only or args.json_parsers):
            big = 30 if args.quick else 100
            body += ["", f"## Generated ~{big} MB inputs: ours vs the manual's snippets", ""]
            body += part1b(tmp, big, 1)
        if not (args.skip_part2 or args.medquad_only or args.json_parsers):
            body += ["", "## Peak RSS vs input size (ours, generated inputs)", ""]
            body += part2(tmp, sizes, args.formats.split(","))
    report = "\n".join(header + body) + "\n"
    print(report)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
