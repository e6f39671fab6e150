"""Backends run the model; the generator owns everything else (sampling, stopping, text).

A backend answers three calls on numpy arrays:

* ``prefill(input_ids (B, T), attention_mask (B, T), capacity=None) -> (logits (B, V), state)``:
  the prompt, left-padded (mask 0 on padding), through the model; logits of the last position.
  ``capacity`` is a hint: the longest row (prompt + new tokens) the cache will have to hold.
* ``decode(state, tokens (B,)) -> logits (B, V)``: one more token per row, using and growing
  the KV cache in ``state``.
* ``forward(input_ids, attention_mask) -> logits (B, T, V)``: every position (for eval).

:class:`OnnxBackend` also serves continuous batching (the server's scheduler,
:class:`BatchingBackend`): a :class:`LiveBatch` whose rows join after their prefill and leave
between decode steps, prompts prefilled in chunks (:meth:`OnnxBackend.extend`).

:class:`OnnxBackend` (onnxruntime, no torch) lives here; the torch backend is in
:mod:`gptmed.inference.export.torch_backend` and is imported only when a torch model is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from gptmed.core import BundleError, ModelConfig
from gptmed.inference.bundle import Bundle, kv_head_dim

__all__ = [
    "DISABLED_OPTIMIZERS",
    "Backend",
    "BatchingBackend",
    "LiveBatch",
    "OnnxBackend",
    "open_session",
    "position_ids_from_mask",
]

_log = logging.getLogger(__name__)


class Backend(Protocol):
    config: ModelConfig
    name: str

    def prefill(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int | None = None
    ) -> tuple[np.ndarray, Any]: ...

    def decode(self, state: Any, tokens: np.ndarray) -> np.ndarray: ...

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class BatchingBackend(Protocol):
    """A backend whose batch can change between decode steps (see :class:`OnnxBackend`)."""

    config: ModelConfig
    name: str

    def prefill(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int | None = None
    ) -> tuple[np.ndarray, Any]: ...

    def extend(self, state: Any, input_ids: np.ndarray) -> np.ndarray: ...

    def kv_bytes_per_token(self) -> int: ...

    def reserve(self, live: LiveBatch, rows: int, capacity: int) -> None: ...

    def join(self, live: LiveBatch, state: Any, rows: Sequence[int]) -> None: ...

    def step(self, live: LiveBatch, tokens: np.ndarray) -> np.ndarray: ...

    def keep(self, live: LiveBatch, rows: np.ndarray) -> None: ...


def position_ids_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """(B, T) 0/1 mask -> (B, T) int64 positions counting real tokens only (padding gets 0)."""
    pos = np.cumsum(attention_mask, axis=-1, dtype=np.int64) - 1
    return np.maximum(pos, 0)


@dataclass
class _OrtState:
    """One batch's KV cache: per layer a key and a value buffer ``(B, nh, capacity, hs)`` that are
    bound as both ``past_key_values.*`` and ``present.*``; the graph appends in place."""

    binding: Any  # onnxruntime IOBinding with the cache buffers bound
    buffers: list[np.ndarray]  # the cache memory (the OrtValues in ``binding`` view these arrays)
    lengths: np.ndarray  # (B,) int64: keys in the cache per row
    logits: np.ndarray | None = None  # (B, T', V) output buffer of the last run (its last T' positions)
    keep: int = -1  # num_logits_to_keep bound for the next run (-1: none yet)

    @property
    def capacity(self) -> int:
        return int(self.buffers[0].shape[2])


@dataclass
class LiveBatch:
    """The KV cache of a batch whose rows join and leave between decode steps.

    ``store`` holds per past input one ``(R, nh, capacity, hs)`` buffer; rows ``0..n-1`` are the
    live ones, in the caller's row order, row b with ``lengths[b]`` keys at positions
    ``0..lengths[b]-1``. Rows ``n..R-1`` are free. Only :class:`OnnxBackend` methods change it."""

    store: list[np.ndarray] = field(default_factory=list)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n,)
    bound: _OrtState | None = None  # the live rows' views, bound for the next step (None: rebind)

    @property
    def rows(self) -> int:
        """Live rows (n)."""
        return len(self.lengths)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows allocated R, keys per row) of the store; (0, 0) before the first join."""
        if not self.store:
            return 0, 0
        return int(self.store[0].shape[0]), int(self.store[0].shape[2])

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.store)


# onnxruntime fusions every session of a bundle graph runs without. SkipLayerNormFusion would
# merge each residual Add with the LayerNormalization after it; its CPU kernel takes about 3x
# the time of the two at decode shapes (13 against 5 µs at 8 rows x 256): without it a batch-8
# decode step is 9-11% faster for int8 and 2-5% for fp32 (small model, one thread).
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def open_session(model: bytes | str, options: Any) -> Any:
    """An onnxruntime CPU session of a bundle graph (bytes or a path) with ``options``
    (:func:`_session_options`), without the :data:`DISABLED_OPTIMIZERS`."""
    import onnxruntime as ort

    return ort.InferenceSession(
        model,
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=DISABLED_OPTIMIZERS,
    )


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
    # A decode step is ~60 short kernels; spinning worker threads pick each one up at once
    # (1.46 vs 2.08 ms per small-model step on 2 cores). On a machine shared with other busy
    # processes spinning steals their cores: GPTMED_ORT_SPIN=0 turns it off.
    if os.environ.get("GPTMED_ORT_SPIN", "1") == "0":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def _right_aligned(
    input_ids: np.ndarray, attention_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded (or any) ``(B, T)`` ids + 0/1 mask -> (ids with each row's real tokens first,
    lengths (B,), the gather order that did it)."""
    real = attention_mask != 0
    order = np.argsort(~real, axis=1, kind="stable")  # (B, T): real positions first, in order
    ids = np.take_along_axis(np.asarray(input_ids, dtype=np.int64), order, axis=1)
    return np.ascontiguousarray(ids), real.sum(axis=1).astype(np.int64), order


class OnnxBackend:
    """An onnxruntime session over a verified bundle graph (thread-safe: state lives per call).

    The graph (:mod:`gptmed.inference.export.graph`) keeps each row's keys at cache positions
    ``0..len-1`` (right padding) and appends in place, so the backend binds one buffer per layer
    as both past and present: the KV cache is never copied, not even inside the graph.
    Callers may still pass left-padded batches; rows are realigned here and logits mapped back.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        self.config = bundle.manifest.model_config
        try:
            self.session = open_session(bundle.model_bytes, _session_options(threads))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(
                f"onnxruntime cannot load {bundle.model_file}: {str(exc).splitlines()[0][:200]}",
                where=str(bundle.model_path),
                hint=f"this is onnxruntime {ort.__version__} (gptmed-infer needs >= 1.18: pip install -U onnxruntime); "
                "if it is, re-export the bundle",
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
        self._past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self._present_names = [n for n in outputs if n.startswith("present.")]

    # ------------------------------------------------------------------------------ the cache
    def _new_state(self, lengths: np.ndarray, capacity: int) -> _OrtState:
        """A fresh cache for rows that will hold ``lengths`` keys after the first run."""
        cfg = self.config
        shape = (len(lengths), cfg.n_heads, capacity, kv_head_dim(cfg))  # (B, nh, capacity, hs padded to 16)
        buffers = [np.zeros(shape, dtype=np.float32) for _ in self._past_names]
        state = _OrtState(self.session.io_binding(), buffers, lengths)
        self._bind_cache(state)
        return state

    def _bind_cache(self, state: _OrtState) -> None:
        import onnxruntime as ort

        binding = state.binding
        state.logits, state.keep = None, -1  # bound by the next run
        for past, present, buf in zip(self._past_names, self._present_names, state.buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buf)  # a view of buf, not a copy
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)

    def _grow(self, state: _OrtState, needed: int) -> None:
        """Reallocate the cache for ``needed`` keys (doubling, up to the context); copies once."""
        capacity = min(max(needed, 2 * state.capacity), self.config.max_seq_len)
        old = state.buffers
        state.buffers = [np.zeros((*b.shape[:2], capacity, b.shape[3]), dtype=np.float32) for b in old]
        for new, prev in zip(state.buffers, old, strict=True):
            new[:, :, : prev.shape[2]] = prev
        state.binding = self.session.io_binding()
        self._bind_cache(state)

    def _run(
        self, state: _OrtState, input_ids: np.ndarray, position_ids: np.ndarray, total: int, keep: int = 0
    ) -> np.ndarray:
        """One graph run over ``input_ids`` (B, T) with rows holding ``state.lengths`` keys after it;
        logits for the last ``keep`` positions (0: all T).

        The logits land in a numpy array bound as the output (no OrtValue round trip); the
        returned array is that buffer, valid until the next run on ``state``."""
        binding = state.binding
        batch, width = input_ids.shape
        keys = np.arange(total) < state.lengths[:, None]  # (B, total): the graph uses only row sums
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("position_ids", position_ids)
        binding.bind_cpu_input("attention_mask", keys.astype(np.int64))
        if keep != state.keep:
            binding.bind_cpu_input("num_logits_to_keep", np.array([keep], dtype=np.int64))
            state.keep = keep
        kept = min(keep, width) or width
        if state.logits is None or state.logits.shape[1] != kept:
            state.logits = np.empty((batch, kept, self.config.vocab_size), dtype=np.float32)  # (B, T', V)
            shape = list(state.logits.shape)
            binding.bind_output("logits", "cpu", 0, np.float32, shape, state.logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        return state.logits

    def _first_run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int, last_only: bool
    ) -> tuple[np.ndarray, _OrtState, np.ndarray]:
        """A whole (left-padded or any) batch on an empty cache: (logits (B, T', V), the state, the
        gather order that right-aligned the rows). Row b's tokens sit at 0..len-1; the logits cover
        every position, or with ``last_only`` the last T' = T - min(len) + 1, which hold every
        row's last token."""
        ids, lengths, order = _right_aligned(input_ids, attention_mask)
        batch, width = ids.shape
        state = self._new_state(lengths, capacity)
        pos = np.ascontiguousarray(np.broadcast_to(np.arange(width, dtype=np.int64), (batch, width)))
        keep = width - max(int(lengths.min()), 1) + 1 if last_only else 0
        return self._run(state, ids, pos, width, keep), state, order

    # ------------------------------------------------------------------------------ the protocol
    def prefill(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int | None = None
    ) -> tuple[np.ndarray, _OrtState]:
        """``capacity``: keys per row the cache should hold without growing (prompt + new tokens);
        default the model's context."""
        width, context = input_ids.shape[1], self.config.max_seq_len
        capacity = min(max(capacity or context, width), context)
        logits, state, _ = self._first_run(input_ids, attention_mask, capacity, last_only=True)
        last = np.maximum(state.lengths - 1, 0) - (width - logits.shape[1])  # within the kept positions
        return logits[np.arange(len(last)), last, :], state  # indexing copies out of the buffer

    def decode(self, state: _OrtState, tokens: np.ndarray) -> np.ndarray:
        batch = tokens.shape[0]
        pos = state.lengths.reshape(batch, 1).copy()  # the new token's position = keys so far
        needed = int(state.lengths.max()) + 1
        if needed > state.capacity:
            if needed > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {needed} tokens exceeds the model's context of {self.config.max_seq_len}"
                )
            self._grow(state, needed)
        state.lengths = state.lengths + 1
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(batch, 1)
        return self._run(state, ids, pos, needed, keep=1)[:, -1, :].copy()

    # ------------------------------------------------------------------------------ continuous batching
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one key position of one row takes (every layer, keys and values)."""
        return len(self._past_names) * self.config.n_heads * kv_head_dim(self.config) * 4

    def extend(self, state: _OrtState, input_ids: np.ndarray) -> np.ndarray:
        """``input_ids`` (B, T): T more tokens after every row of ``state`` (the next chunk of a
        prompt whose first chunk went through :meth:`prefill`) -> logits (B, V) of each row's
        last new token. A prompt prefilled in chunks gets the same cache and logits as in one run."""
        width = input_ids.shape[1]
        past = state.lengths
        total = int(past.max()) + width
        if total > state.capacity:
            if total > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {total} tokens exceeds the model's context of {self.config.max_seq_len}"
                )
            self._grow(state, total)
        pos = past[:, None] + np.arange(width, dtype=np.int64)  # (B, T): positions after each row's keys
        state.lengths = past + width
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        return self._run(state, ids, pos, total, keep=1)[:, -1, :].copy()

    def reserve(self, live: LiveBatch, rows: int, capacity: int) -> None:
        """Make ``live``'s store hold at least ``rows`` rows of ``capacity`` keys (it grows, and
        copies the live rows once, only when it is smaller). A new ``LiveBatch()`` frees it all."""
        have_rows, have_keys = live.shape
        if rows <= have_rows and capacity <= have_keys:
            return
        rows, capacity = max(rows, have_rows), min(max(capacity, have_keys), self.config.max_seq_len)
        shape = (rows, self.config.n_heads, capacity, kv_head_dim(self.config))  # (R, nh, capacity, hs)
        store = [np.zeros(shape, dtype=np.float32) for _ in self._past_names]
        n = live.rows
        for new, old in zip(store, live.store, strict=True) if n else ():
            new[:n, :, :have_keys] = old[:n]  # the live rows' keys; the rest is free
        live.store, live.bound = store, None

    def join(self, live: LiveBatch, state: _OrtState, rows: Sequence[int]) -> None:
        """Append rows ``rows`` of ``state`` (a finished prefill) after ``live``'s rows, in that
        order; the store must have room (:meth:`reserve`)."""
        n, have_rows = live.rows, live.shape[0]
        lengths = state.lengths[np.asarray(rows, dtype=np.int64)]
        if n + len(lengths) > have_rows or int(lengths.max(initial=0)) > live.shape[1]:
            raise ValueError(
                f"the live batch has room for {have_rows} rows of {live.shape[1]} keys; "
                f"{n} + {len(lengths)} rows of up to {int(lengths.max(initial=0))} keys do not fit (reserve first)"
            )
        for dst, src in zip(live.store, state.buffers, strict=True):
            for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
                dst[n + i, :, :length] = src[row, :, :length]
        live.lengths = np.concatenate([live.lengths, lengths])
        live.bound = None

    def step(self, live: LiveBatch, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (n,): one more token per live row -> logits (n, V). Grows the store when a
        row would outrun it (the scheduler reserves enough, so this should not happen)."""
        n = live.rows
        if len(tokens) != n:
            raise ValueError(f"{len(tokens)} tokens for {n} live rows")
        needed = int(live.lengths.max()) + 1
        if needed > live.shape[1]:
            self.reserve(live, live.shape[0], needed)
        if live.bound is None:
            views = [buf[:n] for buf in live.store]  # contiguous: rows are the leading axis
            live.bound = _OrtState(self.session.io_binding(), views, live.lengths)
            self._bind_cache(live.bound)
        live.bound.lengths = live.lengths
        logits = self.decode(live.bound, tokens)
        live.lengths = live.bound.lengths
        return logits

    def keep(self, live: LiveBatch, rows: np.ndarray) -> None:
        """Keep the live rows ``rows`` (indices, in their new order) and drop the others; only
        rows that change place are copied."""
        rows = np.asarray(rows, dtype=np.int64)
        moved = np.flatnonzero(rows != np.arange(len(rows)))
        for buf in live.store if len(moved) else ():
            buf[moved] = buf[rows[moved]]  # the right side is a copy: overlapping moves are safe
        live.lengths = live.lengths[rows]
        live.bound = None

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits at every position, in the caller's (e.g. left-padded) layout; padding positions get 0."""
        batch, width = input_ids.shape
        aligned, state, order = self._first_run(input_ids, attention_mask, width, last_only=False)
        lengths = state.lengths
        if int(lengths.min()) == width:  # no padding: the layouts agree (the buffer is ours alone)
            return aligned
        out = np.zeros_like(aligned)
        real = np.arange(width) < lengths[:, None]  # (B, T) in the aligned layout
        rows = np.broadcast_to(np.arange(batch)[:, None], (batch, width))
        out[rows[real], order[real]] = aligned[real]
        return out
