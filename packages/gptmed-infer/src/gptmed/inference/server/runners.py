"""The model side of the scheduler: prefill, one decode step for the running rows, rows leaving.

:class:`BatchedRunner` decodes every running row in one graph run (continuous batching on a
:class:`~gptmed.inference.backends.BatchingBackend`: onnxruntime bundles). :class:`SerialRunner`
serves any other backend (a ``.pt`` checkpoint on torch): each row keeps its own cache and a
step decodes the rows one after another, so requests take turns token by token.

Shapes: ``n`` running rows, ``k`` prompts prefilled together, ``V`` the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from gptmed.inference.backends import Backend, BatchingBackend, LiveBatch

__all__ = ["BatchedRunner", "Runner", "SerialRunner", "make_runner"]


class Runner(Protocol):
    chunked: bool  # whether a long prompt may be prefilled in chunks (extend)
    concurrent: bool  # whether runners of one backend may each run on their own thread
    bytes_per_token: int  # KV cache bytes of one key position of one row

    @property
    def rows(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int]: ...

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[np.ndarray, Any]: ...

    def extend(self, handle: Any, ids: Sequence[int]) -> np.ndarray: ...

    def reserve(self, rows: int, capacity: int) -> None: ...

    def join(self, handle: Any, rows: Sequence[int]) -> None: ...

    def step(self, tokens: np.ndarray) -> np.ndarray: ...

    def keep(self, rows: np.ndarray) -> None: ...

    def reset(self) -> None: ...


def _right_padded(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids (k, T), mask (k, T)) with each prompt first and padding after it."""
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = p
        mask[row, : len(p)] = 1
    return ids, mask


class BatchedRunner:
    """Continuous batching: the running rows live in one :class:`LiveBatch`; a prefill runs on
    its own small cache and its rows join the batch after it."""

    chunked = True
    concurrent = True  # one onnxruntime session runs several io-bindings at once

    def __init__(self, backend: BatchingBackend) -> None:
        self.backend = backend
        self.live = LiveBatch()
        self.bytes_per_token = backend.kv_bytes_per_token()

    @property
    def rows(self) -> int:
        return self.live.rows

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, keys per row) the KV store holds now."""
        return self.live.shape

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[np.ndarray, Any]:
        """``prompts`` (k of them) on a fresh cache of ``capacity`` keys per row -> (logits (k, V)
        of each prompt's last token, the cache)."""
        ids, mask = _right_padded(prompts)
        return self.backend.prefill(ids, mask, capacity=capacity)

    def extend(self, handle: Any, ids: Sequence[int]) -> np.ndarray:
        """The next chunk ``ids`` of the single prompt in ``handle`` -> logits (1, V)."""
        return self.backend.extend(handle, np.asarray([ids], dtype=np.int64))

    def reserve(self, rows: int, capacity: int) -> None:
        self.backend.reserve(self.live, rows, capacity)

    def join(self, handle: Any, rows: Sequence[int]) -> None:
        """Rows ``rows`` of a finished prefill become running rows (appended, in that order)."""
        self.backend.join(self.live, handle, rows)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (n,) -> logits (n, V): one decode step of every running row."""
        return self.backend.step(self.live, tokens)

    def keep(self, rows: np.ndarray) -> None:
        self.backend.keep(self.live, rows)

    def reset(self) -> None:
        """Drop every row and free the KV store."""
        self.live = LiveBatch()


class SerialRunner:
    """Any :class:`~gptmed.inference.backends.Backend`: one cache per row, rows decoded in turn."""

    chunked = False
    concurrent = False  # a torch model on several threads gains nothing: one worker

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        cfg = backend.config
        self.bytes_per_token = 2 * cfg.n_layers * cfg.d_model * 4  # keys and values, float32
        self.states: list[Any] = []

    @property
    def rows(self) -> int:
        return len(self.states)

    @property
    def shape(self) -> tuple[int, int]:
        return 0, 0  # no shared store: each row's cache grows with it

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[np.ndarray, Any]:
        logits, states = [], []
        for p in prompts:  # each alone: its cache must be its own
            ids = np.asarray([p], dtype=np.int64)
            row_logits, state = self.backend.prefill(ids, np.ones_like(ids), capacity=capacity)
            logits.append(row_logits)
            states.append(state)
        return np.concatenate(logits), states

    def extend(self, handle: Any, ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError("the serial runner prefills whole prompts")

    def reserve(self, rows: int, capacity: int) -> None:
        pass

    def join(self, handle: Any, rows: Sequence[int]) -> None:
        self.states += [handle[r] for r in rows]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self.backend.decode(state, tokens[r : r + 1]) for r, state in enumerate(self.states)]
        )

    def keep(self, rows: np.ndarray) -> None:
        self.states = [self.states[int(r)] for r in rows]

    def reset(self) -> None:
        self.states = []


def make_runner(backend: Any) -> Runner:
    """The batched runner when ``backend`` supports it, else the serial one."""
    if isinstance(backend, BatchingBackend):
        return BatchedRunner(backend)
    return SerialRunner(backend)
