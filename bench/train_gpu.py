"""The GPU mode of bench/train.py (``python bench/train.py --device cuda``); this file is not a script.

Per context length T: four runs, each in its own process, so that peak memory is that run's alone
and a crash or a hang costs one row:

``eager``    gptmed-train as a user runs it (``train_model``), default flags but the bench's (preset,
             batch, bf16, device): on CUDA padding-free flat rows, prefetched batches, late reads.
             Timed by its own metrics.jsonl: with S skipped steps, the row of step S + 20 holds the
             rates of steps S+1..S+20 (the trainer's 20-step window): useful tokens/s (real tokens)
             and row slots/s (padding included). Step S + 21 ends the run from the step callback, so
             no evaluation or checkpoint is waited for.
``compile``  the same with ``--compile``.
``hf``       a plain Hugging Face loop: GPT2LMHeadModel of the preset's width / depth / heads / d_ff /
             vocab, context T, SDPA, bf16 autocast, torch's default AdamW, clipping 1.0, over the
             train split's tokens in stored order with the padding dropped, cut into (B, T) blocks
             (every slot a real token). No host sync per step; CUDA events time the 20 steps after
             the S skipped ones.
``bare``     bench/train_step.py --compile --bf16 (the compiled model step alone: random tokens, no
             data, no trainer), its --json; 2 untimed steps, then 20 timed (median step).

MFU = useful tokens/s x model FLOPs per token (gptmed.model.size_report: matmuls 6 N per token,
attention at context T, the same figure for every run at that T) / the bf16 torch.mm peak that the
runs measure (train_step.py's ``matmul_peak``, the highest of the run's measurements).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TRAIN = Path(__file__).resolve().parent / "train.py"
TRAIN_STEP = Path(__file__).resolve().parent / "train_step.py"
TIMED_STEPS = 20  # gptmed.training.progress.WINDOW: the steps one metrics.jsonl row's rates span
RUNS = {  # kind: (label, seconds it takes on an H100 / H200 at T 512, start-up and compilation included)
    "eager": ("gptmed-train, default flags (eager)", 25),
    "hf": ("HF GPT2LMHeadModel plain loop", 25),
    "bare": ("bare compiled model step (train_step.py)", 60),
    "compile": ("gptmed-train --compile", 100),
}
GOALS = {"hf": 2.5, "bare": 0.85}  # gptmed-train / that run, in useful tokens/s, at every length


# ------------------------------------------------------------------------------------------ children
class _Enough(Exception):
    """Raised from the step callback once the timed steps are in."""


def device_facts(device: str, precision: str) -> dict[str, Any]:
    """The matmul peak in ``precision`` (train_step.py's measurement), the machine, the torch version."""
    import torch
    from train_step import matmul_peak  # bench/ is sys.path[0]: bench/train.py runs as a script

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(8192 if device == "cuda" else 1024, device=device, dtype=dtype)
    name = (
        torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    return {"peak_flops": peak, "machine": name, "torch": str(torch.__version__)}


def peak_memory_mb(device: str) -> float:
    """This process's peak: CUDA memory allocated by torch, or resident memory on the CPU."""
    import torch

    if device == "cuda":
        return float(torch.cuda.max_memory_allocated()) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_token(model_size: str, vocab: int, seq_len: int) -> int:
    """Model FLOPs per token of a training step at context ``seq_len`` (attention included)."""
    from gptmed.model import get_config, size_report

    cfg = get_config(model_size, vocab_size=vocab, max_seq_len=seq_len)
    return size_report(cfg, seq_len=seq_len).train_flops_per_token


def child_trainer(args: argparse.Namespace) -> dict[str, Any]:
    """The ``eager`` / ``compile`` run (see the module doc)."""
    import torch
    from gptmed.training import RunInfo, TrainCallbacks, TrainingConfig, train_model
    from gptmed.training.progress import WINDOW

    if WINDOW != TIMED_STEPS:
        raise SystemExit(f"gptmed-train's rates now span {WINDOW} steps: set TIMED_STEPS in {__file__}")
    torch.set_num_threads(args.threads)
    last = args.skip_steps + TIMED_STEPS
    stamps: dict[int, float] = {}
    facts: dict[str, Any] = {}

    class Probe(TrainCallbacks):
        def on_start(self, info: RunInfo) -> None:
            if info.steps_per_epoch <= last:  # an epoch's end would evaluate and save in the window
                raise SystemExit(
                    f"{args.data}: {info.steps_per_epoch} steps per epoch at batch {args.batch_size}; "
                    f"the bench needs {last + 1} in one epoch: lower --skip-steps or --batch-size"
                )
            facts.update(layout=info.layout, precision=info.precision, params=info.num_parameters)

        def on_step(self, step: int, total: int, loss: float, lr: float, tok_s: float, eta: float) -> None:
            stamps[step] = time.perf_counter()
            if step > last:
                raise _Enough

    with tempfile.TemporaryDirectory() as ck:
        cfg = TrainingConfig(
            model_size=args.model_size,
            batch_size=args.batch_size,
            precision=args.precision,
            compile=args.compile,
            device=args.device,
            max_steps=last + 1,
            train_data_path=str(Path(args.data) / "train.npy"),
            val_data_path=str(Path(args.data) / "val.npy"),
            checkpoint_dir=ck,
            progress=False,
        )
        try:
            train_model(cfg, Probe())
            raise SystemExit(f"the run ended before step {last + 1}")
        except _Enough:
            pass
        rows = [json.loads(x) for x in (Path(ck) / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["kind"] == "train" and r["step"] == last)
    meta = json.loads((Path(args.data) / "metadata.json").read_text())
    return {
        "useful_tokens_per_s": row["useful_tokens_per_s"],
        "slots_per_s": row["tokens_per_s"],
        "step_s": [stamps[s] - stamps[s - 1] for s in range(last - TIMED_STEPS + 1, last + 1)],
        "flops_per_token": flops_per_token(args.model_size, meta["vocab_size"], meta["max_length"]),
        "peak_memory_mb": peak_memory_mb(args.device),
        **facts,
        **device_facts(args.device, args.precision),
    }


def child_hf_blocks(args: argparse.Namespace) -> dict[str, Any]:
    """The ``hf`` run (see the module doc)."""
    import numpy as np
    import torch
    from gptmed.core import get_config
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    meta = json.loads((Path(args.data) / "metadata.json").read_text())
    B, T, dev, ids = args.batch_size, int(meta["max_length"]), args.device, meta["special_ids"]
    tokens = np.load(Path(args.data) / "train.npy")
    stream = tokens[tokens != ids["pad"]]  # (n,): every real token, rows in stored order
    n_steps = args.skip_steps + TIMED_STEPS
    blocks = torch.from_numpy(np.resize(stream, n_steps * B * T).astype(np.int64)).view(n_steps, B, T)
    blocks = blocks.to(dev)  # on the device before the loop: no input copy is timed
    cfg = get_config(args.model_size, vocab_size=meta["vocab_size"], max_seq_len=T)
    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=T,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        activation_function="gelu_new",
        resid_pdrop=0.0,  # gptmed-train's default dropout is 0 too
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    hf_cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_cfg).to(dev).train()
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    keep = [p for n, p in named if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": keep, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95))
    marks: list[Any] = []  # after each step: a recorded CUDA event, or the host clock on the CPU
    for step in range(n_steps):
        x = blocks[step]
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            marks.append(torch.cuda.Event(enable_timing=True))  # type: ignore[no-untyped-call]
            marks[-1].record()
        else:
            marks.append(time.perf_counter())
    timed = marks[args.skip_steps - 1 :]
    if dev == "cuda":
        torch.cuda.synchronize()
        step_s = [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(timed)]
    else:
        step_s = [b - a for a, b in itertools.pairwise(timed)]
    rate = B * T * len(step_s) / sum(step_s)
    return {
        "useful_tokens_per_s": rate,
        "slots_per_s": rate,
        "step_s": step_s,
        "flops_per_token": flops_per_token(args.model_size, meta["vocab_size"], T),
        "peak_memory_mb": peak_memory_mb(dev),
        "final_loss": float(loss),
        **device_facts(dev, args.precision),
    }


# -------------------------------------------------------------------------------------------- driver
def run_one(kind: str, seq_len: int, data: Path, opts: argparse.Namespace, limit: float) -> dict[str, Any]:
    """One run in its own process: ``{"status": "ok", ...figures}`` or ``{"status": why not}``."""
    common = ["--device", opts.device, "--model-size", opts.model_size, "--batch-size", str(opts.batch_size)]
    common += ["--threads", str(opts.threads)]
    if kind == "bare":
        cmd = [sys.executable, str(TRAIN_STEP), *common, "--seq-len", str(seq_len), "--no-hf", "--json"]
        cmd += ["--steps", str(TIMED_STEPS), "--dropout", "0.0"]
        cmd += (["--bf16"] if opts.precision == "bf16" else []) + (
            ["--compile"] if opts.device == "cuda" else []
        )
    else:
        child = "hf-blocks" if kind == "hf" else "trainer"
        cmd = [sys.executable, str(TRAIN), "--child", child, "--data", str(data), *common]
        cmd += ["--precision", opts.precision, "--skip-steps", str(opts.skip_steps)]
        cmd += ["--compile"] if kind == "compile" else []
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {limit:.0f} s", "seconds": limit}
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        lines = [x for x in proc.stderr.splitlines() if x.strip()] or ["(no output)"]
        return {"status": f"failed (exit {proc.returncode}): {lines[-1][:300]}", "seconds": seconds}
    if kind != "bare":
        return {"status": "ok", "seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    ours = report["models"]["gptmed"]
    return {
        "status": "ok",
        "seconds": seconds,
        "useful_tokens_per_s": ours["tokens_per_s"],
        "slots_per_s": ours["tokens_per_s"],
        "step_s": ours["step_s_all"],
        "peak_memory_mb": report.get("peak_memory_mb"),
        "peak_flops": report["matmul_peak_gflops"] * 1e9,
        "mfu_own": ours["mfu"],
        "attention_backend": report.get("attention_backend"),
    }


def plan(opts: argparse.Namespace) -> list[tuple[int, str]]:
    """The runs in the order they go: every length's eager, HF and bare runs, then the --compile
    runs, so that a --time-limit that ends early still leaves the goals' anchors measured."""
    cheap = [(t, k) for t in opts.lens for k in ("eager", "hf", "bare") if k in opts.kinds]
    return cheap + [(t, "compile") for t in opts.lens if "compile" in opts.kinds]


def has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def run_all(opts: argparse.Namespace, datasets: dict[int, Path]) -> dict[tuple[int, str], dict[str, Any]]:
    """Every run of the plan that ends before ``opts.deadline`` (time.monotonic(); None: no limit)."""
    deadline = opts.deadline
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for seq_len, kind in plan(opts):
        need = 60.0 if opts.smoke else RUNS[kind][1] * (1.5 if seq_len > 1024 else 1.0)
        left = deadline - time.monotonic() if deadline is not None else 3 * need
        if left < need:
            res = {"status": f"not run: {left:.0f} s of --time-limit left, it needs ~{need:.0f} s"}
        else:
            res = run_one(kind, seq_len, datasets[seq_len], opts, min(left, 3 * need))
        results[(seq_len, kind)] = res
        done = f"{res['useful_tokens_per_s']:,.0f} useful tok/s" if res["status"] == "ok" else res["status"]
        print(f"T {seq_len}, {RUNS[kind][0]}: {done} ({res.get('seconds', 0):.0f} s)", flush=True)
    return results


def report(
    opts: argparse.Namespace, source: Path, results: dict[tuple[int, str], dict[str, Any]]
) -> dict[str, Any]:
    """The markdown (settings, table, goal ratios) and the figures for --json."""
    done = [r for r in results.values() if r["status"] == "ok"]
    peak = max((r["peak_flops"] for r in done if r.get("peak_flops")), default=0.0)
    peak_text = f"{peak / 1e12:,.1f} TFLOP/s" if peak >= 1e12 else f"{peak / 1e9:,.1f} GFLOP/s"
    facts = next((r for r in done if "machine" in r), {})
    memory = "peak GPU memory" if opts.device == "cuda" else "peak RSS"
    lines = [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: "
        f"{facts.get('machine', '?')}, torch {facts.get('torch', '?')}; {opts.precision} matmul peak "
        f"{peak_text} (torch.mm, measured in the same runs)",
        f"- command: `python bench/train.py {' '.join(opts.argv)}`",
        f"- data: {source.name}, {opts.max_pairs or 'all'} pairs, bpe {opts.vocab}, split 0.95; model "
        f"`{opts.model_size}`, batch {opts.batch_size}, {opts.precision}; steady state: {opts.skip_steps} "
        f"untimed steps, then {TIMED_STEPS} timed (the bare step: 2 untimed, median of {TIMED_STEPS})",
        "",
        f"| T | run | useful tok/s | row slots/s | padding | MFU | {memory} | step ms: median / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seq_len in opts.lens:
        flops = [
            r["flops_per_token"] for (t, _), r in results.items() if t == seq_len and "flops_per_token" in r
        ]
        for kind, (label, _) in RUNS.items():
            res = results.get((seq_len, kind))
            if res is not None:
                lines.append(_table_row(seq_len, label, res, flops[0] if flops else None, peak))
    ratios = []
    for (seq_len, ours), res in results.items():
        for anchor, goal in GOALS.items():
            other = results.get((seq_len, anchor))
            if ours in ("eager", "compile") and other and res["status"] == other["status"] == "ok":
                ratio = res["useful_tokens_per_s"] / other["useful_tokens_per_s"]
                ratios.append(
                    {"seq_len": seq_len, "ours": ours, "anchor": anchor, "ratio": ratio, "goal": goal}
                )
    lines.append("")
    for r in sorted(
        ratios, key=lambda r: (r["seq_len"], r["ours"] != "eager", list(GOALS).index(r["anchor"]))
    ):
        verdict = "met" if r["ratio"] >= r["goal"] else "not met"
        lines.append(
            f"- T {r['seq_len']}: {RUNS[r['ours']][0]} / {RUNS[r['anchor']][0]} in useful tokens/s = "
            f"**{r['ratio']:.2f}x** (goal >= {r['goal']}x: {verdict})"
        )
    for (seq_len, kind), res in results.items():
        if res["status"] == "ok" and max(res["step_s"]) > 3 * statistics.median(res["step_s"]):
            lines.append(
                f"- T {seq_len}, {RUNS[kind][0]}: a timed step took over 3x the median (recompile? stall?)"
            )
    rows = [{"seq_len": t, "run": k, **r} for (t, k), r in results.items()]
    return {"markdown": "\n".join(lines) + "\n", "rows": rows, "ratios": ratios, "peak_flops": peak}


def _table_row(seq_len: int, label: str, res: dict[str, Any], flops: int | None, peak: float) -> str:
    if res["status"] != "ok":
        return f"| {seq_len} | {label} | {res['status']} | | | | | |"
    useful, slots = res["useful_tokens_per_s"], res["slots_per_s"]
    res["mfu"] = useful * flops / peak if flops and peak else res.get("mfu_own", float("nan"))
    ms = [s * 1e3 for s in res["step_s"]]
    mem = f"{res['peak_memory_mb'] / 1024:,.2f} GiB" if res.get("peak_memory_mb") else "-"
    return (
        f"| {seq_len} | {label} | {useful:,.0f} | {slots:,.0f} | {1 - useful / slots:.0%} | {res['mfu']:.1%} "
        f"| {mem} | {statistics.median(ms):.1f} / {max(ms):.1f} |"
    )
