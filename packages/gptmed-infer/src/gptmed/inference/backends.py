"""Backends run the model; the generator owns everything else (sampling, stopping, text).

A backend answers three calls on numpy arrays:

* ``prefill(input_ids (B, T), attention_mask (B, T)) -> (logits (B, V), state)``: the prompt,
  left-padded (mask 0 on padding), through the model; logits of the last position.
* ``decode(state, tokens (B,)) -> logits (B, V)``: one more token per row, using and growing
  the KV cache in ``state``.
* ``forward(input_ids, attention_mask) -> logits (B, T, V)``: every position (for eval).

:class:`OnnxBackend` (onnxruntime, no torch) lives here; the torch backend is in
:mod:`gptmed.inference.torch_backend` and is imported only when a torch model is given.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from gptmed.core import BundleError, ModelConfig
from gptmed.inference.bundle import Bundle

__all__ = ["Backend", "OnnxBackend", "position_ids_from_mask"]

_log = logging.getLogger(__name__)


class Backend(Protocol):
    config: ModelConfig
    name: str

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, Any]: ...

    def decode(self, state: Any, tokens: np.ndarray) -> np.ndarray: ...

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


def position_ids_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """(B, T) 0/1 mask -> (B, T) int64 positions counting real tokens only (padding gets 0)."""
    pos = np.cumsum(attention_mask, axis=-1, dtype=np.int64) - 1
    return np.maximum(pos, 0)


@dataclass
class _OrtState:
    mask: np.ndarray  # (B, L) int64: keys seen so far (0 = left padding)
    next_pos: np.ndarray  # (B, 1) int64: position id of the next token per row
    past: list[Any] = field(default_factory=list)  # OrtValues present.{i}.key|value from the last run


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is None:
        env = os.environ.get("GPTMED_NUM_THREADS")
        threads = int(env) if env else 0
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning worker threads burn the cores other processes (and other requests) need; decode
    # steps are short, so on a shared machine spinning makes multi-threaded runs 2-3x slower.
    if os.environ.get("GPTMED_ORT_SPIN", "0") != "1":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxBackend:
    """An onnxruntime session over a verified bundle graph (thread-safe: state lives per call).

    Decode steps bind the previous step's ``present.*`` OrtValues straight to ``past_key_values.*``
    with IOBinding: the KV cache never round-trips through numpy.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        self.config = bundle.manifest.model_config
        try:
            self.session = ort.InferenceSession(
                bundle.model_bytes, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(
                f"onnxruntime cannot load {bundle.model_file}: {str(exc).splitlines()[0][:200]}",
                where=str(bundle.model_path),
                hint="re-export the bundle",
            ) from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        man = bundle.manifest
        if inputs != list(man.inputs) or outputs != list(man.outputs):
            raise BundleError(
                "the graph's inputs/outputs differ from the manifest "
                f"(graph inputs {inputs[:5]}{'...' if len(inputs) > 5 else ''}, manifest {man.inputs[:5]}...; "
                f"graph outputs {outputs[:3]}..., manifest {man.outputs[:3]}...)",
                where=str(bundle.model_path),
                hint="the graph and gptmed.json do not belong together; re-export the bundle",
            )
        self._past_names = inputs[3:]
        self._present_names = outputs[1:]
        self._nh = self.config.n_heads
        self._hs = self.config.head_dim

    def _run(
        self, input_ids: np.ndarray, position_ids: np.ndarray, mask: np.ndarray, past: list[Any] | None
    ) -> tuple[np.ndarray, list[Any]]:
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, dtype=np.int64))
        if past is None:
            empty = np.zeros((input_ids.shape[0], self._nh, 0, self._hs), dtype=np.float32)  # (B, nh, 0, hs)
            empty_value = ort.OrtValue.ortvalue_from_numpy(empty)
            for name in self._past_names:
                binding.bind_ortvalue_input(name, empty_value)
        else:
            for name, value in zip(self._past_names, past, strict=True):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self._present_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return outs[0].numpy(), list(outs[1:])

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, _OrtState]:
        mask = attention_mask.astype(np.int64)
        pos = position_ids_from_mask(mask)
        logits, past = self._run(input_ids, pos, mask, None)  # (B, T, V)
        state = _OrtState(mask=mask, next_pos=pos[:, -1:] + 1, past=past)
        return logits[:, -1, :], state

    def decode(self, state: _OrtState, tokens: np.ndarray) -> np.ndarray:
        batch = tokens.shape[0]
        state.mask = np.concatenate([state.mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        logits, state.past = self._run(tokens.reshape(batch, 1), state.next_pos, state.mask, state.past)
        state.next_pos = state.next_pos + 1
        return logits[:, -1, :]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        mask = attention_mask.astype(np.int64)
        logits, _ = self._run(input_ids, position_ids_from_mask(mask), mask, None)
        return logits
