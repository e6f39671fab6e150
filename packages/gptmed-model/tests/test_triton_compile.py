"""The Triton kernels compile to real GPU code (PTX + cubin for sm_90, the H100) - no GPU needed.

The interpreter checks the numerics on CPU but not what only the compiler enforces (constexpr
globals, layouts, shared-memory budget). This compiles the bf16 kernels ahead of time with the
ptxas bundled in triton, in a subprocess (the test process runs triton in interpreter mode): the
key-padding kernels at head dims 64 and 128, and the segment kernels at 128 with the largest
autotune candidate of each (``*_CANDIDATES[1]``, the most shared memory; every candidate compiled
within 227 KiB when this was written: 16-66 KiB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import inspect, sys, time, torch, triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from gptmed.model.kernels import flash_bwd as bwd, flash_decode as dec, flash_fwd as fwd

    SHARED_LIMIT = 227 * 1024  # bytes of shared memory a block may use on sm_90

    def compile_one(fn, ptrs, constexprs, cfg, arch):
        sig = {}
        for p in inspect.signature(fn.fn).parameters:
            if p in constexprs: sig[p] = "constexpr"
            elif p in ptrs: sig[p] = ptrs[p]
            elif p in ("qk_scale", "sm_scale"): sig[p] = "fp32"
            else: sig[p] = "i32"
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                           target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
        assert k.asm.get("cubin"), "no cubin"
        assert k.metadata.shared <= SHARED_LIMIT, (fn.fn.__name__, cfg, k.metadata.shared)
        return k.metadata.shared

    dt, dev = "bf16", torch.device("cuda")
    io = {n: "*" + dt for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    io.update(KM="*i8", SEG_LO="*i32", SEG_HI="*i32", LSE="*fp32", DELTA="*fp32", ACC_OUT="*fp32",
              M_OUT="*fp32", L_OUT="*fp32")
    tiles = lambda c: dict(BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"])
    jobs = []
    for D in (64, 128):
        f = fwd.fwd_tiles(D, dev, torch.bfloat16)
        b_kv, b_q = bwd.bwd_tiles(D, dev, torch.bfloat16)
        # the padded-batch kernels (key mask) and their segment variants (the autotune candidates)
        base = dict(HEAD_DIM=D, CAUSAL=True, HAS_KM=True, HAS_SEG=False, PREC="tf32", ACC=tl.float32)
        seg = dict(base, HAS_KM=False, HAS_SEG=True)
        jobs += [(fwd._fwd_kernel, dict(base, **tiles(f)), f), (bwd._bwd_dkdv_kernel, dict(base, **tiles(b_kv)), b_kv),
                 (bwd._bwd_dq_kernel, dict(base, **tiles(b_q)), b_q),
                 (bwd._bwd_delta_kernel, dict(BLOCK_M=64, HEAD_DIM=D, ACC=tl.float32), {"num_warps": 4, "num_stages": 2}),
                 (dec._decode_kernel, dict(BLOCK_M=16, BLOCK_N=64, HEAD_DIM=D, CAUSAL=True, HAS_KM=True, PREC="tf32",
                                           ACC=tl.float32), {"num_warps": 4, "num_stages": 2})]
        if D == 128:  # the segment code paths, with the largest candidate tiles (the most shared memory)
            for fn, cands in ((fwd._fwd_kernel, fwd.SEG_FWD_CANDIDATES), (bwd._bwd_dkdv_kernel, bwd.SEG_DKDV_CANDIDATES),
                              (bwd._bwd_dq_kernel, bwd.SEG_DQ_CANDIDATES)):
                jobs.append((fn, dict(seg, **tiles(cands[1])), cands[1]))
    for fn, cx, cfg in jobs:
        t0 = time.time()
        shared = compile_one(fn, io, cx, cfg, 90)
        print(cx.get("HEAD_DIM"), fn.fn.__name__, "seg" if cx.get("HAS_SEG") else "", tiles(cfg) if "BLOCK_N" in cfg else "",
              shared, f"{time.time() - t0:.1f}s", flush=True)
    print("OK")
    """
)


def test_kernels_compile_for_sm90_ahead_of_time() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        proc.stdout[-2000:] + proc.stderr[-4000:]
    )
