"""CPU training-step benchmark: gptmed GPTTransformer vs Hugging Face GPT2LMHeadModel (sdpa).

Same width / depth / heads / d_ff / vocab / context, same batch, fp32, same AdamW (foreach=True for both;
torch 2.13 fused CPU AdamW profiled at ~1 s per step here), same threads,
in the same run, interleaved (ours, HF, ours, HF, ...) so that load from other processes hits both.
Reports tokens/s per model, the ratio, and MFU against a fp32 matmul peak measured in this run
(torch.mm of two large square matrices).

The anchor is GPT-2 as Hugging Face configures it (``activation_function="gelu_new"``, the tanh
approximation written as Python ops). Our model's default activation is exact GELU (erf), whose
torch CPU kernels are ~3x cheaper than tanh-GELU's; so that the gain can be split, a second HF row
runs the same HF model with ``activation_function="gelu"`` (exact GELU, like ours); drop it with
``--no-hf-exact-gelu``.

    python bench/train_step.py --model-size small --batch-size 8 --seq-len 512 --threads 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from datetime import datetime, timezone

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(
    n: int = 2048, reps: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """FLOP/s of torch.mm (n x n) @ (n x n) in `dtype`, best of `reps`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def build_ours(cfg, dropout: float, device: str = "cpu", amp: bool = False, compile: bool = False):  # type: ignore[no-untyped-def]
    from gptmed.model import GPTTransformer

    model = GPTTransformer(cfg.replace(dropout=dropout)).to(device).train()
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=3e-4, foreach=True)
    if compile:
        model.compile()  # in place: state-dict keys stay clean

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = model(x, targets=y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def build_hf(cfg, dropout: float, activation: str = "gelu_new"):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        activation_function=activation,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    hf_cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_cfg).train()
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    other = [
        p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=3e-4,
        foreach=True,
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        # HF shifts labels itself: give it the full row; ours gets x = row[:-1], y = row[1:]
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return model, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-size", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (after 1 warm-up)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--no-hf", action="store_true", help="time only our model")
    ap.add_argument("--no-hf-exact-gelu", action="store_true", help="skip the HF row with exact GELU")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    ap.add_argument("--compile", action="store_true", help="torch.compile our model (model.compile())")
    ap.add_argument(
        "--attention",
        default="auto",
        choices=["auto", "fused", "sdpa", "math"],
        help="attention backend for our model (auto: gptmed.model.attention decides)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.attention != "auto":
        from gptmed.model import set_backend

        set_backend(args.attention)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from gptmed.model import get_config
    from gptmed.model.sizes import size_report

    cfg = get_config(args.model_size, max_seq_len=max(512, args.seq_len))  # the context follows --seq-len
    B, T, dev = args.batch_size, args.seq_len, args.device
    flops_per_step = size_report(cfg, seq_len=T, batch_size=B).train_flops_per_token * B * T
    peak_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak_n = 8192 if dev == "cuda" else 2048
    peak = matmul_peak(peak_n, device=dev, dtype=peak_dtype)
    rows = torch.randint(4, cfg.vocab_size, (B, T + 1), device=dev)
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    t0 = time.perf_counter()
    runners = {"gptmed": build_ours(cfg, args.dropout, dev, args.bf16, args.compile)[1]}
    if not args.no_hf:
        if dev != "cpu" or args.bf16 or args.compile:
            ap.error("the HF comparison runs on CPU in fp32 eager only; add --no-hf")
        runners["hf-gpt2-sdpa"] = build_hf(cfg, args.dropout)[1]
        if not args.no_hf_exact_gelu:
            runners["hf-gpt2-sdpa-gelu"] = build_hf(cfg, args.dropout, activation="gelu")[1]
    times: dict[str, list[float]] = {name: [] for name in runners}
    for step in runners.values():  # warm-up (and compilation)
        step(x, y)
        step(x, y)
    warmup_s = time.perf_counter() - t0
    for _ in range(args.steps):
        for name, step in runners.items():
            t0 = time.perf_counter()
            step(x, y)  # float(loss) synchronises
            times[name].append(time.perf_counter() - t0)
    peak_after = matmul_peak(peak_n, device=dev, dtype=peak_dtype)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            torch.cuda.get_device_name()
            if dev == "cuda"
            else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        )
        + f", torch {torch.__version__}",
        "device": dev,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "compile": args.compile,
        "warmup_s": round(warmup_s, 1),
        "threads": args.threads,
        "model_size": args.model_size,
        "batch": B,
        "seq_len": T,
        "dropout": args.dropout,
        "load_avg": os.getloadavg()[0],
        "matmul_peak_gflops": round(max(peak, peak_after) / 1e9, 1),
        # the process's peak: CUDA memory torch allocated, or resident memory on the CPU (MiB)
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated() / 2**20
            if dev == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            1,
        ),
        "attention_backend": __import__("gptmed.model.attention", fromlist=["x"]).backend_reason(),
        "models": {},
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        result["models"][name] = {
            "step_s_all": [round(t, 3) for t in ts],
            "step_s_median": round(med, 3),
            "step_s_min": round(min(ts), 3),
            "tokens_per_s": round(B * T / med, 1),
            "mfu": round(flops_per_step / med / max(peak, peak_after), 3),
        }
    if "hf-gpt2-sdpa" in times:
        result["speedup"] = round(
            statistics.median(times["hf-gpt2-sdpa"]) / statistics.median(times["gptmed"]), 3
        )
        result["speedup_best_step"] = round(min(times["hf-gpt2-sdpa"]) / min(times["gptmed"]), 3)
    if "hf-gpt2-sdpa-gelu" in times:
        result["speedup_vs_hf_exact_gelu"] = round(
            statistics.median(times["hf-gpt2-sdpa-gelu"]) / statistics.median(times["gptmed"]), 3
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['date']}  {result['machine']}  threads={args.threads}  load={result['load_avg']:.2f}")
    print(
        f"model={args.model_size} batch={B}x{T} {result['precision']} compile={args.compile} "
        f"dropout={args.dropout} attention={result['attention_backend']}  "
        f"matmul peak {result['matmul_peak_gflops']} GFLOP/s"
    )
    for name, r in result["models"].items():
        print(
            f"  {name:18s} step {r['step_s_median']:.3f}s (min {r['step_s_min']:.3f})  "
            f"{r['tokens_per_s']:,.0f} tok/s  MFU {r['mfu']:.1%}"
        )
    if "speedup" in result:
        print(
            f"  speedup gptmed / HF: {result['speedup']:.2f}x by median step, "
            f"{result['speedup_best_step']:.2f}x by best step"
        )
    if "speedup_vs_hf_exact_gelu" in result:
        print(f"  speedup gptmed / HF with exact GELU: {result['speedup_vs_hf_exact_gelu']:.2f}x")


if __name__ == "__main__":
    main()
