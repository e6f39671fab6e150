"""The Triton kernels compile to real GPU code (PTX + cubin for sm_90, the H100) - no GPU needed.

The interpreter checks the numerics on CPU but not what only the compiler enforces (constexpr
globals, layouts, shared-memory budget). This compiles the bf16 kernels ahead of time with the
ptxas bundled in triton, in a subprocess (the test process runs triton in interpreter mode).
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
    import inspect, torch, triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from gptmed.model.kernels import triton_attention as ta

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
        return k.metadata.shared

    dt, dev = "bf16", torch.device("cuda")
    for arch, D in ((90, 64), (90, 128)):
        if True:
            f = ta._blocks(D, dev, torch.bfloat16)
            b_kv, b_q = ta._bwd_blocks(D, dev, torch.bfloat16)
            base = dict(HEAD_DIM=D, CAUSAL=True, HAS_KM=True, PREC="tf32", ACC=tl.float32)
            io = {n: "*" + dt for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
            io.update(KM="*i8", LSE="*fp32", DELTA="*fp32", ACC_OUT="*fp32", M_OUT="*fp32", L_OUT="*fp32")
            tiles = lambda c: dict(BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"])
            delta = dict(BLOCK_M=64, HEAD_DIM=D, ACC=tl.float32)
            for fn, cx, cfg in ((ta._fwd_kernel, dict(base, **tiles(f)), f),
                                (ta._bwd_dkdv_kernel, dict(base, **tiles(b_kv)), b_kv),
                                (ta._bwd_dq_kernel, dict(base, **tiles(b_q)), b_q),
                                (ta._bwd_delta_kernel, delta, {"num_warps": 4, "num_stages": 2}),
                                (ta._decode_kernel, dict(base, BLOCK_M=16, BLOCK_N=64),
                                 {"num_warps": 4, "num_stages": 2})):
                shared = compile_one(fn, io, cx, cfg, arch)
                print(arch, D, fn.fn.__name__, shared)
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
