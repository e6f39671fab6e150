"""``--quantize int8``: static int8 quantization of the graph's MatMuls, gated on greedy agreement.

Every MatMul (and plain ``x @ W + b`` Gemm) with a weight initializer becomes ``QuantizeLinear`` (the activation, to uint8)
and ``com.microsoft.MatMulIntegerToFloat`` (int8 weights, one scale per output channel):

- **Weights**: symmetric, per output channel, 7 bits (-63..63). On x86 CPUs without VNNI,
  onnxruntime's u8s8 kernels saturate intermediate sums on full-range weights, and a bundle's
  int8 graph may be served on any CPU (measured on the test fixture, AVX2, dynamic quantization:
  greedy agreement 87.5% full-range, 97.2% 7-bit).
- **Activations**: one fixed (calibrated) scale and zero point per MatMul input, from the fp32
  graph's min/max over the model's own continuations of the parity prompts. A fixed scale makes
  a row's logits independent of the rows batched with it and of the positions computed with it:
  the server's continuous batching gives a row the same int8 tokens as a request alone, and a
  prefill the same as token-by-token decoding. onnxruntime's dynamic quantization, which earlier
  exports used, took one scale per MatMul over the whole batch, so rows moved each other's
  logits. The decode step costs about the same (docs/bench/infer.md).

The gate: the int8 graph is kept only when its greedy next token is fp32's, or one fp32 scores
within ``INT8_NEAR_TIE`` of fp32's best, on at least ``INT8_MIN_AGREEMENT`` of the teacher-forced
positions of fp32's greedy continuations of the parity prompts. Counting near-ties as agreement
keeps an undertrained model, whose continuations of the built-in prompts are mostly near-ties,
from failing the gate on choices fp32 itself barely makes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from gptmed.core import GenerationConfig
from gptmed.inference.export.parity import PARITY_GREEDY_TOKENS, ParityError, generated_tokens, greedy_tokens

__all__ = [
    "CALIBRATION_SAMPLES",
    "CALIBRATION_TOKENS",
    "INT8_MIN_AGREEMENT",
    "INT8_NEAR_TIE",
    "activation_ranges",
    "calibration_set",
    "int8_agreement",
    "quantize_int8",
    "write_int8_graph",
]

INT8_MIN_AGREEMENT = 0.90  # int8 greedy token agrees with fp32's (near-ties count) on >= 90% of positions
INT8_NEAR_TIE = 0.5  # logits: int8 may pick a token fp32 scores within this of its best
CALIBRATION_TOKENS = 96  # tokens generated per calibration continuation
CALIBRATION_SAMPLES = 3  # sampled continuations per prompt, besides the greedy one
_WEIGHT_LEVELS = 63  # 7-bit symmetric weights: -63..63 (module docstring)
_QUANTIZED_OPS = ("MatMul", "Gemm")

Ranges = dict[str, tuple[float, float]]  # MatMul input name -> (min, max) seen in fp32


# ---------------------------------------------------------------------------------- calibration
def calibration_set(
    backend: Any, prompt_ids: Sequence[list[int]], generation: GenerationConfig
) -> list[list[int]]:
    """Each prompt followed by fp32's continuations as the bundle decodes them: greedy (with the
    bundle's penalties) and ``CALIBRATION_SAMPLES`` sampled (its sampling settings, seeds 0..),
    ``CALIBRATION_TOKENS`` long at most."""
    greedy = replace(generation, temperature=0.0)
    sampled = [replace(generation, seed=seed) for seed in range(CALIBRATION_SAMPLES)]
    if generation.temperature == 0.0:  # a greedy bundle: sample at 1.0, or every sample is the greedy one
        sampled = [replace(c, temperature=1.0) for c in sampled]
    sequences = []
    for p in prompt_ids:
        room = min(CALIBRATION_TOKENS, backend.config.max_seq_len - len(p))
        sequences += [p + generated_tokens(backend, p, room, c) for c in [greedy, *sampled]]
    return sequences


def _is_vector(tensor: Any, width: int) -> bool:
    """``tensor`` is a float32 initializer of shape exactly ``(width,)``: a bias
    ``MatMulIntegerToFloat`` can add (it does not broadcast one)."""
    import onnx

    return tensor is not None and list(tensor.dims) == [width] and tensor.data_type == onnx.TensorProto.FLOAT


def _attr(node: Any, name: str, default: float) -> Any:
    """``node``'s attribute ``name``, or ``default`` where the node leaves it out (a Gemm's
    alpha and beta default to 1, transA and transB to 0; a MatMul has none)."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _quantizable(graph: Any) -> list[int]:
    """Indices of the MatMul/Gemm nodes whose weight (input 1) is a 2-D initializer and, for a
    Gemm, that compute a plain ``x @ W (+ bias of shape (N,))``."""
    weights = {i.name: i for i in graph.initializer}
    found = []
    for index, node in enumerate(graph.node):
        if node.op_type not in _QUANTIZED_OPS or node.input[1] not in weights:
            continue
        plain = (
            _attr(node, "alpha", 1.0) == 1.0
            and _attr(node, "beta", 1.0) == 1.0
            and not _attr(node, "transA", 0)
        )
        weight = weights[node.input[1]]
        bias = node.input[2] if len(node.input) > 2 else ""
        width = weight.dims[0] if _attr(node, "transB", 0) else weight.dims[-1]
        if len(weight.dims) == 2 and plain and (not bias or _is_vector(weights.get(bias), width)):
            found.append(index)
    return found


def activation_ranges(fp32_path: Path, sequences: Sequence[list[int]], config: Any) -> Ranges:
    """The min and max of every quantized MatMul's input over the fp32 graph's prefill of each
    sequence (batch 1, an empty cache, the logits of every position, so the output projection
    sees them all); 0 is always inside the range."""
    import onnx
    from gptmed.inference.backends import _session_options, open_session
    from gptmed.inference.bundle import kv_head_dim

    model = onnx.load(str(fp32_path))
    names = sorted({model.graph.node[i].input[0] for i in _quantizable(model.graph)})
    graph_outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
        for n in names
        if n not in graph_outputs
    )
    session = open_session(model.SerializeToString(), _session_options(None))
    past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    ranges = {n: (0.0, 0.0) for n in names}
    for seq in sequences:
        ids = np.asarray([seq], dtype=np.int64)  # (1, T)
        width = ids.shape[1]
        feeds = {
            "input_ids": ids,
            "position_ids": np.arange(width, dtype=np.int64)[None],
            "attention_mask": np.ones_like(ids),
            "num_logits_to_keep": np.array([0], dtype=np.int64),  # 0: all positions
        }
        cache = np.zeros((1, config.n_heads, width, kv_head_dim(config)), dtype=np.float32)
        feeds.update({name: cache.copy() for name in past})
        for name, value in zip(names, session.run(names, feeds), strict=True):
            lo, hi = ranges[name]
            ranges[name] = (min(lo, float(value.min())), max(hi, float(value.max())))
    return ranges


# ---------------------------------------------------------------------------------- the graph
def _weight_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (K, N) as int8 levels -63..63 and one float32 scale per column (N,)."""
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / _WEIGHT_LEVELS, 1.0).astype(np.float32)
    levels = np.clip(np.rint(weight / scale), -_WEIGHT_LEVELS, _WEIGHT_LEVELS).astype(np.int8)
    return levels, scale


def _quantize_node(x: str, lo: float, hi: float) -> tuple[Any, list[Any]]:
    """``QuantizeLinear`` of activation ``x`` to ``x``_q: [lo, hi] (lo <= 0 <= hi) onto 0..255
    with 0 exactly representable, and its scale and zero point."""
    from onnx import helper, numpy_helper

    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ParityError(
            f"int8 calibration: the fp32 graph's input to a MatMul ({x}) reached {lo:g}..{hi:g}",
            hint="the checkpoint's activations overflow; export without --quantize",
        )
    scale = max((hi - lo) / 255.0, float(np.finfo(np.float32).tiny)) if hi > lo else 1.0
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    inits = [  # scalars: one scale and zero point for the whole tensor
        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{x}_scale"),
        numpy_helper.from_array(np.array(zero, dtype=np.uint8), f"{x}_zero"),
    ]
    node = helper.make_node(
        "QuantizeLinear", [x, f"{x}_scale", f"{x}_zero"], [f"{x}_q"], name=f"{x}_quantize"
    )
    return node, inits


def _int8_matmul(node: Any, weight: np.ndarray, bias_add: Any | None) -> tuple[Any, list[Any]]:
    """``MatMulIntegerToFloat`` computing ``node``'s output from its quantized input (``x``_q of
    :func:`_quantize_node`), and its int8 weight, weight scales and zero points. With
    ``bias_add`` (the ``Add`` of a bias after ``node``, see :func:`_bias_adds`) it adds the bias
    itself and gives the ``Add``'s output."""
    from onnx import helper, numpy_helper

    levels, scale = _weight_int8(weight.T if _attr(node, "transB", 0) else weight)
    x, w = node.input[0], f"{node.output[0]}_w"
    inits = [
        numpy_helper.from_array(levels, f"{w}_int8"),
        numpy_helper.from_array(scale, f"{w}_scale"),
        numpy_helper.from_array(np.zeros(levels.shape[1], dtype=np.int8), f"{w}_zero"),
    ]
    inputs = [f"{x}_q", f"{w}_int8", f"{x}_scale", f"{w}_scale", f"{x}_zero", f"{w}_zero"]
    outputs = list(node.output)
    if bias_add is not None:
        inputs.append(next(n for n in bias_add.input if n != node.output[0]))
        outputs = list(bias_add.output)
    else:
        inputs += [n for n in node.input[2:3] if n]  # a Gemm's bias (N,), added in float
    name = f"{node.name or w}_int8"
    return helper.make_node("MatMulIntegerToFloat", inputs, outputs, name=name, domain="com.microsoft"), inits


def _bias_adds(graph: Any, targets: set[int]) -> dict[int, int]:
    """Target MatMul index -> index of the ``Add`` that adds a bias (a 1-D initializer) to its
    output, where that ``Add`` is the output's only use: ``MatMulIntegerToFloat`` adds the bias
    itself, one kernel fewer per MatMul (onnxruntime fuses it into ``DynamicQuantizeMatMul``
    likewise)."""
    weights = {i.name: i for i in graph.initializer}
    uses: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            uses.setdefault(name, []).append(index)
    graph_outputs = {o.name for o in graph.output}
    found = {}
    for index in targets:
        node = graph.node[index]
        out = node.output[0]
        if node.op_type != "MatMul" or out in graph_outputs or len(uses.get(out, [])) != 1:
            continue
        user = graph.node[uses[out][0]]
        others = [n for n in user.input if n != out]
        width = weights[node.input[1]].dims[-1]
        if user.op_type == "Add" and len(others) == 1 and _is_vector(weights.get(others[0]), width):
            found[index] = uses[out][0]
    return found


def write_int8_graph(fp32_path: Path, int8_path: Path, ranges: Ranges) -> None:
    """The int8 graph of ``fp32_path`` (module docstring) to ``int8_path``; ``ranges`` from
    :func:`activation_ranges`. fp32 weights no other node uses are dropped."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    targets = set(_quantizable(graph))
    bias_adds = _bias_adds(graph, targets)
    folded = set(bias_adds.values())
    nodes, inits = [], []
    quantized: set[str] = set()  # activations that already have their QuantizeLinear
    for index, node in enumerate(graph.node):
        if index in folded:
            continue
        if index not in targets:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in quantized:
            quantize, scales = _quantize_node(x, *ranges[x])
            nodes.append(quantize)
            inits += scales
            quantized.add(x)
        add = graph.node[bias_adds[index]] if index in bias_adds else None
        matmul, matmul_inits = _int8_matmul(node, numpy_helper.to_array(weights[node.input[1]]), add)
        nodes.append(matmul)
        inits += matmul_inits
    used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + inits)
    onnx.save(model, str(int8_path))


# ---------------------------------------------------------------------------------- the gate
def _decode_ms(backend: Any, prompt: list[int], tokens: int = 32) -> float:
    """ms per decode step (batch 1, greedy) after one warm-up."""
    tokens = min(tokens, backend.config.max_seq_len - len(prompt))
    greedy_tokens(backend, prompt, 2)
    start = time.perf_counter()
    greedy_tokens(backend, prompt, tokens)
    return (time.perf_counter() - start) * 1000.0 / max(tokens, 1)


def int8_agreement(fp32_backend: Any, int8_backend: Any, prompt_ids: Sequence[list[int]]) -> dict[str, Any]:
    """Teacher-forced on fp32's greedy continuation of each prompt: how often int8's greedy token
    is fp32's (``greedy_agreement``), or one fp32 scores within ``INT8_NEAR_TIE`` of its best
    (``agreement``)."""
    exact = close = total = 0
    for p in prompt_ids:
        max_new = min(PARITY_GREEDY_TOKENS, fp32_backend.config.max_seq_len - len(p))
        seq = greedy_tokens(fp32_backend, p, max_new)
        full = np.asarray([p + seq[:-1]], dtype=np.int64)  # (1, T) teacher forcing with fp32's tokens
        reference = fp32_backend.forward(full, np.ones_like(full))[0, len(p) - 1 :]  # (max_new, V)
        picks = np.argmax(int8_backend.forward(full, np.ones_like(full))[0, len(p) - 1 :], axis=-1)
        rows = np.arange(len(seq))
        exact += int((picks == np.asarray(seq)).sum())
        close += int((reference[rows, picks] >= reference.max(axis=-1) - INT8_NEAR_TIE).sum())
        total += len(seq)
    return {
        "agreement": round(close / max(total, 1), 4),
        "greedy_agreement": round(exact / max(total, 1), 4),
        "near_tie_logits": INT8_NEAR_TIE,
        "positions": total,
    }


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    fp32_backend: Any,
    make_backend: Callable[[Path], Any],
    prompt_ids: list[list[int]],
    min_agreement: float = INT8_MIN_AGREEMENT,
    generation: GenerationConfig | None = None,
) -> dict[str, Any]:
    """Write the int8 graph of ``fp32_path`` to ``int8_path``, calibrated on ``fp32_backend``'s
    continuations of ``prompt_ids`` (sampled with ``generation``); raise :class:`ParityError`
    unless it agrees with fp32 on ``min_agreement`` of the greedy positions (module docstring).

    ``make_backend(path)`` opens a graph of the bundle being written. Returns the gate's figures
    (agreement, calibration, sizes, ms per decoded token of both graphs)."""
    sequences = calibration_set(fp32_backend, prompt_ids, generation or GenerationConfig())
    write_int8_graph(fp32_path, int8_path, activation_ranges(fp32_path, sequences, fp32_backend.config))
    int8_backend = make_backend(int8_path)
    report = {
        "min_agreement": min_agreement,
        **int8_agreement(fp32_backend, int8_backend, prompt_ids),
        "calibration_tokens": sum(len(s) for s in sequences),
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "fp32_ms_per_token": round(_decode_ms(fp32_backend, prompt_ids[0]), 3),
        "int8_ms_per_token": round(_decode_ms(int8_backend, prompt_ids[0]), 3),
    }
    if report["agreement"] < min_agreement:
        raise ParityError(
            f"int8 gate failed: int8's greedy token is fp32's or within {INT8_NEAR_TIE:g} logits of it on "
            f"{report['agreement']:.1%} < {min_agreement:.0%} of {report['positions']} teacher-forced positions",
            hint="export without --quantize (the fp32 bundle is exact), or train longer",
        )
    return report
