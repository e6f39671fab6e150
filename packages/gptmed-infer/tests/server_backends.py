"""Slow backends for the server tests: the real onnxruntime backend (continuous batching
included) with a fixed delay per decode step, so that requests are still running when a test
acts on them. Importable by the tests and by their server subprocesses (sys.path)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np


class SerialSlowBackend:
    """``inner`` (an OnnxBackend) behind prefill/decode only (so the server serves it row by row,
    as a torch model), ``delay`` seconds slower per decode step; counts steps. With ``eos`` set,
    EOS never wins: every request generates all its max_tokens."""

    def __init__(self, inner: Any, delay: float = 0.025, eos: int | None = None) -> None:
        self.inner, self.config, self.name = inner, inner.config, "slow-onnxruntime"
        self.delay, self.eos = delay, eos
        self.steps = 0
        self.widths: list[int] = []  # rows decoded by each batched step
        self.threads: dict[str, list[int]] = {}  # thread name -> rows of each step it ran

    def _out(self, logits: np.ndarray) -> np.ndarray:
        if self.eos is None:
            return logits
        logits = logits.copy()
        logits[:, self.eos] = -1e9
        return logits

    def prefill(
        self, ids: np.ndarray, mask: np.ndarray, capacity: int | None = None
    ) -> tuple[np.ndarray, Any]:
        logits, state = self.inner.prefill(ids, mask, capacity)
        return self._out(logits), state

    def decode(self, state: Any, tokens: np.ndarray) -> np.ndarray:
        self.steps += 1
        time.sleep(self.delay)
        return self._out(self.inner.decode(state, tokens))

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.inner.forward(ids, mask)  # type: ignore[no-any-return]


class SlowBackend(SerialSlowBackend):
    """The same with continuous batching (gptmed.inference.backends.BatchingBackend); records the
    rows of each batched step."""

    def extend(self, state: Any, ids: np.ndarray) -> np.ndarray:
        return self._out(self.inner.extend(state, ids))

    def kv_bytes_per_token(self) -> int:
        return self.inner.kv_bytes_per_token()  # type: ignore[no-any-return]

    def reserve(self, live: Any, rows: int, capacity: int) -> None:
        self.inner.reserve(live, rows, capacity)

    def join(self, live: Any, state: Any, rows: Any) -> None:
        self.inner.join(live, state, rows)

    def step(self, live: Any, tokens: np.ndarray) -> np.ndarray:
        self.steps += 1
        self.widths.append(len(tokens))
        self.threads.setdefault(threading.current_thread().name, []).append(len(tokens))
        time.sleep(self.delay)
        return self._out(self.inner.step(live, tokens))

    def keep(self, live: Any, rows: np.ndarray) -> None:
        self.inner.keep(live, rows)
