"""The decode graph, written node by node from a ``GPTTransformer`` state dict (numpy, no torch).

One graph serves prefill, cached decode and full forward. Per block it runs these nodes, all
onnxruntime CPU kernels:

* ``Add`` of the previous projection and its bias, ``Add`` of that to the residual stream, and
  ``LayerNormalization``, kept apart: the runtime's sessions turn off onnxruntime's fusion into
  the slower ``SkipLayerNormalization`` (:data:`gptmed.inference.backends.DISABLED_OPTIMIZERS`);
* ``MatMul`` for q/k/v (one packed weight) + ``Add`` of its bias;
* ``GroupQueryAttention`` (``com.microsoft``): RoPE (interleaved, as the model rotates), causal
  attention and the KV-cache write in one kernel. Its ``past_key_values.*`` and ``present.*`` may
  be the **same buffer** (capacity-sized, ``(B, nh, capacity, hs)``): the runtime binds one
  OrtValue to both and the kernel appends the new keys in place, so no step copies the cache;
* ``MatMul`` for the output projection, the two ``Add`` and ``LayerNormalization`` again, ``MatMul`` +
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
from dataclasses import dataclass
from typing import Any

import numpy as np
from gptmed.core import ModelConfig, sigterm_held
from gptmed.inference.bundle import expected_io_names, kv_head_dim

__all__ = ["LN_EPS", "OPSET", "build_graph", "export_onnx", "graph_weights"]

OPSET = 17
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which GPTTransformer uses
_INT32 = 6  # onnx.TensorProto.INT32 (onnx itself is imported only when the graph is assembled)


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
    with sigterm_held():  # onnx's native code must not see the SIGTERM handler raise (sigterm_held)
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


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    name: str
    domain: str
    attrs: dict[str, Any]


class _Builder:
    """The nodes and initializers of one graph, recorded in order (onnx is needed only to assemble
    them, in :func:`build_graph`). ``x`` names the residual stream; ``skip`` is the branch output
    and its bias still to be added to it (the next LayerNorm adds both, fused)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> None:
        self.config, self.weights = config, weights
        self.nh, self.hs, self.hs_pad = config.n_heads, config.head_dim, kv_head_dim(config)
        self.nodes: list[_Node] = []
        self.inits: list[tuple[str, np.ndarray]] = []
        self.x = "x_tok"
        self.skip: tuple[str, str] | None = None

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append((name, np.ascontiguousarray(array)))
        return name

    def w(self, key: str) -> np.ndarray:
        try:
            return np.asarray(self.weights[key], dtype=np.float32)
        except KeyError:
            raise KeyError(f"the state dict has no {key!r}; is it a GPTTransformer's?") from None

    def node(self, op: str, ins: list[str], outs: list[str], domain: str = "", **attrs: Any) -> list[str]:
        self.nodes.append(_Node(op, ins, outs, f"{op}_{len(self.nodes)}", domain, attrs))
        return outs

    def sequence_lengths(self) -> None:
        """``seqlens_k`` (B,) int32: keys per row minus one, and ``total_len``: the mask's width
        (the only things the attention mask is used for)."""
        self.node(
            "ReduceSum",
            ["attention_mask", self.init("axis_1", np.array([1], dtype=np.int64))],
            ["mask_sum"],
            keepdims=0,
        )
        self.node("Sub", ["mask_sum", self.init("one_i64", np.array(1, dtype=np.int64))], ["seqlens_k_i64"])
        self.node("Cast", ["seqlens_k_i64"], ["seqlens_k"], to=_INT32)  # (B,)
        self.node("Shape", ["attention_mask"], ["mask_shape"])
        index = self.init("idx_1", np.array(1, dtype=np.int64))
        self.node("Gather", ["mask_shape", index], ["total_len_i64"], axis=0)
        self.node("Cast", ["total_len_i64"], ["total_len"], to=_INT32)  # scalar

    def embeddings(self) -> list[str]:
        """Token embeddings (+ learned positions without RoPE) -> ``x`` (B, T, C); returns the RoPE
        cos/sin inputs of GroupQueryAttention (empty names without RoPE)."""
        emb = self.init("tok_emb.weight", self.w("tok_emb.weight"))  # (V, C), shared with the output Gemm
        self.node("Gather", [emb, "input_ids"], ["x_tok"])  # (B, T, C)
        if not self.config.use_rope:
            pos = self.init("pos_emb.weight", self.w("pos_emb.weight"))
            self.node("Gather", [pos, "position_ids"], ["x_pos"])
            self.x = self.node("Add", ["x_tok", "x_pos"], ["x_0"])[0]
            return ["", ""]
        pairs = [(0, 0), (0, (self.hs_pad - self.hs) // 2)]  # padded pairs rotate by angle 0 (they are zeros)
        return [
            self.init(
                "rope_cos", np.pad(self.w("rope_cos"), pairs, constant_values=1.0)
            ),  # (max_seq_len, hs_pad/2)
            self.init("rope_sin", np.pad(self.w("rope_sin"), pairs)),
        ]

    def ln(self, name: str, key: str) -> str:
        """LayerNorm of x (+ the pending branch and bias) -> ``name``; x becomes the sum, added
        as the model adds it: ``x + (branch + bias)``."""
        gamma = self.init(f"{key}.weight", self.w(f"{key}.weight"))
        beta = self.init(f"{key}.bias", self.w(f"{key}.bias"))
        if self.skip is not None:
            branch, bias = self.skip
            biased = self.node("Add", [branch, bias], [f"{name}_branch"])[0]
            self.x, self.skip = self.node("Add", [self.x, biased], [f"{name}_resid"])[0], None
        return self.node("LayerNormalization", [self.x, gamma, beta], [name], axis=-1, epsilon=LN_EPS)[0]

    def linear(
        self, src: str, key: str, out: str, weight_t: np.ndarray, bias: np.ndarray | None = None
    ) -> str:
        """``src @ weight_t`` (+ ``bias``); weight_t is (in, out)."""
        mm_out = out if bias is None else f"{out}_mm"
        y = self.node("MatMul", [src, self.init(f"{key}.weight.T", weight_t)], [mm_out])[0]
        if bias is not None:
            y = self.node("Add", [y, self.init(f"{key}.bias", bias)], [out])[0]
        return y

    def block(self, i: int, rope_inputs: list[str]) -> None:
        """Block ``i``: LayerNorm, packed q/k/v, GroupQueryAttention with its cache, projection;
        LayerNorm, MLP. Both residual adds are left pending in ``skip`` for the next LayerNorm."""
        p, nh, hs, hs_pad = f"blocks.{i}.", self.nh, self.hs, self.hs_pad
        h = self.ln(f"h{i}_ln1", p + "ln1")
        qkv_t = _pad_heads(self.w(p + "attn.qkv.weight").T, nh, hs, hs_pad, axis=1)  # (C, 3 * nh * hs_pad)
        qkv_b = _pad_heads(self.w(p + "attn.qkv.bias"), nh, hs, hs_pad, axis=0)
        qkv = self.linear(h, p + "attn.qkv", f"qkv{i}", qkv_t, qkv_b)  # (B, T, 3*nh*hs_pad): q, k, v heads
        rotary = {"do_rotary": 1, "rotary_interleaved": 1} if self.config.use_rope else {}
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        self.node(
            "GroupQueryAttention",
            [qkv, "", "", *past, "seqlens_k", "total_len", *rope_inputs],
            [f"attn{i}", f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft",
            num_heads=nh,
            kv_num_heads=nh,
            scale=float(1.0 / np.sqrt(hs)),
            **rotary,
        )
        proj_t = _pad_heads(self.w(p + "attn.proj.weight").T, nh, hs, hs_pad, axis=0)  # (nh * hs_pad, C)
        proj = self.linear(f"attn{i}", p + "attn.proj", f"attn_out{i}", proj_t)
        self.skip = (proj, self.init(p + "attn.proj.bias", self.w(p + "attn.proj.bias")))
        h2 = self.ln(f"h{i}_ln2", p + "ln2")
        fc = self.linear(h2, p + "mlp.fc", f"fc{i}", self.w(p + "mlp.fc.weight").T)
        self.node(
            "FastGelu" if self.config.activation == "gelu_tanh" else "BiasGelu",  # bias + GELU, one kernel
            [fc, self.init(p + "mlp.fc.bias", self.w(p + "mlp.fc.bias"))],
            [f"gelu{i}"],
            domain="com.microsoft",
        )
        mlp = self.linear(f"gelu{i}", p + "mlp.proj", f"mlp_out{i}", self.w(p + "mlp.proj.weight").T)
        self.skip = (mlp, self.init(p + "mlp.proj.bias", self.w(p + "mlp.proj.bias")))

    def logits(self, hf: str) -> None:
        """``logits`` (B, T', V) of the last ``num_logits_to_keep`` positions of ``hf`` (B, T, C)."""
        # Slice from -k; k = 0 starts at 0: every position
        self.node("Neg", ["num_logits_to_keep"], ["keep_from"])
        end = self.init("int64_max", np.array([np.iinfo(np.int64).max], dtype=np.int64))
        axis = self.init("axis_seq", np.array([1], dtype=np.int64))
        hf = self.node("Slice", [hf, "keep_from", end, axis], ["h_kept"])[0]
        # logits = h @ E^T as a 2-D Gemm with transB=1 on the embedding table (stored once)
        self.node("Shape", [hf], ["h_shape"])
        zero, two = (
            self.init("zero", np.array([0], dtype=np.int64)),
            self.init("two", np.array([2], dtype=np.int64)),
        )
        self.node("Slice", ["h_shape", zero, two], ["bt"])
        flat = self.init("flat_shape", np.array([-1, self.config.d_model], dtype=np.int64))
        self.node("Reshape", [hf, flat], ["h_flat"])
        self.node("Gemm", ["h_flat", "tok_emb.weight"], ["logits_flat"], transB=1)  # (B*T, V)
        minus_one = self.init("minus_one", np.array([-1], dtype=np.int64))
        self.node("Concat", ["bt", minus_one], ["logits_shape"], axis=0)
        self.node("Reshape", ["logits_flat", "logits_shape"], ["logits"])


def _value_infos(config: ModelConfig) -> tuple[list[Any], list[Any]]:
    """The graph's typed inputs and outputs, with dynamic batch, sequence and cache lengths."""
    from onnx import TensorProto, helper

    inputs, outputs = expected_io_names(config.n_layers)
    nh, hs_pad, float_ = config.n_heads, kv_head_dim(config), TensorProto.FLOAT
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
    return graph_inputs, graph_outputs


def build_graph(config: ModelConfig, weights: Mapping[str, np.ndarray]) -> Any:
    """An ``onnx.ModelProto`` computing ``GPTTransformer(config)`` with ``weights``: its state dict
    as float32 numpy arrays, wrapper prefixes removed, plus ``rope_cos`` / ``rope_sin`` (the model's
    RoPE tables) when ``config.use_rope`` (see :func:`graph_weights`)."""
    from onnx import helper, numpy_helper

    b = _Builder(config, weights)
    b.sequence_lengths()
    rope_inputs = b.embeddings()
    for i in range(config.n_layers):
        b.block(i, rope_inputs)
    b.logits(b.ln("h_final", "ln_f"))  # (B, T, C) -> (B, T', V)
    nodes = [
        helper.make_node(n.op, n.inputs, n.outputs, name=n.name, domain=n.domain, **n.attrs) for n in b.nodes
    ]
    inits = [numpy_helper.from_array(array, name) for name, array in b.inits]
    graph = helper.make_graph(nodes, "gptmed", *_value_infos(config), initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="gptmed-infer",
    )
    model.ir_version = 8
    return model
