"""Trainer benchmark: gptmed-train against a plain Hugging Face GPT2LMHeadModel loop, same tokens, same run.

CPU mode (the default, ``--device cpu``): both train a model of the `small` preset's size (width,
depth, heads, d_ff, vocab 8000, context 512) on the same MedQuAD rows in the same order, loss on all
non-pad tokens, same AdamW (betas 0.9/0.95, weight decay 0.01 on matrices), same warmup + cosine
schedule, gradient clipping 1.0, dropout 0.1, fp32, and the same objective: every Q&A pair packed
into a row is trained from position 0 and attends only to itself (gptmed-train's segments; the HF
loop passes the same position_ids and a 4-D mask). HF keeps GPT-2's activation (`gelu_new`); ours is
the preset's (exact GELU). Ours drops each row's trailing padding from its forward and backward and
attends per pair (gptmed-model's packed-row path); the HF loop computes the padded (B, T) batch with a
4-D mask. Tokens/s counts the same row slots (B x (T - 1), padding included) on both sides.
Ours is the real trainer (`gptmed.training.train_model`: data loading from the .npy memmaps, loss
masking, clipping, metrics.jsonl, checkpoint at the end); tokens/s is timed between its step
callbacks after the first step. Each side runs in its own process (peak RSS = that process's
ru_maxrss); runs alternate ours/HF/ours/HF... so machine load hits both alike.

GPU mode (``--device cuda``): per context length (``--seq-lens``, 512 and 2048), all of MedQuAD
tokenized (bpe 8000, split 0.95), medium preset, batch 32, bf16, four runs, each in its own process:
gptmed-train with default flags (eager), a plain HF GPT2LMHeadModel loop of the same shape (bf16
autocast, SDPA) over the same token stream cut into padding-free blocks, the bare compiled model step
of bench/train_step.py (its --json), and gptmed-train --compile. Per run: useful tokens/s (padding
excluded), row slots/s, MFU, peak GPU memory, in steady state (the first --skip-steps steps are not
timed); then gptmed-train / HF (goal >= 2.5x) and gptmed-train / bare step (goal >= 0.85x).
``--smoke`` runs that code on the CPU at toy size in about a minute (its timings mean nothing).

    python bench/train.py                          # CPU: MedQuAD split, small preset, 2 rounds
    python bench/train.py --steps 10 --batch-size 4 --rounds 1 --out docs/bench/train.md
    python bench/train.py --device cuda --json gpu.json   # GPU: T 512 and 2048 (~6.5 min, estimated)
    python bench/train.py --device cuda --smoke    # the GPU mode's code on the CPU, tiny sizes

Skips (exit 0) when MedQuAD's train.qa.txt.gz is absent (looked for in ../shared/datasets/medquad/,
then in shared/datasets/medquad/ inside the checkout, which is what travels to a GPU machine).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
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
MEDQUAD_NAME = Path("datasets") / "medquad" / "train.qa.txt.gz"
MEDQUAD = ROOT / ".." / "shared" / MEDQUAD_NAME
CACHE = os.environ.get("GPTMED_BENCH_CACHE") or str(Path(tempfile.gettempdir()) / "gptmed-bench-train")


# ------------------------------------------------------------------------------------------- data
def find_medquad(explicit: str | None) -> Path | None:
    """MedQuAD's Q&A text: ``--medquad``, else ../shared beside the checkout, else shared/ inside it."""
    candidates = [Path(explicit)] if explicit else [MEDQUAD, ROOT / "shared" / MEDQUAD_NAME]
    return next((p for p in candidates if p.is_file()), None)


def prepare(cache: Path, source: Path, max_pairs: int | None, seq_len: int, vocab: int = 8000) -> Path:
    """Q&A text ``source`` (.gz or plain) -> its first ``max_pairs`` pairs (None: all) -> tokenizer
    (bpe, ``vocab``) -> tokenized dir at max_length ``seq_len``, split 0.95. Cached in ``cache``; one
    tokenizer serves every ``seq_len``."""
    key = f"{source.name.split('.')[0]}-{max_pairs or 'all'}-v{vocab}"
    data = cache / f"tok-{key}-{seq_len}"
    if (data / "metadata.json").is_file():
        return data
    from gptmed.core import read_qa_text, write_qa_text
    from gptmed.tokenizer import tokenize_dataset, train_tokenizer

    cache.mkdir(parents=True, exist_ok=True)
    subset = cache / f"{key}.txt"
    if not subset.is_file():
        raw = source
        if source.suffix == ".gz":
            raw = cache / source.name[: -len(".gz")]
            with gzip.open(source, "rb") as src, open(raw, "wb") as dst:
                shutil.copyfileobj(src, dst)
        write_qa_text(subset, itertools.islice(read_qa_text(raw), max_pairs), overwrite=True)
    tokenizer = cache / f"tok-{key}.model"
    if not tokenizer.is_file():
        train_tokenizer(subset, cache / f"tok-{key}", vocab_size=vocab)
    tokenize_dataset(subset, tokenizer, data, max_length=seq_len, train_split=0.95, seed=0)
    return data


# ------------------------------------------------------------------------------------------ children
def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from gptmed.training import TrainCallbacks, TrainingConfig, train_model

    torch.set_num_threads(args.threads)
    stamps: list[float] = []

    class Clock(TrainCallbacks):
        def on_step(self, step: int, total: int, loss: float, lr: float, tok_s: float, eta: float) -> None:
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as ck:
        cfg = TrainingConfig(
            model_size="small",
            batch_size=args.batch_size,
            num_epochs=args.epochs_for_schedule,
            max_steps=args.steps,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            loss_on="all",
            precision=args.precision,
            train_data_path=str(Path(args.data) / "train.npy"),
            val_data_path=str(Path(args.data) / "val.npy"),
            checkpoint_dir=ck,
            device="cpu",
            seed=0,
            max_eval_batches=1,
            progress=False,
        )
        result = train_model(cfg, Clock())
        rows = [json.loads(x) for x in (Path(ck) / "metrics.jsonl").read_text().splitlines()]
    seq = int(json.loads((Path(args.data) / "metadata.json").read_text())["max_length"]) - 1
    tokens = args.batch_size * seq * (len(stamps) - 1)
    return {
        "losses": [r["loss"] for r in rows if r["kind"] == "train"],
        "tokens_per_s": _rate(stamps, args.batch_size * seq),
        "tokens_per_s_overall": tokens / (stamps[-1] - stamps[0]),
        "steps": result.steps,
    }


def child_hf(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from gptmed.core import get_small_config
    from gptmed.training.batches import epoch_order, pair_layout
    from gptmed.training.schedule import WarmupCosine
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    meta = json.loads((Path(args.data) / "metadata.json").read_text())
    rows = np.load(Path(args.data) / "train.npy", mmap_mode="r")
    cfg = get_small_config(vocab_size=meta["vocab_size"], max_seq_len=meta["max_length"])
    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    hf_cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_cfg).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    other = [
        p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    steps_per_epoch = len(rows) // args.batch_size
    sched = WarmupCosine(
        opt,
        lr=args.lr,
        warmup_steps=args.warmup,
        total_steps=steps_per_epoch * args.epochs_for_schedule,
        min_lr_ratio=0.1,
    )
    order = epoch_order(0, 0, len(rows))  # the trainer's order for epoch 0, seed 0
    losses: list[float] = []
    stamps: list[float] = []
    for step in range(args.steps):
        idx = np.sort(order[step * args.batch_size : (step + 1) * args.batch_size])
        block = np.asarray(rows[idx]).astype(np.int64)
        batch = torch.from_numpy(block)
        labels = batch.clone()
        labels[labels == 0] = -100  # pad is never a target (as --loss-on all)
        sched.set_step(step)
        # the objective gptmed-train trains: each packed pair from position 0, attending only to
        # itself (HF GPT-2 takes position_ids and a 4-D boolean mask)
        x = batch[:, :-1]
        segments_np, positions_np = pair_layout(block[:, :-1], bos_id=2)
        segments, positions = torch.from_numpy(segments_np), torch.from_numpy(positions_np)
        kw: dict[str, Any] = {"position_ids": positions}
        if bool((segments != segments[:, :1]).any()):
            causal = torch.ones(x.size(1), x.size(1), dtype=torch.bool).tril()
            kw["attention_mask"] = (causal & (segments[:, :, None] == segments[:, None, :])).unsqueeze(1)
        if args.precision == "bf16":  # autocast like ours: fp32 master weights, fp32 loss
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=x, **kw).logits
        else:
            logits = model(input_ids=x, **kw).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        stamps.append(time.perf_counter())
    seq = rows.shape[1] - 1
    return {
        "losses": losses,
        "tokens_per_s": _rate(stamps, args.batch_size * seq),
        "tokens_per_s_overall": args.batch_size * seq * (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "steps": args.steps,
    }


def _rate(stamps: list[float], tokens_per_step: int) -> float:
    """Tokens per second of the median step (steps 2..n): robust to bursts of load from other jobs."""
    durations = [b - a for a, b in itertools.pairwise(stamps)]
    return tokens_per_step / statistics.median(durations)


# ------------------------------------------------------------------------------------------ driver
def run_child(kind: str, precision: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(data), "--precision", precision]
    for name in ("steps", "batch_size", "threads", "lr", "warmup", "epochs_for_schedule"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


LABELS = {"ours": "gptmed-train (train_model)", "hf": "HF GPT2LMHeadModel plain loop"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the CPU or the GPU mode")
    ap.add_argument("--child", choices=["ours", "hf", "trainer", "hf-blocks"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help="rows per step (CPU mode 4; GPU mode 32, smoke 4)")
    ap.add_argument("--threads", type=int, help="torch CPU threads per run (CPU mode 2; GPU mode 2, smoke 1)")
    ap.add_argument("--max-pairs", type=int, help="MedQuAD pairs used (CPU mode 3000; GPU mode all)")
    ap.add_argument("--medquad", help="MedQuAD's train.qa.txt.gz (default: found as said above)")
    ap.add_argument(
        "--cache", default=CACHE, help="tokenizers and tokenized data, reused ($GPTMED_BENCH_CACHE)"
    )
    ap.add_argument("--out", help="also write the markdown here (CPU mode: e.g. docs/bench/train.md)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    cpu = ap.add_argument_group("CPU mode (--device cpu, the default)")
    cpu.add_argument("--steps", type=int, default=10)
    cpu.add_argument("--seq-len", type=int, default=512)
    cpu.add_argument("--lr", type=float, default=1e-3)
    cpu.add_argument("--warmup", type=int, default=4, help="learning-rate warmup steps")
    cpu.add_argument("--epochs-for-schedule", type=int, default=1)
    cpu.add_argument("--precisions", default="fp32,bf16", help="precisions to compare, each for both sides")
    cpu.add_argument("--rounds", type=int, default=1)
    gpu = ap.add_argument_group(
        "GPU mode (--device cuda)",
        "gptmed-train with default flags (eager), then with --compile, against a plain HF GPT2LMHeadModel "
        "loop of the same shape (bf16 autocast, padding-free blocks of the same tokens) and the bare "
        "compiled model step of bench/train_step.py; all of MedQuAD (bpe 8000, split 0.95), medium preset, "
        "batch 32, bf16, at T 512 and 2048, each run in its own process. Per run: useful tokens/s (padding "
        "excluded), row slots/s, MFU (model FLOPs per useful token, attention at context T included, over "
        "a bf16 torch.mm peak measured in the same runs), peak GPU memory; steady state only: the first "
        "--skip-steps steps are not timed, then 20 are (gptmed-train: its metrics.jsonl row 20 steps "
        "later, whose rates span those 20 steps). Goals, in useful tokens/s at every T: gptmed-train >= "
        "2.5x the HF loop and >= 0.85x the bare step. Method: bench/train_gpu.py's docstring. Exit "
        "status 1 when a run failed or timed out. About 6.5 minutes on an H100 / H200, an estimate (docs/bench/train.md).",
    )
    gpu.add_argument("--seq-lens", help="context lengths, comma-separated (default 512,2048; smoke 64,128)")
    gpu.add_argument(
        "--runs", help="of eager,hf,bare,compile, comma-separated (default all; smoke: no compile)"
    )
    gpu.add_argument(
        "--model-size", choices=["tiny", "small", "medium"], help="preset (default medium; smoke tiny)"
    )
    gpu.add_argument(
        "--skip-steps", type=int, help="untimed steps at the start of a run (default 10; smoke 2)"
    )
    gpu.add_argument(
        "--time-limit",
        type=float,
        help="seconds for all the runs: one that would not fit is left out and named (compile runs go last)",
    )
    gpu.add_argument("--json", help="also write every run's figures and the ratios here")
    gpu.add_argument(
        "--smoke",
        action="store_true",
        help="the GPU mode's code on the CPU at toy size (the embedded sample Q&A file, tiny preset, batch "
        "4, fp32, T 64 and 128, no --compile run): proves the script works; its timings mean nothing",
    )
    gpu.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.child in ("trainer", "hf-blocks"):
        import train_gpu  # bench/ is sys.path[0]

        run = train_gpu.child_trainer if args.child == "trainer" else train_gpu.child_hf_blocks
        print(json.dumps(run(args)))
    elif args.child:
        res = child_ours(args) if args.child == "ours" else child_hf(args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
    elif args.device == "cuda":
        sys.exit(main_gpu(args))
    else:
        args.batch_size, args.threads = args.batch_size or 4, args.threads or 2
        args.max_pairs = args.max_pairs or 3000
        main_cpu(args)


def main_gpu(args: argparse.Namespace) -> int:
    """The GPU mode: settings, data, the runs (bench/train_gpu.py), the table."""
    import train_gpu

    smoke = bool(args.smoke)
    source = find_medquad(args.medquad)
    if smoke:
        from gptmed.data import sample_path

        source = sample_path()
    elif source is None:
        print(f"skipped: MedQuAD not found (../shared/{MEDQUAD_NAME}, shared/{MEDQUAD_NAME}, --medquad)")
        return 0
    elif not _cuda_available():
        print("no CUDA device here (--device cuda --smoke runs this mode's code on the CPU)", file=sys.stderr)
        return 2
    kinds = set((args.runs or ("eager,hf,bare" if smoke else ",".join(train_gpu.RUNS))).split(","))
    if kinds - set(train_gpu.RUNS):
        print(
            f"--runs: unknown {sorted(kinds - set(train_gpu.RUNS))}, known: {list(train_gpu.RUNS)}",
            file=sys.stderr,
        )
        return 2
    if "hf" in kinds and not train_gpu.has_transformers():
        print("HF runs skipped: transformers is not installed (pip install transformers)", flush=True)
        kinds.discard("hf")
    if args.skip_steps is not None and args.skip_steps < 1:
        print("--skip-steps must be >= 1 (the first step's time holds the start-up)", file=sys.stderr)
        return 2
    opts = argparse.Namespace(
        smoke=smoke,
        device="cpu" if smoke else "cuda",
        precision="fp32" if smoke else "bf16",  # bf16 on a CPU without bf16 units is emulated: slow
        lens=[int(x) for x in (args.seq_lens or ("64,128" if smoke else "512,2048")).split(",")],
        kinds=kinds,
        model_size=args.model_size or ("tiny" if smoke else "medium"),
        batch_size=args.batch_size or (4 if smoke else 32),
        skip_steps=args.skip_steps or (2 if smoke else 10),
        threads=args.threads or (1 if smoke else 2),
        max_pairs=args.max_pairs,
        vocab=1000 if smoke else 8000,
        deadline=time.monotonic() + args.time_limit if args.time_limit else None,
        argv=sys.argv[1:],
    )
    t0 = time.monotonic()
    datasets = {t: prepare(Path(args.cache), source, opts.max_pairs, t, opts.vocab) for t in opts.lens}
    print(
        f"data ready in {time.monotonic() - t0:.0f} s: {', '.join(map(str, datasets.values()))}", flush=True
    )
    results = train_gpu.run_all(opts, datasets)
    report = train_gpu.report(opts, source, results)
    print(report["markdown"], flush=True)
    for path, text in ((args.json, json.dumps(report, indent=2) + "\n"), (args.out, report["markdown"])):
        if path:
            Path(path).write_text(text, encoding="utf-8")
    return (
        1
        if any(r["status"] != "ok" and not r["status"].startswith("not run") for r in results.values())
        else 0
    )


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main_cpu(args: argparse.Namespace) -> None:
    source = find_medquad(args.medquad)
    if source is None:
        print(f"skipped: {MEDQUAD} not found")
        return
    t0 = time.time()
    data = prepare(Path(args.cache), source, args.max_pairs, args.seq_len)
    print(f"data ready in {time.time() - t0:.0f}s: {data}", flush=True)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    loads = []
    for r in range(args.rounds):
        for prec in precisions:
            for kind in ("ours", "hf"):  # alternate, so machine load hits both alike
                res = run_child(kind, prec, args, data)
                loads.append(os.getloadavg()[0])
                results.setdefault((kind, prec), []).append(res)
                print(
                    f"round {r + 1} {kind} {prec}: {res['tokens_per_s']:.0f} tok/s, peak RSS {res['peak_rss_mb']:.0f} MB, "
                    f"loss {res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}",
                    flush=True,
                )

    def med(key: tuple[str, str], field: str) -> float:
        return statistics.median(x[field] for x in results[key])

    lines = [
        "# Trainer benchmark (bench/train.py)",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f} during the runs), torch {_torch_version()}, {args.threads} threads",
        f"- command: `python bench/train.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--max-pairs {args.max_pairs} --rounds {args.rounds} --precisions {args.precisions}`",
        f"- data: first {args.max_pairs} MedQuAD pairs, SentencePiece bpe 8000, max_length {args.seq_len}; "
        f"model: `small` preset shape ({_params()}); loss on all non-pad tokens; same rows in the same order; "
        f"AdamW, warmup {args.warmup} + cosine, peak LR {args.lr:g}, clip 1.0, dropout 0.1; tokens/s from the "
        "median step time of steps 2..n (each side in its own process; sides alternate)",
        "",
        f"| run | precision | tokens/s | peak RSS MB | loss step 1 | loss step {args.steps} |",
        "|---|---|---|---|---|---|",
    ]
    for prec in precisions:
        for kind in ("ours", "hf"):
            key = (kind, prec)
            losses = results[key][0]["losses"]
            lines.append(
                f"| {LABELS[kind]} | {prec} | {med(key, 'tokens_per_s'):,.0f} | {med(key, 'peak_rss_mb'):,.0f} | "
                f"{losses[0]:.3f} | {losses[-1]:.3f} |"
            )
    lines.append("")
    for prec in precisions:
        ours, hf = results[("ours", prec)], results[("hf", prec)]
        ratio = med(("ours", prec), "tokens_per_s") / med(("hf", prec), "tokens_per_s")
        pairs = list(zip(ours[0]["losses"], hf[0]["losses"], strict=False))
        at = ", ".join(
            f"{i + 1}: {a:.3f} vs {b:.3f}"
            for i, (a, b) in enumerate(pairs)
            if i % 3 == 0 or i == len(pairs) - 1
        )
        lines.append(
            f"- {prec}: ours / HF tokens/s = **{ratio:.2f}x**; loss at equal steps (ours vs HF) {at}."
        )
    if "bf16" in precisions and "fp32" in precisions:
        cross = med(("ours", "bf16"), "tokens_per_s") / med(("hf", "fp32"), "tokens_per_s")
        lines.append(f"- gptmed-train `--precision bf16` vs the HF fp32 loop: **{cross:.2f}x**.")
    lines.append("")
    for (kind, prec), runs in results.items():
        per_round = ", ".join(f"{x['tokens_per_s']:.0f}" for x in runs)
        lines.append(f"- per-round tokens/s, {LABELS[kind]} {prec}: {per_round}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _params() -> str:
    from gptmed.core import get_small_config

    return f"{get_small_config().num_parameters() / 1e6:.1f}M parameters"


if __name__ == "__main__":
    main()
