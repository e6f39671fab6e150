"""One decode step's attention in onnxruntime on the CPU: the bundle graph's ``GroupQueryAttention``
(KV cache appended in place in a capacity-sized buffer, as the runtime binds it) vs the same
attention from standard ONNX ops over that buffer (``MatMul`` on a K cache stored transposed,
scale, additive mask, ``Softmax``, ``MatMul``: no per-step slicing or copying). No RoPE: the
bench model (learned positions) does not use it.

    python bench/decode_attention.py [--batch 8] [--heads 4] [--head-dim 64] [--capacity 160 512]
                                     [--keys 33 97 160] [--threads 2]

The question it answers: can a graph of standard ops beat the contrib kernel at decode time (one
query per row against the cache)? Ratio > 1 means the standard-op graph is slower.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
from gptmed.inference.backends import _session_options
from onnx import TensorProto, helper

F32 = TensorProto.FLOAT


def _session(model: Any, threads: int) -> Any:
    """A session with the runtime's own options (threads, spinning, optimisation level)."""
    opts = _session_options(threads)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _gqa_model(b: int, h: int, d: int, cap: int) -> Any:
    node = helper.make_node(
        "GroupQueryAttention",
        ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total_len"],
        ["out", "present_k", "present_v"],
        domain="com.microsoft",
        num_heads=h,
        kv_num_heads=h,
    )
    cache = [b, h, cap, d]
    graph = helper.make_graph(
        [node],
        "gqa",
        [
            helper.make_tensor_value_info("qkv", F32, [b, 1, 3 * h * d]),
            helper.make_tensor_value_info("past_k", F32, cache),
            helper.make_tensor_value_info("past_v", F32, cache),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [b]),
            helper.make_tensor_value_info("total_len", TensorProto.INT32, []),
        ],
        [
            helper.make_tensor_value_info("out", F32, [b, 1, h * d]),
            helper.make_tensor_value_info("present_k", F32, cache),
            helper.make_tensor_value_info("present_v", F32, cache),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _gqa_binding(sess: Any, qkv: np.ndarray, past_k: Any, past_v: Any, keys: int) -> Any:
    """An IOBinding of ``_gqa_model``: rows hold ``keys - 1`` cached keys and append one; the cache
    OrtValues are bound as past and present (one buffer, appended in place, as the runtime does)."""
    bind = sess.io_binding()
    bind.bind_cpu_input("qkv", qkv)
    bind.bind_ortvalue_input("past_k", past_k)
    bind.bind_ortvalue_input("past_v", past_v)
    bind.bind_cpu_input("seqlens_k", np.full(qkv.shape[0], keys - 1, np.int32))
    bind.bind_cpu_input("total_len", np.array(keys, np.int32))
    bind.bind_ortvalue_output("present_k", past_k)
    bind.bind_ortvalue_output("present_v", past_v)
    bind.bind_output("out")
    return bind


def _standard_model(b: int, h: int, d: int, cap: int) -> Any:
    nodes = [
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "standard",
        [
            helper.make_tensor_value_info("q", F32, [b, h, 1, d]),
            helper.make_tensor_value_info("k_t", F32, [b, h, d, cap]),
            helper.make_tensor_value_info("v", F32, [b, h, cap, d]),
            helper.make_tensor_value_info("mask", F32, [b, 1, 1, cap]),
        ],
        [helper.make_tensor_value_info("out", F32, [b, h, 1, d])],
        [helper.make_tensor("scale", F32, [], [d**-0.5])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _best_us(fn: Callable[[], Any], calls: int = 300, rounds: int = 5) -> float:
    for _ in range(30):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--capacity", type=int, nargs="+", default=[160, 512], help="cache slots")
    ap.add_argument("--keys", type=int, nargs="+", default=[33, 97, 160], help="live keys incl. the new one")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    b, h, d = args.batch, args.heads, args.head_dim
    rng = np.random.default_rng(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}"
    )
    print(f"batch {b}, {h} heads of {d}, fp32, {args.threads} threads; µs per call, best of 5 x 300")
    print("| cache slots | live keys | GroupQueryAttention | standard ops | ratio | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for cap in args.capacity:
        gqa = _session(_gqa_model(b, h, d, cap), args.threads)
        std = _session(_standard_model(b, h, d, cap), args.threads)
        k = rng.standard_normal((b, h, cap, d), dtype=np.float32)
        v = rng.standard_normal((b, h, cap, d), dtype=np.float32)
        k_t = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
        qkv = rng.standard_normal((b, 1, 3 * h * d), dtype=np.float32)
        q = np.ascontiguousarray(qkv[..., : h * d].reshape(b, 1, h, d).transpose(0, 2, 1, 3))
        for keys in (n for n in args.keys if n <= cap):
            past_k, past_v = (ort.OrtValue.ortvalue_from_numpy(a.copy()) for a in (k, v))
            bind = _gqa_binding(gqa, qkv, past_k, past_v, keys)
            t_gqa = _best_us(lambda: gqa.run_with_iobinding(bind))  # noqa: B023 (called in this iteration)
            mask = np.zeros((b, 1, 1, cap), np.float32)
            mask[..., keys:] = -1e9
            sbind = std.io_binding()
            for name, array in (("q", q), ("k_t", k_t), ("v", v), ("mask", mask)):
                sbind.bind_cpu_input(name, array)
            sbind.bind_output("out")
            t_std = _best_us(lambda: std.run_with_iobinding(sbind))  # noqa: B023
            # same answer: feed the standard graph the cache GQA just wrote the new key/value into
            # (outputs in binding order: present_k, present_v, out)
            out_gqa = bind.copy_outputs_to_cpu()[2].reshape(b, 1, h, d).transpose(0, 2, 1, 3)
            written_k, written_v = past_k.numpy(), past_v.numpy()
            out_std = std.run(
                None, {"q": q, "k_t": written_k.transpose(0, 1, 3, 2).copy(), "v": written_v, "mask": mask}
            )
            diff = float(np.abs(out_std[0] - out_gqa).max())
            assert diff < 1e-4, f"the two graphs disagree: max abs diff {diff:.2e}"
            row = f"| {cap} | {keys} | {t_gqa:.1f} | {t_std:.1f} | {t_std / t_gqa:.2f} | {diff:.1e} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
