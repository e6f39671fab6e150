"""Where a run trains: the device, its precision and the autocast context."""

from __future__ import annotations

import contextlib

import torch
from gptmed.core import ConfigError
from gptmed.training.distributed import DistInfo
from gptmed.training.errors import TrainingError

__all__ = ["autocast", "autocast_dtype", "resolve_device", "resolve_precision"]


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> CUDA (this rank's GPU) when present, else CPU. ``cuda`` without CUDA is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(
                f"--device {name} asked for CUDA, but CUDA is not available "
                f"(torch {torch.__version__}, {'built without CUDA' if torch.version.cuda is None else 'no GPU visible'})",
                hint="use --device cpu (or --device auto)",
            )
        if name == "cuda":
            name = f"cuda:{info.local_rank}"
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(dev)
        return dev
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise TrainingError(
                "--device mps asked for Apple MPS, which is not available", hint="use --device cpu"
            )
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA GPU that has it, else fp32; refuse what the device cannot do."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            f"--precision fp16 needs a CUDA GPU (device is {device})", hint="use bf16 or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--precision bf16: this GPU does not support bfloat16", hint="use fp16 or fp32")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """bf16/fp16 autocast on ``device`` (matmuls in that dtype, softmax and loss in fp32), or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
