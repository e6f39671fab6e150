from __future__ import annotations

import os
import sys

import pytest
import torch

# The Triton kernel runs on CPU tensors only under the interpreter, and triton reads TRITON_INTERPRET
# when our kernels are defined: set it before anything imports gptmed.model.kernels (or triton).
# On a CUDA machine the real kernels run instead (the `gpu` tests).
if not torch.cuda.is_available():
    assert "gptmed.model.kernels.triton_attention" not in sys.modules
    os.environ.setdefault("TRITON_INTERPRET", "1")

CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# One test body, device parametrized: (cpu, float32) always, (cuda, bfloat16) behind the gpu marker.
DEVICES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param(
        "cuda",
        torch.bfloat16,
        id="cuda-bf16",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
    ),
]


# The Triton kernel's parity tests: float64 under the interpreter (CPU CI), fp16/bf16/fp32 on CUDA.
KERNEL_DEVICES = [
    pytest.param(
        "cpu",
        torch.float64,
        id="interp-fp64",
        marks=pytest.mark.skipif(not INTERPRETING, reason="needs TRITON_INTERPRET=1"),
    ),
    *(
        pytest.param(
            "cuda",
            dtype,
            id=f"cuda-{name}",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")],
        )
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
    ),
]


def check_close(
    out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str, low: float = 1e-2
) -> None:
    """float64 (interpreter): atol = rtol = 1e-9. Else a relative error ||x - ref|| / ||ref|| below
    1e-4 for fp32 and ``low`` (1e-2) for fp16/bf16, against a float32 reference."""
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref.to(out.dtype), atol=1e-9, rtol=1e-9, msg=what)
        return
    rel = ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()
    limit = 1e-4 if dtype == torch.float32 else low
    assert rel < limit, f"{what}: relative error {rel:.2e} >= {limit:.0e}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    )
