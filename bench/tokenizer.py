"""Tokenizer benchmark: gptmed-tokenizer side by side with bare SentencePiece and Hugging Face tokenizers.

    python bench/tokenizer.py [--repeats 3] [--vocab-size 8000] [--threads N] [--json out.json]

Data: ../shared/datasets/medquad/train.qa.txt.gz next to the repository (skipped when absent),
decompressed once to a temp folder so that every contender reads the same plain file.

Rows (each run in a fresh subprocess so that peak RSS is its own; median of --repeats runs):

* train / gptmed-tokenizer: ``train_tokenizer(qa.txt, vocab 8000, bpe)``: read and render Q&A, train, write.
* train / sentencepiece (bare): ``SentencePieceTrainer.train(input=qa.txt, ...)`` with the same options.
* train / HF tokenizers: ``BpeTrainer(vocab_size=8000)`` with a byte-level pre-tokenizer, ``train([qa.txt])``.
* tokenize / gptmed-tokenizer: ``tokenize_dataset(qa.txt, tok.model, out, max_length=512)``: read, render,
  encode, split, pack, mask, write train/val .npy + metadata.json. Timed end to end.
* encode / sentencepiece (bare): ``sp.encode(lines, num_threads=N)`` on the file's lines (only the call).
* encode / HF tokenizers: ``tok.encode_batch(lines)`` with the HF-trained BPE (only the call).

MB/s is the plain file's size divided by the wall time. CPU s (user + sys of all threads) is also
reported: on a machine shared with other work it is the steadier figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "datasets" / "medquad" / "train.qa.txt.gz"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1024 * 1024)


def _spm_options(vocab_size: int) -> dict[str, Any]:
    from gptmed.tokenizer.training import _trainer_args

    return _trainer_args(vocab_size, "bpe", 0.9995, 1 << 16)


def case(name: str, text: Path, work: Path, vocab_size: int, threads: int) -> dict[str, Any]:
    """Run one contender once in this process; return its timing.

    Each contender imports only its own libraries, before the clock starts (imports are not timed).
    """
    extra: dict[str, Any] = {}
    if name == "train-gptmed":
        from gptmed.tokenizer import train_tokenizer

        start, cpu0 = time.perf_counter(), _cpu_s()
        result = train_tokenizer(text, work / "gptmed", vocab_size=vocab_size)
        extra["vocab_size"] = result.vocab_size
    elif name == "train-spm":
        import io

        import sentencepiece as spm

        options = _spm_options(vocab_size)
        start, cpu0 = time.perf_counter(), _cpu_s()
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(text), model_writer=buf, **options)
        (work / "bare.model").write_bytes(buf.getvalue())
    elif name == "train-hf":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        start, cpu0 = time.perf_counter(), _cpu_s()
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train([str(text)], trainer)
        tok.save(str(work / "hf.json"))
    elif name == "tokenize-gptmed":
        from gptmed.tokenizer import tokenize_dataset

        start, cpu0 = time.perf_counter(), _cpu_s()
        manifest = tokenize_dataset(
            text, work / "gptmed.model", work / "ds", max_length=512, num_threads=threads
        )
        extra["sequences"] = manifest.train_sequences + manifest.val_sequences
        extra["tokens"] = manifest.extra["train_tokens"] + manifest.extra["val_tokens"]
    elif name == "encode-spm":
        import sentencepiece as spm

        lines = [line for line in text.read_text(encoding="utf-8").split("\n") if line]
        sp = spm.SentencePieceProcessor(model_file=str(work / "gptmed.model"))
        start, cpu0 = time.perf_counter(), _cpu_s()
        ids = sp.encode(lines, num_threads=threads)
        extra["tokens"] = sum(map(len, ids))
    elif name == "encode-hf":
        from tokenizers import Tokenizer

        lines = [line for line in text.read_text(encoding="utf-8").split("\n") if line]
        tok = Tokenizer.from_file(str(work / "hf.json"))
        start, cpu0 = time.perf_counter(), _cpu_s()
        enc = tok.encode_batch(lines, add_special_tokens=False)
        extra["tokens"] = sum(len(e.ids) for e in enc)
    else:
        raise SystemExit(f"unknown case {name}")
    seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    return {"case": name, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _peak_rss_mb(), **extra}


CASES = ["train-gptmed", "train-spm", "train-hf", "tokenize-gptmed", "encode-spm", "encode-hf"]
LABELS = {
    "train-gptmed": ("train", "gptmed-tokenizer `train_tokenizer` (read Q&A + train + write)"),
    "train-spm": ("train", "sentencepiece, bare `SentencePieceTrainer.train(input=file)`, same options"),
    "train-hf": ("train", "HF tokenizers `BpeTrainer` (byte-level BPE)"),
    "tokenize-gptmed": (
        "tokenize",
        "gptmed-tokenizer `tokenize_dataset` (read, encode, split, pack, mask, write)",
    ),
    "encode-spm": ("encode", "sentencepiece, bare `encode(lines, num_threads)`"),
    "encode-hf": ("encode", "HF tokenizers `encode_batch(lines)`"),
}


def _run_child(name: str, text: Path, work: Path, vocab_size: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", name, "--text", str(text), "--work", str(work)]
    cmd += ["--vocab-size", str(vocab_size), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _table(results: dict[str, list[dict[str, Any]]], size_mb: float) -> str:
    med = {k: statistics.median(float(r["seconds"]) for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(float(r["cpu_seconds"]) for r in v) for k, v in results.items()}
    rss = {k: max(float(r["peak_rss_mb"]) for r in v) for k, v in results.items()}
    rows = [
        "| step | contender | median wall s | all runs s | MB/s | wall vs anchor | median CPU s | CPU vs anchor | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    anchors = {"train": "train-spm", "tokenize": "encode-spm", "encode": "encode-spm"}
    for name in CASES:
        if name not in results:
            continue
        step, label = LABELS[name]
        anchor = anchors[step]
        ratio = med[name] / med[anchor] if anchor in med else float("nan")
        cpu_ratio = cpu[name] / cpu[anchor] if anchor in cpu else float("nan")
        runs = " / ".join(f"{float(r['seconds']):.2f}" for r in results[name])
        rows.append(
            f"| {step} | {label} | {med[name]:.2f} | {runs} | {size_mb / med[name]:.2f} | {ratio:.2f}x "
            f"| {cpu[name]:.2f} | {cpu_ratio:.2f}x | {rss[name]:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw results here.")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--text", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, args.text, args.work, args.vocab_size, args.threads)))
        return
    if not args.data.exists():
        print(f"skipped: {args.data} not found")
        return
    work = Path(tempfile.mkdtemp(prefix="gptmed-bench-tok-"))
    try:
        text = work / "qa.txt"
        with gzip.open(args.data, "rb") as src, open(text, "wb") as dst:
            shutil.copyfileobj(src, dst)
        size_mb = text.stat().st_size / 1e6
        load_before = os.getloadavg()
        results: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.repeats):
            for name in CASES:  # interleaved, so that a burst of load hits every contender alike
                r = _run_child(name, text, work, args.vocab_size, args.threads)
                results.setdefault(name, []).append(r)
                print(
                    f"rep {rep + 1} {name:16s} {float(r['seconds']):6.2f}s wall {float(r['cpu_seconds']):6.2f}s CPU "
                    f"{float(r['peak_rss_mb']):6.0f} MB",
                    file=sys.stderr,
                )
        load_after = os.getloadavg()
        import numpy
        import sentencepiece
        import tokenizers

        header = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs ({args.threads} used), "
            f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "versions": f"sentencepiece {sentencepiece.__version__}, tokenizers {tokenizers.__version__}, numpy {numpy.__version__}",
            "data": f"MedQuAD train.qa.txt ({size_mb:.1f} MB, 14,737 pairs), vocab {args.vocab_size}, max_length 512",
            "load_average": f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1-min)",
            "command": "python bench/tokenizer.py " + " ".join(sys.argv[1:]),
        }
        table = _table(results, size_mb)
        for key, value in header.items():
            print(f"- {key}: {value}")
        print()
        print(table)
        if args.json:
            args.json.write_text(json.dumps({"header": header, "results": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
