"""The decode graph, written node by node from a ``GPTTransformer`` state dict (numpy, no torch).

One graph serves prefill, cached decode and full forward. Per block it runs nine nodes, all
onnxruntime CPU kernels:

* ``SkipLayerNormalization``: residual add + the previous projection's bias + LayerNorm, in one
  pass (it also returns the new residual stream);
* ``MatMul`` for q/k/v (one packed weight) + ``Add`` of its bias;
* ``GroupQueryAttention`` (``com.microsoft``): RoPE (interleaved, as the model rotates), causal
  attention and the KV-cache write in one kernel. Its ``past_key_values.*`` and ``present.*`` may
  be the **same buffer** (capacity-sized, ``(B, nh, capacity, hs)``): the runtime binds one
  OrtValue to both and the kernel appends the new keys in place, so no step copies the cache;
* ``MatMul`` for the output projection, ``SkipLayerNormalization`` again, ``MatMul`` +
  ``BiasGelu`` (``FastGelu`` for ``activation="gelu_tanh"``; bias fused) for the MLP, ``MatMul`` back.

Padding is on the right: ``seqlens_k = sum(attention_mask) - 1`` per row says how many keys a row
has; the mask's width is the total sequence length. (Where the real tokens sit inside the mask
does not matter to the graph, only how many there are.) Logits come from a ``Gemm`` with
``transB=1`` on the token-embedding table, so the tied matrix is stored once, and only for the
last ``num_logits_to_keep`` positions (0: all of them): a prefill needs one position per row, and
the output matmul over every prompt position is the largest single cost of a prefill.

``GroupQueryAttention`` needs a head size that is a multiple of 8 (16 with RoPE). Other head sizes are padded
with zero rows in the q/k/v weights (and zero columns in the output projection's input), which
changes no logit: padded q and k add 0 to every dot product, padded v dims come out 0 and are
multiplied by 0; the extra RoPE pairs rotate zeros. The cache then has
:func:`gptmed.inference.bundle.kv_head_dim` dims.

The I/O names are those of :func:`gptmed.inference.bundle.expected_io_names` (optimum /
onnxruntime-genai names), so the bundle also loads in onnxruntime-genai. What the runtime must
know of this graph (I/O names, layout tag, cache head size) lives in :mod:`gptmed.inference.bundle`;
this module, which needs onnx, only writes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from gptmed.core import ModelConfig
from gptmed.inference.bundle import expected_io_names, kv_head_dim

__all__ = ["LN_EPS", "OPSET", "build_graph", "export_onnx", "graph_weights"]

OPSET = 17
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which GPTTransformer uses


def graph_weights(model: Any) -> dict[str, np.ndarray]:
    """What :func:`build_graph` reads from a ``GPTTransformer``: its state dict (wrapper prefixes
    removed) and, with RoPE, the model's own cos/sin tables (non-persistent buffers, so the graph
    rotates exactly as the model does), all as float32 numpy arrays."""
    from gptmed.model.architecture import clean_state_dict

    tensors = dict(clean_state_dict(model.state_dict()))
    if model.rope_cos is not None:
        tensors["rope_cos"], tensors["rope_sin"] = model.rope_cos, model.rope_sin  # (max_seq_len, hs/2)
    return {k: v.detach().float().cpu().numpy() for k, v in tensors.items()}


def export_onnx(model: Any, path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Write ``model`` (a ``GPTTransformer``) as the KV-cache decode graph to ``path`` (weights
    inline, checked by ``onnx.checker``); return its input and output names."""
    import onnx

    graph = build_graph(model.config, graph_weights(model))
    onnx.checker.check_model(graph)
    onnx.save_model(graph, str(path))
    return expected_io_names(model.config.n_layers)


def _pad_heads(array: np.ndarray, nh: int, hs: int, hs_pad: int, axis: int) -> np.ndarray:
    """Zero-pad each head's ``hs`` entries along ``axis`` (laid out as ``(..., nh, hs)``) to ``hs_pad``."""
    if hs_pad == hs:
        return array
    moved = np.moveaxis(array, axis, -1)
    heads = moved.reshape(*moved.shape[:-1], -1, hs)  # (..., groups*nh, hs)
    widths = [(0, 0)] * (heads.ndim - 1) + [(0, hs_pad - hs)]
    padded = np.pad(heads, widths).reshape(*moved.shape[:-1], -1)
    return np.moveaxis(padded, -1, axis)


def build_graph(config: ModelConfig, weights: Mapping[str, np.ndarray]) -> Any:
    """An ``onnx.ModelProto`` computing ``GPTTransformer(config)`` with ``weights``: its state dict
    as float32 numpy arrays, wrapper prefixes removed, plus ``rope_cos`` / ``rope_sin`` (the model's
    RoPE tables) when ``config.use_rope`` (see :func:`graph_weights`)."""
    from onnx import TensorProto, helper, numpy_helper

    c, nh, hs, n_layers = config.d_model, config.n_heads, config.head_dim, config.n_layers
    hs_pad = kv_head_dim(config)
    inputs, outputs = expected_io_names(n_layers)
    nodes: list[Any] = []
    inits: list[Any] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def w(key: str) -> np.ndarray:
        try:
            return np.asarray(weights[key], dtype=np.float32)
        except KeyError:
            raise KeyError(f"the state dict has no {key!r}; is it a GPTTransformer's?") from None

    def node(op: str, ins: list[str], outs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outs

    # keys per row and the total length, from the mask (the only thing the mask is used for)
    node(
        "ReduceSum",
        ["attention_mask", init("axis_1", np.array([1], dtype=np.int64))],
        ["mask_sum"],
        keepdims=0,
    )
    node("Sub", ["mask_sum", init("one_i64", np.array(1, dtype=np.int64))], ["seqlens_k_i64"])
    node("Cast", ["seqlens_k_i64"], ["seqlens_k"], to=TensorProto.INT32)  # (B,)
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", init("idx_1", np.array(1, dtype=np.int64))], ["total_len_i64"], axis=0)
    node("Cast", ["total_len_i64"], ["total_len"], to=TensorProto.INT32)  # scalar

    emb = init("tok_emb.weight", w("tok_emb.weight"))  # (V, C), shared with the output Gemm
    node("Gather", [emb, "input_ids"], ["x_tok"])  # (B, T, C)
    x = "x_tok"
    rotary: dict[str, Any] = {}
    rope_inputs = ["", ""]
    if config.use_rope:
        pairs = [(0, 0), (0, (hs_pad - hs) // 2)]  # padded pairs rotate by angle 0 (they are zeros)
        rope_inputs = [
            init("rope_cos", np.pad(w("rope_cos"), pairs, constant_values=1.0)),  # (max_seq_len, hs_pad/2)
            init("rope_sin", np.pad(w("rope_sin"), pairs)),
        ]
        rotary = {"do_rotary": 1, "rotary_interleaved": 1}
    else:
        node("Gather", [init("pos_emb.weight", w("pos_emb.weight")), "position_ids"], ["x_pos"])
        x = node("Add", ["x_tok", "x_pos"], ["x_0"])[0]

    skip: tuple[str, str] | None = None  # (branch output, its bias) still to be added to x

    def ln(name: str, key: str) -> str:
        """LayerNorm of x (+ the pending branch and bias) -> normed; x becomes the sum."""
        nonlocal x, skip
        gamma, beta = init(f"{key}.weight", w(f"{key}.weight")), init(f"{key}.bias", w(f"{key}.bias"))
        if skip is None:
            return node("LayerNormalization", [x, gamma, beta], [name], axis=-1, epsilon=LN_EPS)[0]
        branch, bias = skip
        out = node(
            "SkipLayerNormalization",
            [branch, x, gamma, beta, bias],
            [name, "", "", f"{name}_resid"],
            domain="com.microsoft",
            epsilon=LN_EPS,
        )
        x, skip = out[3], None
        return out[0]

    def linear(src: str, key: str, out: str, weight_t: np.ndarray, bias: np.ndarray | None = None) -> str:
        """``src @ weight_t`` (+ ``bias``); weight_t is (in, out)."""
        mm_out = out if bias is None else f"{out}_mm"
        y = node("MatMul", [src, init(f"{key}.weight.T", weight_t)], [mm_out])[0]
        if bias is not None:
            y = node("Add", [y, init(f"{key}.bias", bias)], [out])[0]
        return y

    for i in range(n_layers):
        p = f"blocks.{i}."
        h = ln(f"h{i}_ln1", p + "ln1")
        qkv_t = _pad_heads(w(p + "attn.qkv.weight").T, nh, hs, hs_pad, axis=1)  # (C, 3 * nh * hs_pad)
        qkv_b = _pad_heads(w(p + "attn.qkv.bias"), nh, hs, hs_pad, axis=0)
        qkv = linear(h, p + "attn.qkv", f"qkv{i}", qkv_t, qkv_b)  # (B, T, 3*nh*hs_pad): q, k, v heads
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        node(
            "GroupQueryAttention",
            [qkv, "", "", past_k, past_v, "seqlens_k", "total_len", *rope_inputs],
            [f"attn{i}", outputs[1 + 2 * i], outputs[2 + 2 * i]],
            domain="com.microsoft",
            num_heads=nh,
            kv_num_heads=nh,
            scale=float(1.0 / np.sqrt(hs)),
            **rotary,
        )
        proj_t = _pad_heads(w(p + "attn.proj.weight").T, nh, hs, hs_pad, axis=0)  # (nh * hs_pad, C)
        proj = linear(f"attn{i}", p + "attn.proj", f"attn_out{i}", proj_t)
        skip = (proj, init(p + "attn.proj.bias", w(p + "attn.proj.bias")))
        h2 = ln(f"h{i}_ln2", p + "ln2")
        fc = linear(h2, p + "mlp.fc", f"fc{i}", w(p + "mlp.fc.weight").T)
        node(
            "FastGelu" if config.activation == "gelu_tanh" else "BiasGelu",  # bias + GELU, one kernel
            [fc, init(p + "mlp.fc.bias", w(p + "mlp.fc.bias"))],
            [f"gelu{i}"],
            domain="com.microsoft",
        )
        mlp = linear(f"gelu{i}", p + "mlp.proj", f"mlp_out{i}", w(p + "mlp.proj.weight").T)
        skip = (mlp, init(p + "mlp.proj.bias", w(p + "mlp.proj.bias")))
    hf = ln("h_final", "ln_f")  # (B, T, C)

    # the last num_logits_to_keep positions (Slice from -k; k = 0 starts at 0: every position)
    node("Neg", ["num_logits_to_keep"], ["keep_from"])
    end = init("int64_max", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    hf = node("Slice", [hf, "keep_from", end, init("axis_seq", np.array([1], dtype=np.int64))], ["h_kept"])[0]

    # logits = h @ E^T as a 2-D Gemm with transB=1 on the embedding table (stored once)
    node("Shape", [hf], ["h_shape"])
    node(
        "Slice",
        ["h_shape", init("zero", np.array([0], dtype=np.int64)), init("two", np.array([2], dtype=np.int64))],
        ["bt"],
    )
    node("Reshape", [hf, init("flat_shape", np.array([-1, c], dtype=np.int64))], ["h_flat"])
    node("Gemm", ["h_flat", emb], ["logits_flat"], transB=1)  # (B*T, V)
    node("Concat", ["bt", init("minus_one", np.array([-1], dtype=np.int64))], ["logits_shape"], axis=0)
    node("Reshape", ["logits_flat", "logits_shape"], ["logits"])

    float_ = TensorProto.FLOAT
    graph_inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
        helper.make_tensor_value_info("num_logits_to_keep", TensorProto.INT64, [1]),
    ]
    graph_inputs += [
        helper.make_tensor_value_info(name, float_, ["batch", nh, "past_sequence", hs_pad])
        for name in inputs[len(graph_inputs) :]
    ]
    graph_outputs = [
        helper.make_tensor_value_info("logits", float_, ["batch", "logits_sequence", config.vocab_size])
    ]
    graph_outputs += [
        helper.make_tensor_value_info(name, float_, ["batch", nh, "present_sequence", hs_pad])
        for name in outputs[1:]
    ]
    graph = helper.make_graph(nodes, "gptmed", graph_inputs, graph_outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="gptmed-infer",
    )
    model.ir_version = 8
    return model
