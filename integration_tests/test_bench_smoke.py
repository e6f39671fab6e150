"""The CPU benchmarks still run: bench/ scripts are not imported by any package, and some reach into
private runtime API (the prefill A/B, the session options), so a refactor could break them without
breaking a test. Each runs at its smallest size, without the anchors that need extra packages
(transformers): these are smoke runs, their timings mean nothing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from conftest import REPO, run

BENCH = REPO / "bench"


def test_generate_bench_runs_every_gptmed_row(tmp_path: Path) -> None:
    out = tmp_path / "generate.json"
    smallest = "--size tiny --batches 2 --prompt-len 8 --new-tokens 4 --repeats 1 --threads 1 --skip hf cold"
    args = [*smallest.split(), "--workdir", str(tmp_path / "work"), "--json", str(out)]
    run(["python", str(BENCH / "generate.py"), *args], tmp_path, timeout=300)
    report = json.loads(out.read_text())
    rows = {r["engine"]: r for r in report["rows"]}
    assert set(rows) == {"onnxruntime fp32 (gptmed)", "onnxruntime int8 (gptmed)", "torch KV cache (gptmed)"}
    for row in rows.values():
        assert row["batch"] == 2 and row["tok_s"] > 0 and math.isfinite(row["ms_per_token"]), row
    prefill = {k: v for k, v in report["extra"].items() if k.startswith("prefill_ms_")}
    assert prefill and all(len(v) == 2 and min(v) > 0 for v in prefill.values()), prefill
    assert report["extra"]["bundle_mb"]["model.int8.onnx"] > 0


def test_decode_attention_bench_agrees_with_groupqueryattention(tmp_path: Path) -> None:
    args = ["--batch", "2", "--capacity", "16", "--keys", "5", "16", "--threads", "1"]
    stdout = run(["python", str(BENCH / "decode_attention.py"), *args], tmp_path, timeout=120).stdout
    rows = re.findall(r"^\| 16 \| (\d+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| ([\d.e+-]+) \|$", stdout, re.M)
    assert [keys for keys, _ in rows] == ["5", "16"], stdout
    assert all(float(diff) < 1e-5 for _, diff in rows), stdout


def test_train_step_bench_runs_our_model(tmp_path: Path) -> None:
    args = [
        "--no-hf",
        "--model-size",
        "tiny",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--steps",
        "2",
        "--json",
    ]
    stdout = run(["python", str(BENCH / "train_step.py"), *args], tmp_path, timeout=120).stdout
    report = json.loads(stdout[stdout.index("{") :])
    ours = report["models"]["gptmed"]
    assert ours["tokens_per_s"] > 0 and len(ours["step_s_all"]) == 2, ours
