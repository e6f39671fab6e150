"""Attention kernel benchmark: our Triton FlashAttention vs torch SDPA (flash backend).

Causal, bf16, head dim 64 and 128, sequence 512..8192, batch x heads filling the chip
(batch * seq = 16k tokens, heads = 2048 / head_dim). Forward and forward+backward TFLOP/s (causal
FLOPs: 4 B H T^2 D / 2 forward, 2.5x that backward), the ratio ours / SDPA, and the relative error
||x - ref|| / ||ref|| of ours and of SDPA against a float32 reference (output and dq). Also the
decode path (1 query vs a long KV cache) against SDPA.

    python bench/attention.py                 # CUDA: full table (~1-2 minutes on an H100)
    python bench/attention.py --json out.json
    python bench/attention.py --quick         # fewer shapes
    python bench/attention.py --sweep         # CUDA: time candidate tile shapes of each kernel

Without CUDA it runs a tiny smoke version under the Triton interpreter (TRITON_INTERPRET=1) so the
script itself is exercised in CI; those timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton / our kernels are imported

import torch.nn.functional as F
from gptmed.model.kernels import triton_attention as ta
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds per call."""
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=reps * 5, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(max(1, reps // 10)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if CUDA:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def run_case(B: int, H: int, T: int, D: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, T, D, device=device, dtype=dtype)
    fwd_flops = 4 * B * H * T * T * D / 2
    row: dict = {"B": B, "H": H, "T": T, "D": D}
    for name, fn in (
        ("triton", lambda: ta.flash_attention(q, k, v, causal=True)),
        ("sdpa", lambda: sdpa_flash(q, k, v)),
    ):
        with torch.no_grad():
            t_f = bench(fn, reps)

        def fb(fn=fn) -> None:  # type: ignore[no-untyped-def]
            out = fn()
            out.backward(do)

        t_fb = bench(fb, reps)
        row[f"{name}_fwd_tflops"] = fwd_flops / t_f / 1e12
        row[f"{name}_fwdbwd_tflops"] = 3.5 * fwd_flops / t_fb / 1e12
        q.grad = k.grad = v.grad = None
    row["fwd_ratio"] = row["triton_fwd_tflops"] / row["sdpa_fwd_tflops"]
    row["fwdbwd_ratio"] = row["triton_fwdbwd_tflops"] / row["sdpa_fwdbwd_tflops"]
    # accuracy on one batch*head slice against a float32 reference
    qs, ks, vs, dos = (t.detach()[:1, :2].clone().requires_grad_() for t in (q, k, v, do))
    ref_in = [t.detach().float().requires_grad_() for t in (qs, ks, vs)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=True)
    (rdq,) = torch.autograd.grad(ref, ref_in[0], dos.float())
    for name, fn in (
        ("triton", lambda: ta.flash_attention(qs, ks, vs, causal=True)),
        ("sdpa", lambda: sdpa_flash(qs, ks, vs)),
    ):
        out = fn()
        (dq,) = torch.autograd.grad(out, qs, dos)
        row[f"{name}_rel_err_out"] = rel_err(out, ref)
        row[f"{name}_rel_err_dq"] = rel_err(dq, rdq)
    return row


def run_decode(B: int, H: int, S: int, D: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(B, H, 1, D, device=device, dtype=dtype)
    k, v = (torch.randn(B, H, S, D, device=device, dtype=dtype) for _ in range(2))
    with torch.no_grad():
        t_ours = bench(lambda: ta.decode_attention(q, k, v, causal=True), reps)
        t_sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v), reps)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        err = rel_err(ta.decode_attention(q, k, v, causal=True), ref)
    gbytes = 2 * B * H * S * D * q.element_size() / 1e9  # K and V read once
    return {
        "B": B,
        "H": H,
        "S": S,
        "D": D,
        "triton_us": t_ours * 1e6,
        "sdpa_us": t_sdpa * 1e6,
        "triton_GBps": gbytes / t_ours,
        "sdpa_GBps": gbytes / t_sdpa,
        "speedup": t_sdpa / t_ours,
        "triton_rel_err": err,
    }


# tile candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) for --sweep
SWEEP_FWD = [
    (128, 64, 4, 3),
    (128, 64, 8, 2),
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 3),
    (128, 32, 4, 3),
]
SWEEP_DKDV = [
    (64, 64, 4, 2),
    (32, 64, 4, 3),
    (32, 128, 4, 3),
    (32, 128, 8, 3),
    (64, 64, 8, 2),
    (32, 64, 4, 2),
]
SWEEP_DQ = [(64, 64, 4, 2), (128, 32, 4, 3), (128, 32, 8, 3), (64, 32, 4, 3), (64, 64, 8, 2), (128, 64, 4, 2)]


def sweep_tiles(B: int, H: int, T: int, D: int) -> dict:
    """Median ms of the forward, and of the backward with one kernel's tiles varied (the other kept at
    the shipped choice), per candidate. Patches the tile tables; restores them afterwards."""
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    o, lse = ta._fwd_impl(q, k, v, None, True)
    shipped_fwd, shipped_bwd = ta._blocks, ta._bwd_blocks
    kv0, q0 = shipped_bwd(D, q.device, q.dtype)

    def cfg(t: tuple[int, int, int, int]) -> dict[str, int]:
        return {"BLOCK_M": t[0], "BLOCK_N": t[1], "num_warps": t[2], "num_stages": t[3]}

    out: dict = {"shape": [B, H, T, D], "fwd": {}, "bwd_dkdv": {}, "bwd_dq": {}}
    try:
        for t in SWEEP_FWD:
            ta._blocks = lambda *a, t=t: cfg(t)  # type: ignore[assignment]
            out["fwd"][str(t)] = bench(lambda: ta._fwd_impl(q, k, v, None, True), 5) * 1e3
        ta._blocks = shipped_fwd
        for key, cands in (("bwd_dkdv", SWEEP_DKDV), ("bwd_dq", SWEEP_DQ)):
            for t in cands:
                pair = (cfg(t), q0) if key == "bwd_dkdv" else (kv0, cfg(t))
                ta._bwd_blocks = lambda *a, pair=pair: pair  # type: ignore[assignment]
                out[key][str(t)] = bench(lambda: ta._bwd_impl(do, q, k, v, o, lse, None, True), 5) * 1e3
    finally:
        ta._blocks, ta._bwd_blocks = shipped_fwd, shipped_bwd
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--sweep", action="store_true", help="CUDA only: time candidate tiles per kernel")
    args = ap.parse_args()
    if args.sweep:
        if not CUDA:
            ap.error("--sweep needs a CUDA device (tile timings under the interpreter mean nothing)")
        sweeps = [
            sweep_tiles(*shape) for shape in ((16, 32, 1024, 64), (16, 16, 1024, 128), (32, 8, 512, 64))
        ]
        for sw in sweeps:
            print(sw["shape"], flush=True)
            for key in ("fwd", "bwd_dkdv", "bwd_dq"):
                best = sorted(sw[key].items(), key=lambda kv: kv[1])
                print(f"  {key:9s} " + "  ".join(f"{t} {ms:.3f} ms" for t, ms in best))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": torch.cuda.get_device_name(), "sweeps": sweeps}, f, indent=2)
        return None

    if CUDA:
        device, dtype, reps = "cuda", torch.bfloat16, 20
        seqs = [512, 1024, 2048, 4096, 8192] if not args.quick else [1024, 4096]
        dims = [64, 128]
        tokens = 16384
        machine = torch.cuda.get_device_name()
    else:
        device, dtype, reps = "cpu", torch.float32, 10
        seqs, dims, tokens = [48], [32], 48
        machine = "CPU (Triton interpreter smoke run: timings are meaningless)"
    rows = []
    for D in dims:
        H = max(1, 2048 // D) if CUDA else 2
        for T in seqs:
            B = max(1, tokens // T)
            rows.append(run_case(B, H, T, D, dtype, device, reps))
            r = rows[-1]
            print(
                f"D={D:3d} T={T:5d} B={B:3d} H={H:2d}  fwd {r['triton_fwd_tflops']:7.1f} vs "
                f"{r['sdpa_fwd_tflops']:7.1f} TFLOP/s ({r['fwd_ratio']:.2f}x)   fwd+bwd "
                f"{r['triton_fwdbwd_tflops']:7.1f} vs {r['sdpa_fwdbwd_tflops']:7.1f} ({r['fwdbwd_ratio']:.2f}x)   "
                f"rel err out {r['triton_rel_err_out']:.1e} (sdpa {r['sdpa_rel_err_out']:.1e}) "
                f"dq {r['triton_rel_err_dq']:.1e} (sdpa {r['sdpa_rel_err_dq']:.1e})",
                flush=True,
            )
    decode = []
    for S in [1024, 4096, 8192] if CUDA else [300]:
        decode.append(
            run_decode(8 if CUDA else 1, 16 if CUDA else 2, S, 64 if CUDA else 32, dtype, device, reps)
        )
        d = decode[-1]
        print(
            f"decode S={S:5d}: ours {d['triton_us']:8.1f} us ({d['triton_GBps']:.0f} GB/s), "
            f"sdpa {d['sdpa_us']:8.1f} us ({d['sdpa_GBps']:.0f} GB/s), {d['speedup']:.2f}x, "
            f"rel err {d['triton_rel_err']:.1e}",
            flush=True,
        )
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "causal": True,
        "rows": rows,
        "decode": decode,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return None


if __name__ == "__main__":
    sys.exit(main())
