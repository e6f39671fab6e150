"""The CPU benchmarks still run: bench/ scripts are not imported by any package, and some reach into
private runtime API (the prefill A/B, the session options), so a refactor could break them without
breaking a test. Each runs at its smallest size, without the anchors that need extra packages
(transformers): these are smoke runs, their timings mean nothing. bench/attention.py without CUDA
runs its kernels under the Triton interpreter on one tiny shape, the run its docstring promises."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run

BENCH = REPO / "bench"


@pytest.fixture(scope="module")
def generate_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """bench/generate.py at its smallest: (its JSON report, its workdir with the tiny bundle)."""
    tmp = tmp_path_factory.mktemp("generate")
    out = tmp / "generate.json"
    smallest = "--size tiny --batches 2 --prompt-len 8 --new-tokens 4 --repeats 1 --threads 1 --skip hf cold"
    args = [*smallest.split(), "--workdir", str(tmp / "work"), "--json", str(out)]
    run(["python", str(BENCH / "generate.py"), *args], tmp, timeout=300)
    return json.loads(out.read_text()), tmp / "work"


def test_generate_bench_runs_every_gptmed_row(generate_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = generate_run
    rows = {r["engine"]: r for r in report["rows"]}
    assert set(rows) == {"onnxruntime fp32 (gptmed)", "onnxruntime int8 (gptmed)", "torch KV cache (gptmed)"}
    for row in rows.values():
        assert row["batch"] == 2 and row["tok_s"] > 0 and math.isfinite(row["ms_per_token"]), row
    prefill = {k: v for k, v in report["extra"].items() if k.startswith("prefill_ms_")}
    assert prefill and all(len(v) == 2 and min(v) > 0 for v in prefill.values()), prefill
    assert report["extra"]["bundle_mb"]["model.int8.onnx"] > 0


def test_decode_ops_bench_times_every_kernel_of_the_tiny_bundle(
    generate_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    bundle = generate_run[1] / "bundle-tiny"
    smallest = "--batch 2 --prompt-len 8 --new-tokens 4 --threads 1"
    stdout = run(
        ["python", str(BENCH / "decode_ops.py"), "--bundle", str(bundle), *smallest.split()], tmp_path
    ).stdout
    anchors = re.findall(r"^(fp32|int8), batch 2: whole decode step \(anchor\) (\d+) µs", stdout, re.M)
    assert [v for v, _ in anchors] == ["fp32", "int8"] and all(int(us) > 0 for _, us in anchors), stdout
    fp32, int8 = stdout.split("\nint8, batch 2")
    for kernel in ("GroupQueryAttention", "LayerNormalization", "BiasGelu"):
        assert f"| {kernel} |" in fp32 and f"| {kernel} |" in int8, stdout
    assert "| MatMul |" in fp32, stdout
    assert "| MatMulIntegerToFloat |" in int8 and "| QuantizeLinear |" in int8, stdout


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


def test_train_bench_gpu_mode_runs_on_the_cpu_at_toy_size(tmp_path: Path) -> None:
    """bench/train.py --device cuda --smoke: the GPU mode's code (data preparation, gptmed-train timed
    from its metrics.jsonl, the bare step of train_step.py, the HF loop where transformers is installed,
    the table and the goal ratios) on the CPU, tiny preset, the embedded sample."""
    out = tmp_path / "train.json"
    args = [
        "--device",
        "cuda",
        "--smoke",
        "--seq-lens",
        "64",
        "--cache",
        str(tmp_path / "cache"),
        "--json",
        str(out),
    ]
    stdout = run(["python", str(BENCH / "train.py"), *args], tmp_path, timeout=300).stdout
    report = json.loads(out.read_text())
    runs = {row["run"]: row for row in report["rows"]}
    hf = importlib.util.find_spec("transformers") is not None
    assert set(runs) == {"eager", "bare"} | ({"hf"} if hf else set()), report["rows"]
    for row in runs.values():
        assert row["status"] == "ok" and row["seq_len"] == 64, row
        assert len(row["step_s"]) == 20 and row["useful_tokens_per_s"] > 0 and row["mfu"] > 0, row
        assert row["peak_memory_mb"] > 0, row
    eager = runs["eager"]
    assert eager["layout"] == "rows" and eager["precision"] == "fp32", eager  # the CPU's defaults
    assert 0 < eager["useful_tokens_per_s"] < eager["slots_per_s"], eager  # the sample's rows have padding
    anchors = {(r["ours"], r["anchor"]) for r in report["ratios"]}
    assert anchors == {("eager", "bare")} | ({("eager", "hf")} if hf else set()), report["ratios"]
    assert "| 64 | gptmed-train, default flags (eager) |" in stdout, stdout
    if not hf:
        assert "HF runs skipped: transformers is not installed" in stdout, stdout


def test_attention_bench_smoke_run_on_the_cpu(tmp_path: Path) -> None:
    """No CUDA here: the script runs its smallest shape under the Triton interpreter, and our
    kernel's output and dq must match the float32 reference as closely as SDPA's do."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA: the gpu nox session runs the full benchmark")
    out = tmp_path / "attention.json"
    run(["python", str(BENCH / "attention.py"), "--json", str(out)], tmp_path, timeout=300)
    report = json.loads(out.read_text())
    assert "Triton interpreter" in report["machine"], report["machine"]
    assert report["rows"] and report["decode"], report
    for row in report["rows"]:
        assert row["triton_rel_err_out"] < 1e-5 and row["triton_rel_err_dq"] < 1e-5, row
        assert row["triton_fwd_tflops"] > 0 and row["sdpa_fwd_tflops"] > 0, row
    for step in report["decode"]:
        assert step["triton_rel_err"] < 1e-5 and step["triton_us"] > 0, step


def test_serve_bench_drives_both_servers_and_measures_the_stall(
    generate_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """bench/serve.py on the tiny bundle: the batched and the one-at-a-time servers answer every
    request (tokens counted from the usage chunks, no 429 or 5xx with the roomy queue), the overload
    row refuses the excess with 429 and nothing else, and the stall section times both chunk sizes."""
    pytest.importorskip("openai", reason="bench/serve.py drives the server with the openai client")
    pytest.importorskip("uvicorn", reason="bench/serve.py needs gptmed-infer[serve]")
    out = tmp_path / "serve.json"
    smallest = "--size tiny --clients 2 --requests 4 --max-tokens 6 --max-batch 2 --variants fp32"
    args = [*smallest.split(), "--long-prompt", "40", "--skip", "workers", "spin"]
    args += ["--workdir", str(generate_run[1]), "--json", str(out)]
    stdout = run(["python", str(BENCH / "serve.py"), *args], tmp_path, timeout=300).stdout
    report = json.loads(out.read_text())["fp32"]
    tick = 1 / os.sysconf("SC_CLK_TCK")
    for key in ("single", "batched"):
        (row,) = report[key]
        assert row["clients"] == 2 and row["refused"] == 0 and row["failed"] == 0, row
        assert len(row["latency"]) == 4 and 0 < row["tokens"] <= 4 * 6, row  # every answer, usage counted
        # two /proc reads (process, main thread), each rounded down to a clock tick
        assert 0 <= row["loop_cpu"] <= row["server_cpu"] + 2 * tick, row
    (over,) = report["overload"]  # 32 clients, --max-batch 2 --max-queue 8: 429s, retried, never 5xx
    assert over["refused"] > 0 and over["failed"] == 0 and len(over["latency"]) == 64, over
    assert over["loop_cpu"] > 0 and over["server_cpu"] + 2 * tick > over["loop_cpu"], over
    assert over["client_cpu"] > 0, over
    stall = json.loads(out.read_text())["stall"]  # --prefill-chunk 64 and the model's whole context
    manifest = json.loads((generate_run[1] / "bundle-tiny" / "gptmed.json").read_text())
    context = manifest["model_config"]["max_seq_len"]
    assert set(stall) == {"64", str(context)} and all(v["max_gap_s"] > 0 for v in stall.values()), stall
    assert "| fp32 --max-batch 2 | 2 |" in stdout, stdout
