"""Attention kernel benchmark: our Triton FlashAttention vs torch SDPA (flash backend) and FlexAttention.

Causal table: bf16, head dim 64 and 128, sequence 512..8192, batch x heads filling the chip
(batch * seq = 16k tokens, heads = 2048 / head_dim). Forward and forward+backward TFLOP/s (causal
FLOPs: 4 B H T^2 D / 2 forward, 2.5x that backward), the ratio ours / SDPA, and the relative error
||x - ref|| / ||ref|| of ours and of SDPA against a float32 reference (output and dq). Also the
decode path (1 query vs a long KV cache) against SDPA.

Packed-pair table (issue 17): packed training rows at the medium preset's head shape (8 x 64), B32
T512, B8 T2048, B4 T4096, forward + backward ms of: today's path (SDPA + a dense (B, 1, T, T)
segment mask), FlexAttention with a document mask (compiled), SDPA causal and our causal kernel
(both ignoring the segments: the floor without packing), our kernel with segments on the (B, T)
rows, and on the trainer's flat row (1, N) with the padding dropped. Wall time (triton's do_bench)
and GPU time (the profiler's kernel time) side by side: where wall >> GPU a call is bound by host time.

    python bench/attention.py                 # CUDA: both tables (~2-3 minutes on an H100)
    python bench/attention.py --json out.json
    python bench/attention.py --quick         # fewer shapes in the causal table
    python bench/attention.py --packed        # the packed-pair table only
    python bench/attention.py --sweep         # CUDA: time candidate tile shapes of each kernel
    python bench/attention.py --smoke         # tiny shapes (CPU: under the Triton interpreter, seconds)

Without CUDA it runs the smoke version under the Triton interpreter (TRITON_INTERPRET=1) so the
script itself is exercised in CI; those timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime, timezone

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton / our kernels are imported

import torch.nn.functional as F
from gptmed.model.attention import sdpa_attention, segment_bounds
from gptmed.model.kernels import flash_bwd, flash_fwd
from gptmed.model.kernels import triton_attention as ta
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds per call (CPU: one call, no warm-up; the interpreter's timings mean nothing)."""
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=reps * 5, return_mode="median") / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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
    o, lse = flash_fwd.fwd_impl(q, k, v, None, None, True)
    shipped_fwd, shipped_bwd = flash_fwd.fwd_tiles, flash_bwd.bwd_tiles
    kv0, q0 = shipped_bwd(D, q.device, q.dtype)

    def cfg(t: tuple[int, int, int, int]) -> dict[str, int]:
        return {"BLOCK_M": t[0], "BLOCK_N": t[1], "num_warps": t[2], "num_stages": t[3]}

    out: dict = {"shape": [B, H, T, D], "fwd": {}, "bwd_dkdv": {}, "bwd_dq": {}}
    try:
        for t in SWEEP_FWD:
            flash_fwd.fwd_tiles = lambda *a, t=t: cfg(t)  # type: ignore[assignment]
            out["fwd"][str(t)] = bench(lambda: flash_fwd.fwd_impl(q, k, v, None, None, True), 5) * 1e3
        flash_fwd.fwd_tiles = shipped_fwd
        for key, cands in (("bwd_dkdv", SWEEP_DKDV), ("bwd_dq", SWEEP_DQ)):
            for t in cands:
                pair = (cfg(t), q0) if key == "bwd_dkdv" else (kv0, cfg(t))
                flash_bwd.bwd_tiles = lambda *a, pair=pair: pair  # type: ignore[assignment]
                out[key][str(t)] = (
                    bench(lambda: flash_bwd.bwd_impl(do, q, k, v, o, lse, None, None, True), 5) * 1e3
                )
    finally:
        flash_fwd.fwd_tiles, flash_bwd.bwd_tiles = shipped_fwd, shipped_bwd
    return out


# -- packed pairs (issue 17) ------------------------------------------------------------------------
PACKED_SHAPES = [
    (32, 8, 512),
    (8, 8, 2048),
    (4, 8, 4096),
]  # (B, H, T), head dim 64: the medium preset's heads
PAIR_MEDIAN, PAIR_SIGMA = 400, 0.6
"""Pair lengths in tokens (lognormal): packed greedily this gives 1.8 / 4.8 / 9.2 runs per row at
T 512 / 2048 / 4096, padding runs included (issue 17's MedQuAD rows: 1.6 / 5.0 / 9.5)."""


def packed_runs(B: int, T: int, median: float = PAIR_MEDIAN, seed: int = 0) -> list[list[int]]:
    """Run lengths of B packed rows of T tokens (negative: the row's padding run). Pairs (at least
    4 tokens) are packed in order while they fit; a pair longer than T fills whole rows first."""
    gen = torch.Generator().manual_seed(seed)
    rows: list[list[int]] = []
    cur: list[int] = []

    def close() -> None:
        nonlocal cur
        used = sum(cur)
        rows.append(cur + ([used - T] if used < T else []))
        cur = []

    while len(rows) < B:
        n = max(4, int(torch.empty(1).log_normal_(math.log(median), PAIR_SIGMA, generator=gen)))
        while n > T:
            if cur:
                close()
            rows.append([T])
            n -= T
        if sum(cur) + n > T:
            close()
        cur.append(n)
    return rows[:B]


def segment_ids(rows: list[list[int]], device: str) -> torch.Tensor:
    """(B, T) int32 segment ids: increasing per pair, -1 on padding."""
    ids = [[i if n > 0 else -1 for i, n in enumerate(row) for _ in range(abs(n))] for row in rows]
    return torch.tensor(ids, dtype=torch.int32, device=device)


def flat_ids(ids: torch.Tensor, bucket: int) -> torch.Tensor:
    """The trainer's layout: the pairs of all rows in one row (1, N), padding dropped, N rounded up to
    a multiple of ``bucket`` with padding. Ids increase along the row (row-major order)."""
    row_base = (ids.amax(dim=1, keepdim=True) + 1).cumsum(0) - (ids.amax(dim=1, keepdim=True) + 1)
    flat = (ids + row_base)[ids >= 0]
    pad = -flat.numel() % bucket
    return torch.cat([flat, flat.new_full((pad,), -1)])[None]


def device_ms(fn, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    """GPU time per call: the profiler's kernel time, summed (nan when the profiler cannot say)."""
    if not CUDA:
        return float("nan")
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        events = prof.key_averages()
        total_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    except Exception:  # profiler API differences between torch versions
        return float("nan")
    return total_us / reps / 1e3


def run_packed(
    B: int, H: int, T: int, D: int, dtype: torch.dtype, device: str, reps: int, median: float = PAIR_MEDIAN
) -> dict:
    """Forward + backward ms of each way to attend within the segments of B packed rows of T tokens."""
    rows = packed_runs(B, T, median)
    ids = segment_ids(rows, device)
    bounds = segment_bounds(ids, window=T)
    flat = flat_ids(ids, bucket=256 if CUDA else 16)
    fbounds = segment_bounds(flat, window=T)
    N = flat.size(1)
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=i < 3) for i in range(4))
    qf, kf, vf, dof = (
        torch.randn(1, H, N, D, device=device, dtype=dtype, requires_grad=i < 3) for i in range(4)
    )
    keep = bounds.keep_mask()
    methods = {
        "sdpa_mask": (lambda: sdpa_attention(q, k, v, causal=True, mask=keep), do),
        "sdpa_causal": (lambda: sdpa_flash(q, k, v), do),
        "ours_causal": (lambda: ta.flash_attention(q, k, v, causal=True), do),
        "ours_segments": (lambda: ta.flash_attention(q, k, v, segments=(bounds.lo, bounds.hi)), do),
        "ours_flat": (lambda: ta.flash_attention(qf, kf, vf, segments=(fbounds.lo, fbounds.hi)), dof),
    }
    if CUDA:  # FlexAttention's compiled kernels (inductor on a CPU would take minutes for a smoke run)
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        doc = ids.long()

        def document_causal(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
            return (doc[b, q_idx] == doc[b, kv_idx]) & (q_idx >= kv_idx) & (doc[b, q_idx] >= 0)

        block_mask = create_block_mask(document_causal, B, None, T, T, device=device)
        flex = torch.compile(flex_attention)
        methods["flex_document"] = (lambda: flex(q, k, v, block_mask=block_mask), do)
    attended = (ids >= 0).sum().item()
    row: dict = {"B": B, "H": H, "T": T, "D": D, "N_flat": N, "runs_per_row": sum(map(len, rows)) / B}
    row["padding"] = 1 - attended / (B * T)
    row["work_fraction"] = sum(n * n for r in rows for n in r if n > 0) / (B * T * T)  # sum(L^2) / (B T^2)
    for name, (fn, grad_out) in methods.items():

        def fb(fn=fn, grad_out=grad_out) -> None:  # type: ignore[no-untyped-def]
            fn().backward(grad_out)

        row[f"{name}_ms"] = bench(fb, reps) * 1e3
        row[f"{name}_gpu_ms"] = device_ms(fb)
        for t in (q, k, v, qf, kf, vf):
            t.grad = None
    # accuracy of the segment kernel against the dense-mask path on the attended rows (float32 reference)
    with torch.no_grad():
        ref = sdpa_attention(*(t.float() for t in (q, k, v)), causal=True, mask=keep)
        ours = ta.flash_attention(q, k, v, segments=(bounds.lo, bounds.hi))
        sel = (ids >= 0)[:, None, :, None].expand_as(ref)
        row["ours_segments_rel_err"] = rel_err(ours[sel], ref[sel])
    return row


def print_packed(rows: list[dict]) -> None:
    names = ["sdpa_mask", "flex_document", "sdpa_causal", "ours_causal", "ours_segments", "ours_flat"]
    print(
        "\npacked pairs, forward + backward ms, wall (GPU): today's path = sdpa + dense mask; flex = "
        "FlexAttention document mask; causal = segments ignored; flat = one row, padding dropped"
    )
    print(f"{'shape':22s} " + " ".join(f"{n:>20s}" for n in names))
    for r in rows:
        cells = []
        for n in names:
            ms, gpu = r.get(f"{n}_ms"), r.get(f"{n}_gpu_ms", float("nan"))
            text = "-" if ms is None else f"{ms:9.3f}" + ("" if math.isnan(gpu) else f" ({gpu:7.3f})")
            cells.append(text.rjust(20))
        shape = f"B{r['B']} H{r['H']} T{r['T']} ({r['runs_per_row']:.1f})"
        print(f"{shape:22s} " + " ".join(cells), flush=True)
        print(
            f"{'':22s} padding {r['padding']:.0%}, sum(L^2) = {r['work_fraction']:.0%} of B T^2, flat N = "
            f"{r['N_flat']}, ours vs dense mask rel err {r['ours_segments_rel_err']:.1e}"
        )
    for r in rows:  # the goals, as ratios of the same run
        if r["T"] == 512:
            ratio = r["ours_segments_ms"] / r["sdpa_causal_ms"]
            print(
                f"goal B{r['B']} T512: ours with segments <= sdpa causal: {ratio:.2f}x ({'met' if ratio <= 1 else 'NOT met'})"
            )
        if r["T"] == 4096 and "flex_document_ms" in r:
            ratio = r["ours_segments_ms"] / r["flex_document_ms"]
            print(
                f"goal B{r['B']} T4096: ours with segments <= 0.5x flex: {ratio:.2f}x ({'met' if ratio <= 0.5 else 'NOT met'})"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes in the causal table")
    ap.add_argument("--packed", action="store_true", help="only the packed-pair table")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (the default without CUDA)")
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

    smoke = args.smoke or not CUDA
    if not smoke:
        device, dtype, reps = "cuda", torch.bfloat16, 20
        seqs = [512, 1024, 2048, 4096, 8192] if not args.quick else [1024, 4096]
        dims = [64, 128]
        tokens = 16384
        machine = torch.cuda.get_device_name()
        packed_shapes, pair_median = PACKED_SHAPES, float(PAIR_MEDIAN)
    else:
        device = "cuda" if CUDA else "cpu"
        dtype, reps = (torch.bfloat16, 5) if CUDA else (torch.float32, 10)
        seqs, dims, tokens = [48], [32], 48
        machine = (
            torch.cuda.get_device_name()
            if CUDA
            else "CPU (Triton interpreter smoke run: timings are meaningless)"
        )
        packed_shapes, pair_median = [(2, 1, 40)], 10.0  # a few pairs per row
    rows, decode = [], []
    for D in dims if not args.packed else []:
        H = max(1, 2048 // D) if not smoke else 2
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
    for S in ([1024, 4096, 8192] if not smoke else [300]) if not args.packed else []:
        decode.append(
            run_decode(
                8 if not smoke else 1, 16 if not smoke else 2, S, 64 if not smoke else 32, dtype, device, reps
            )
        )
        d = decode[-1]
        print(
            f"decode S={S:5d}: ours {d['triton_us']:8.1f} us ({d['triton_GBps']:.0f} GB/s), "
            f"sdpa {d['sdpa_us']:8.1f} us ({d['sdpa_GBps']:.0f} GB/s), {d['speedup']:.2f}x, "
            f"rel err {d['triton_rel_err']:.1e}",
            flush=True,
        )
    packed = [
        run_packed(B, H, T, 64 if not smoke else 16, dtype, device, reps, pair_median)
        for B, H, T in packed_shapes
    ]
    print_packed(packed)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "causal": True,
        "rows": rows,
        "decode": decode,
        "packed": packed,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return None


if __name__ == "__main__":
    sys.exit(main())
