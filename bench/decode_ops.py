"""Where a decode step's time goes: every kernel of the bundle graph as onnxruntime optimises it,
timed alone at decode shapes (one new token per row), next to the whole step of the real runtime
in the same run (the anchor: `OnnxBackend.decode`, 32-token prompts, 128 new tokens).

    python bench/decode_ops.py [--bundle /tmp/gptmed-bench-generate/bundle-small]
                               [--variant fp32 int8] [--batch 8] [--threads 2]

The bundle is the one `bench/generate.py` builds (run it first, or pass any bundle). Each node
of the optimised graph whose inputs other than its weights are one activation per row
(MatMul, MatMulIntegerToFloat, QuantizeLinear, DynamicQuantizeMatMul, Gemm, SkipLayerNormalization,
BiasGelu, LayerNormalization) is copied with its real weights into a one-node graph; GroupQueryAttention is timed on a cache
holding the decode's mean number of keys. "net" subtracts the cost of running a one-node graph
(a one-element `Identity`), which every node of the real graph does not pay separately. The rest
of the step is split in two: the time inside onnxruntime's run beyond those kernels (small
shape ops, and weights that stream from memory in the real step but stay in cache when one node
runs alone) and the time outside it (input binding, argmax, the Python loop).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from gptmed.inference.backends import OnnxBackend, _session_options, open_session
from gptmed.inference.bundle import kv_head_dim, load_bundle
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_attention import _best_us, _gqa_binding, _gqa_model, _session

F32 = TensorProto.FLOAT
MATMUL_OPS = ("MatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "Gemm")
ROW_OPS = {
    "MatMul",
    "MatMulIntegerToFloat",  # the int8 graph's (its input quantized by the QuantizeLinear before it)
    "QuantizeLinear",
    "DynamicQuantizeMatMul",  # int8 graphs exported before the scales were fixed at export
    "Gemm",
    "SkipLayerNormalization",
    "BiasGelu",
    "LayerNormalization",
}
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def optimised_graph(model_path: Path, threads: int) -> onnx.GraphProto:
    """The graph onnxruntime runs: the runtime's session options, saved after optimisation."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = _session_options(threads)
        opts.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        opts.log_severity_level = 3  # not the "hardware-specific optimisations" warning
        open_session(str(model_path), opts)
        return onnx.load(opts.optimized_model_filepath).graph


def _weight(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray | None:
    """The node's first constant input (its weight, normalisation scale or gelu bias), if any."""
    return next((inits[n] for n in node.input if n in inits), None)


def quantized_widths(graph: onnx.GraphProto, inits: dict[str, np.ndarray]) -> dict[str, int]:
    """Features per row of each quantized activation (a QuantizeLinear's output), read off the
    weight of the MatMulIntegerToFloat that takes it."""
    return {
        n.input[0]: int(inits[n.input[1]].shape[0]) for n in graph.node if n.op_type == "MatMulIntegerToFloat"
    }


def _activation_width(node: onnx.NodeProto, weight: np.ndarray, quantized: dict[str, int]) -> int:
    """Features per row of the node's activation input, read off its weight (a QuantizeLinear's
    off its consumer's, in ``quantized``)."""
    if node.op_type == "QuantizeLinear":
        return quantized[node.output[0]]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return int(weight.shape[1] if trans_b else weight.shape[0])
    if node.op_type in MATMUL_OPS:
        return int(weight.shape[0])
    return int(weight.shape[-1])  # normalisation scale / gelu bias: one value per feature


def time_row_node(
    node: onnx.NodeProto,
    inits: dict[str, np.ndarray],
    quantized: dict[str, int],
    batch: int,
    threads: int,
    rng: np.random.Generator,
) -> tuple[str, float]:
    """(shape label, µs per call) of ``node`` alone on ``batch`` rows of one token."""
    weight = _weight(node, inits)
    assert weight is not None
    width = _activation_width(node, weight, quantized)
    takes_uint8 = node.op_type == "MatMulIntegerToFloat"
    out_type = TensorProto.UINT8 if node.op_type == "QuantizeLinear" else F32
    two_d = node.op_type == "Gemm"
    shape = [batch, width] if two_d else [batch, 1, width]
    feeds = [n for n in node.input if n and n not in inits]
    used = [numpy_helper.from_array(inits[n], n) for n in node.input if n in inits]
    copy = helper.make_node(node.op_type, list(node.input), [node.output[0]], domain=node.domain)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [copy],
        "one",
        [helper.make_tensor_value_info(n, TensorProto.UINT8 if takes_uint8 else F32, shape) for n in feeds],
        [helper.make_tensor_value_info(node.output[0], out_type, None)],
        used,
    )
    sess = _session(helper.make_model(graph, opset_imports=OPSETS), threads)
    bind = sess.io_binding()
    for name in feeds:
        value = (
            rng.integers(0, 256, shape, dtype=np.uint8)
            if takes_uint8
            else rng.standard_normal(shape, dtype=np.float32)
        )
        bind.bind_cpu_input(name, value)
    bind.bind_output(node.output[0])
    matmul = node.op_type in MATMUL_OPS
    label = "x".join(map(str, weight.shape)) if matmul else f"{width}"
    return label, _best_us(lambda: sess.run_with_iobinding(bind), calls=500)


def time_gqa(heads: int, head_dim: int, batch: int, keys: int, capacity: int, threads: int) -> float:
    """µs per call of GroupQueryAttention appending one key per row to a cache of ``keys - 1``."""
    sess = _session(_gqa_model(batch, heads, head_dim, capacity), threads)
    rng = np.random.default_rng(0)
    cache = (batch, heads, capacity, head_dim)
    past_k, past_v = (
        ort.OrtValue.ortvalue_from_numpy(rng.standard_normal(cache, dtype=np.float32)) for _ in "kv"
    )
    qkv = rng.standard_normal((batch, 1, 3 * heads * head_dim), dtype=np.float32)
    bind = _gqa_binding(sess, qkv, past_k, past_v, keys)  # the same keys every call
    return _best_us(lambda: sess.run_with_iobinding(bind), calls=500)


def time_run_overhead(threads: int) -> float:
    """µs per call of a one-node graph that does no work (a one-element Identity)."""
    node = helper.make_node("Identity", ["x"], ["y"])
    value = [helper.make_tensor_value_info(n, F32, [1]) for n in ("x", "y")]
    sess = _session(
        helper.make_model(helper.make_graph([node], "id", value[:1], value[1:]), opset_imports=OPSETS),
        threads,
    )
    bind = sess.io_binding()
    bind.bind_cpu_input("x", np.zeros(1, np.float32))
    bind.bind_output("y")
    return _best_us(lambda: sess.run_with_iobinding(bind), calls=2000)


class _TimedSession:
    """The backend's session, with the time spent inside ``run_with_iobinding`` added up."""

    def __init__(self, session: Any) -> None:
        self.session, self.inside = session, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run_with_iobinding(self, binding: Any) -> None:
        start = time.perf_counter()
        self.session.run_with_iobinding(binding)
        self.inside += time.perf_counter() - start


def time_step(
    bundle_dir: Path, variant: str, batch: int, threads: int, prompt: int, new: int
) -> tuple[float, float]:
    """The anchor: (µs per decode step of the runtime on this bundle, µs of it inside onnxruntime's
    run), medians of 5 answers."""
    backend = OnnxBackend(load_bundle(bundle_dir, variant=variant), threads=threads)
    timed = _TimedSession(backend.session)
    backend.session = timed
    rng = np.random.default_rng(0)
    ids = rng.integers(10, backend.config.vocab_size, (batch, prompt))
    mask = np.ones_like(ids)
    steps, inside = [], []
    for _ in range(7):  # 2 warm-up answers, then 5
        logits, state = backend.prefill(ids, mask, capacity=prompt + new)
        timed.inside = 0.0
        start = time.perf_counter()
        for _ in range(new - 1):
            logits = backend.decode(state, logits.argmax(-1))
        steps.append((time.perf_counter() - start) / (new - 1) * 1e6)
        inside.append(timed.inside / (new - 1) * 1e6)
    return float(np.median(steps[2:])), float(np.median(inside[2:]))


def breakdown(bundle_dir: Path, variant: str, batch: int, threads: int, prompt: int, new: int) -> None:
    bundle = load_bundle(bundle_dir, variant=variant)
    cfg = bundle.manifest.model_config
    graph = optimised_graph(bundle.model_path, threads)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantized = quantized_widths(graph, inits)
    keys = prompt + new // 2  # the mean number of keys a decode step attends to
    overhead = time_run_overhead(threads)
    rng = np.random.default_rng(0)
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)  # (op, shape) -> µs per call
    untimed: dict[str, int] = defaultdict(int)
    gqa_us: float | None = None
    for node in graph.node:
        if node.op_type in ROW_OPS and _weight(node, inits) is not None:
            label, us = time_row_node(node, inits, quantized, batch, threads, rng)
            rows[(node.op_type, label)].append(us)
        elif node.op_type == "GroupQueryAttention":
            if gqa_us is None:
                gqa_us = time_gqa(cfg.n_heads, kv_head_dim(cfg), batch, keys, prompt + new, threads)
            rows[("GroupQueryAttention", f"{keys} keys")].append(gqa_us)
        else:
            untimed[node.op_type] += 1
    step, in_run = time_step(bundle_dir, variant, batch, threads, prompt, new)
    print(
        f"\n{variant}, batch {batch}: whole decode step (anchor) {step:.0f} µs; one-node run {overhead:.1f} µs"
    )
    print("| op | weights / width | calls per step | µs per call | net µs per step | share of step |")
    print("|---|---|---:|---:|---:|---:|")
    total = 0.0
    for (op, label), times in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
        per_call = float(np.median(times))
        net = sum(max(t - overhead, 0.0) for t in times)
        total += net
        print(f"| {op} | {label} | {len(times)} | {per_call:.1f} | {net:.0f} | {100 * net / step:.0f}% |")
    rest = ", ".join(f"{n} {op}" for op, n in sorted(untimed.items()))
    gap = in_run - total
    host = step - in_run
    print(
        f"| inside onnxruntime, beyond the kernels above: {rest}; weights not in cache | | | | {gap:.0f} | {100 * gap / step:.0f}% |"
    )
    print(
        f"| outside onnxruntime: binding inputs, argmax, the decode loop | | | | {host:.0f} | {100 * host / step:.0f}% |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/gptmed-bench-generate/bundle-small"))
    ap.add_argument("--variant", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    if not (args.bundle / "gptmed.json").exists():
        raise SystemExit(f"no bundle at {args.bundle}: run bench/generate.py first, or pass --bundle")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}"
    )
    print(f"{args.threads} threads; µs per call: best of 5 x 500 calls; anchor: median of 5 answers")
    for variant in args.variant:
        breakdown(args.bundle, variant, args.batch, args.threads, args.prompt_len, args.new_tokens)


if __name__ == "__main__":
    main()
