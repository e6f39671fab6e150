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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    )
