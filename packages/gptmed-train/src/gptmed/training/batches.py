"""From memory-mapped token rows to the tensors one forward takes, on the host.

A step's rows are cut into micro-batches (``--grad-accum``) and each into one slice per process
(DDP). For each slice the host (numpy) computes everything the model needs, so the step itself
never waits on the device to find out the layout:

* targets: the next token, ``-100`` where the loss mask (or padding) says ignore;
* segments: every packed Q&A pair is its own segment (it starts at its ``<bos>``), so no pair
  attends to the pair before it, and position ids restart at 0 at each pair, exactly as the pair
  is asked at generation time (a row that starts inside an over-long pair's window counts from
  the row start);
* the layout, one of two:

  ``rows``  ``(B, T)`` as stored. With ``mark_padding`` the trailing padding of a row gets
            segment -1, so the model's CPU per-run path can drop it (unless a padding position
            has a real target: then the row keeps its padding as tokens).
  ``flat``  padding-free: the real tokens of the slice's rows, one after the other, as ONE row
            ``(1, N)`` with increasing segment ids; ``N`` is rounded up to a multiple of
            ``bucket`` with padding tokens (segment -1, target -100) so that compiled models see
            few shapes. The GPU then spends nothing on padding.

:class:`BatchLoader` can build the next step's batches on a background thread, in pinned memory,
while the device works (``prefetch``); the main thread only issues the non-blocking copies.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from gptmed.training.data import IGNORE_INDEX, TokenSplit

__all__ = [
    "Batch",
    "BatchLoader",
    "Layout",
    "StepBatches",
    "StepRows",
    "epoch_order",
    "flat_layout",
    "pair_layout",
    "rows_layout",
]

Layout = Literal["rows", "flat"]
StepRows = tuple[np.ndarray, list[np.ndarray]]  # a step's rows (all ranks), this rank's micro-batch slices
StepBatches = tuple[int, list["Batch"]]  # the step's target count (all ranks), this rank's batches


@dataclass(frozen=True)
class Batch:
    """One forward's inputs (on the host or the device) and the counts the step needs."""

    input_ids: torch.Tensor  # (B, T) rows or (1, N) flat, int64
    targets: torch.Tensor  # same shape, int64, -100 = ignored
    position_ids: torch.Tensor  # same shape, int64
    segment_ids: torch.Tensor | None  # same shape, int64, -1 = padding; None = one pair per row from 0
    n_targets: int  # targets that count for the loss
    n_tokens: int  # real (non-padding) input tokens
    n_slots: int  # row slots, padding included (B * T of the stored rows)

    @classmethod
    def from_layout(
        cls,
        arrays: dict[str, np.ndarray | None],
        *,
        n_targets: int,
        n_tokens: int,
        n_slots: int,
        pin: bool = False,
    ) -> Batch:
        """A batch of the numpy arrays :func:`rows_layout` / :func:`flat_layout` return (pinned with ``pin``)."""

        def tensor(array: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
            return t.pin_memory() if pin else t

        segments = arrays["segment_ids"]
        return cls(
            input_ids=tensor(arrays["input_ids"]),  # type: ignore[arg-type]
            targets=tensor(arrays["targets"]),  # type: ignore[arg-type]
            position_ids=tensor(arrays["position_ids"]),  # type: ignore[arg-type]
            segment_ids=None if segments is None else tensor(segments),
            n_targets=n_targets,
            n_tokens=n_tokens,
            n_slots=n_slots,
        )

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device``; from pinned memory the copies do not block the host."""
        if self.input_ids.device == device:
            return self
        non_blocking = self.input_ids.is_pinned()

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        segments = None if self.segment_ids is None else move(self.segment_ids)
        return replace(
            self,
            input_ids=move(self.input_ids),
            targets=move(self.targets),
            position_ids=move(self.position_ids),
            segment_ids=segments,
        )


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order epoch ``epoch`` visits ``n`` rows in (the same on every process and on resume)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).numpy()


def pair_layout(x: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and restarting position ids of packed rows ``x`` (B, T): a segment starts at each
    BOS (and at the row start); ids count BOSes from the row start, so a row that starts inside a
    pair has segment 0 before its first BOS."""
    is_bos = x == bos_id
    segments = np.cumsum(is_bos, axis=1, dtype=np.int64)  # (B, T)
    idx = np.broadcast_to(np.arange(x.shape[1], dtype=np.int64), x.shape)
    starts = np.maximum.accumulate(np.where(is_bos, idx, 0), axis=1)
    return segments, idx - starts


def _trailing_padding(x: np.ndarray, y: np.ndarray, pad_id: int) -> np.ndarray:
    """(B, T) bool: the padding at the end of each row, for rows whose padding has no real target
    (a loss mask that covers padding keeps its padding as tokens)."""
    trailing = np.flip(np.cumprod(np.flip(x == pad_id, axis=1), axis=1), axis=1).astype(bool)
    covered = (trailing & (y != IGNORE_INDEX)).any(axis=1)
    trailing[covered] = False
    return trailing


def rows_layout(
    x: np.ndarray, y: np.ndarray, bos_id: int, pad_id: int | None
) -> dict[str, np.ndarray | None]:
    segments, positions = pair_layout(x, bos_id)
    if pad_id is not None:
        segments = np.where(_trailing_padding(x, y, pad_id), -1, segments)
    several = bool((segments != segments[:, :1]).any())  # several pairs in a row, or padding
    return {
        "input_ids": x,
        "targets": y,
        "position_ids": positions,
        "segment_ids": segments if several else None,
    }


def flat_layout(
    x: np.ndarray, y: np.ndarray, bos_id: int, pad_id: int, bucket: int
) -> dict[str, np.ndarray | None]:
    keep = ~_trailing_padding(x, y, pad_id)  # (B, T)
    _, positions = pair_layout(x, bos_id)
    starts = x == bos_id
    starts[:, 0] = True  # every row starts a segment: rows never share one
    n = int(keep.sum())
    size = max(bucket, -(-n // bucket) * bucket)
    ids = np.full(size, pad_id, dtype=np.int64)
    targets = np.full(size, IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros(size, dtype=np.int64)
    segs = np.full(size, -1, dtype=np.int64)
    ids[:n], targets[:n], pos[:n] = x[keep], y[keep], positions[keep]
    segs[:n] = np.cumsum(starts[keep], dtype=np.int64)  # 1, 1, ..., 2, ...: increasing along the row
    return {
        "input_ids": ids[None],
        "targets": targets[None],
        "position_ids": pos[None],
        "segment_ids": segs[None],
    }


class BatchLoader:
    """Builds :class:`Batch` es of one split's rows (see the module docstring for the layouts)."""

    def __init__(
        self,
        split: TokenSplit,
        *,
        loss_on: str,
        bos_id: int,
        pad_id: int,
        layout: Layout = "rows",
        mark_padding: bool = False,
        bucket: int = 256,
        pin: bool = False,
    ) -> None:
        self.split = split
        self.loss_on = loss_on
        self.bos_id, self.pad_id = bos_id, pad_id
        self.layout = layout
        self.mark_padding = mark_padding
        self.bucket = bucket
        self.pin = pin

    def make(self, rows: np.ndarray) -> Batch:
        """The batch of ``rows`` (indices into the split), on the host."""
        x, y = self.split.arrays(rows, self.loss_on)  # (B, T) each, int64
        n_targets = int(np.count_nonzero(y != IGNORE_INDEX))
        if n_targets == 0:
            # No target in this slice: give the forward one dummy target so every loss path stays
            # finite; the step weighs this slice by its real target count (0), so it adds nothing
            # (and DDP still runs its backward).
            y = y.copy()
            y.flat[0] = 0
        n_tokens = int(np.count_nonzero(x != self.pad_id))
        if self.layout == "flat":
            arrays = flat_layout(x, y, self.bos_id, self.pad_id, self.bucket)
        else:
            arrays = rows_layout(x, y, self.bos_id, self.pad_id if self.mark_padding else None)
        return Batch.from_layout(
            arrays, n_targets=n_targets, n_tokens=n_tokens, n_slots=int(x.size), pin=self.pin
        )

    def steps(
        self, groups: Iterable[StepRows], device: torch.device, *, prefetch: bool
    ) -> Generator[StepBatches, None, None]:
        """For each step's rows (all ranks') and this rank's micro-batch slices of them: the step's
        target count (all ranks) and the slices' batches on ``device``.

        With ``prefetch`` a background thread builds the next step while the caller runs this one;
        close the generator (``contextlib.closing``) to stop it early."""
        host = (self._host_step(rows, slices) for rows, slices in groups)
        ahead = _Prefetch(host) if prefetch else None
        try:
            for n_targets, batches in ahead if ahead is not None else host:
                yield n_targets, [batch.to(device) for batch in batches]
        finally:
            if ahead is not None:
                ahead.close()

    def _host_step(self, rows: np.ndarray, slices: list[np.ndarray]) -> StepBatches:
        return self.split.target_count(rows, self.loss_on), [self.make(s) for s in slices]


class _Prefetch:
    """Runs a producer iterator on a daemon thread, one item ahead of the consumer."""

    _DONE = object()

    def __init__(self, items: Iterator[StepBatches]) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="gptmed-batches", daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[StepBatches]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[StepBatches]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
