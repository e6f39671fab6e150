"""``--quantize int8``: onnxruntime dynamic quantization of the graph, gated on greedy agreement.

The MatMul/Gemm weights become int8 (per output channel); activations are quantized on the fly.
The int8 graph is kept only when its greedy next token equals fp32's on at least
``INT8_MIN_AGREEMENT`` of the teacher-forced positions of the parity prompts.

Weights are quantized to 7 bits (``reduce_range``): on x86 CPUs without VNNI, onnxruntime's
u8s8 kernels saturate intermediate sums on full-range weights, and a bundle's int8 graph may be
served on any CPU (measured on the test fixture, AVX2: greedy agreement 87.5% full-range, 97.2%
with ``reduce_range``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gptmed.inference.export.parity import PARITY_GREEDY_TOKENS, ParityError, greedy_tokens

__all__ = ["INT8_MIN_AGREEMENT", "quantize_int8"]

INT8_MIN_AGREEMENT = 0.90  # int8 greedy next token == fp32's on >= 90% of teacher-forced positions


@contextlib.contextmanager
def _root_logger_at(level: int) -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def _decode_ms(backend: Any, prompt: list[int], tokens: int = 32) -> float:
    """ms per decode step (batch 1, greedy) after one warm-up."""
    tokens = min(tokens, backend.config.max_seq_len - len(prompt))
    greedy_tokens(backend, prompt, 2)
    start = time.perf_counter()
    greedy_tokens(backend, prompt, tokens)
    return (time.perf_counter() - start) * 1000.0 / max(tokens, 1)


def _quantize(fp32_path: Path, int8_path: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime's quantizer logs "Please consider to run pre-processing before quantization"
    # through the root logger: advice for its own users, noise in ours (the gate measures).
    with warnings.catch_warnings(), contextlib.redirect_stdout(None), _root_logger_at(logging.ERROR):
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # 7-bit weights: no saturation on CPUs without VNNI (module docstring)
            op_types_to_quantize=["MatMul", "Gemm"],
            # the contrib ops' outputs have no inferred type; they are all float32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    fp32_backend: Any,
    make_backend: Callable[[Path], Any],
    prompt_ids: list[list[int]],
    min_agreement: float = INT8_MIN_AGREEMENT,
) -> dict[str, Any]:
    """Write the int8 graph of ``fp32_path`` to ``int8_path``; raise :class:`ParityError` unless it
    agrees with ``fp32_backend`` on ``min_agreement`` of the greedy tokens of ``prompt_ids``.

    ``make_backend(path)`` opens a graph of the bundle being written. Returns the gate's figures
    (agreement, sizes, ms per decoded token of both graphs)."""
    _quantize(fp32_path, int8_path)
    int8_backend = make_backend(int8_path)
    agree = total = 0
    for p in prompt_ids:
        max_new = min(PARITY_GREEDY_TOKENS, fp32_backend.config.max_seq_len - len(p))
        seq = greedy_tokens(fp32_backend, p, max_new)
        full = np.asarray([p + seq[:-1]], dtype=np.int64)  # (1, T) teacher forcing with fp32's tokens
        logits = int8_backend.forward(full, np.ones_like(full))[0, len(p) - 1 :]  # (max_new, V)
        agree += int((np.argmax(logits, axis=-1) == np.asarray(seq)).sum())
        total += len(seq)
    agreement = agree / max(total, 1)
    report = {
        "min_agreement": min_agreement,
        "greedy_agreement": round(agreement, 4),
        "positions": total,
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "fp32_ms_per_token": round(_decode_ms(fp32_backend, prompt_ids[0]), 3),
        "int8_ms_per_token": round(_decode_ms(int8_backend, prompt_ids[0]), 3),
    }
    if agreement < min_agreement:
        raise ParityError(
            f"int8 gate failed: greedy agreement with fp32 is {agreement:.1%} < {min_agreement:.0%} "
            f"over {total} teacher-forced positions",
            hint="export without --quantize (the fp32 bundle is exact), or train longer",
        )
    return report
