"""Host-side batches: layouts, the prefetch thread, step numbers read back late (the CUDA way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gptmed.training import NonFiniteLossError, load_checkpoint, train_model
from gptmed.training import stats as stats_module
from gptmed.training import trainer as tr
from gptmed.training.batches import BatchLoader
from gptmed.training.data import load_dataset
from gptmed.training.stats import DeferredStats
from train_helpers import tiny_config, train_losses


def _loader(dataset: Path, **kw: Any) -> BatchLoader:
    ds = load_dataset(dataset, dataset.with_name("val.npy"), loss_on="answer")
    ids = ds.manifest.special_ids
    return BatchLoader(ds.train, loss_on="answer", bos_id=ids.bos, pad_id=ids.pad, **kw)


def test_prefetched_steps_are_the_same_batches(dataset: Path) -> None:
    loader = _loader(dataset, layout="flat", bucket=16)
    groups = [
        (np.arange(8 * i, 8 * i + 8), [np.arange(8 * i, 8 * i + 4), np.arange(8 * i + 4, 8 * i + 8)])
        for i in range(4)
    ]
    plain = list(loader.steps(groups, torch.device("cpu"), prefetch=False))
    ahead = list(loader.steps(groups, torch.device("cpu"), prefetch=True))
    assert [n for n, _ in plain] == [n for n, _ in ahead]
    for (_, a), (_, b) in zip(plain, ahead, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.segment_ids, y.segment_ids)
            assert x.input_ids.shape[1] % 16 == 0 and x.n_tokens <= x.input_ids.shape[1]


def test_a_failing_producer_raises_in_the_consumer_and_the_thread_ends(dataset: Path) -> None:
    loader = _loader(dataset)
    groups = [(np.arange(4), [np.arange(4)]), (np.array([10**6]), [np.array([10**6])])]  # row out of range
    steps = loader.steps(groups, torch.device("cpu"), prefetch=True)
    next(steps)
    with pytest.raises(IndexError):
        next(steps)
    endless = loader.steps(
        ((np.arange(4), [np.arange(4)]) for _ in iter(int, 1)), torch.device("cpu"), prefetch=True
    )
    next(endless)
    endless.close()  # stops the producer thread
    import threading

    assert not [t for t in threading.enumerate() if t.name == "gptmed-batches" and t.is_alive()]


def test_deferred_stats_are_read_lag_steps_late() -> None:
    stats = DeferredStats(torch.device("cpu"), lag=1)
    stats.push(1, torch.tensor([1.0, 2.0]), {"a": 1})
    assert list(stats.ready()) == []  # step 1 waits for step 2
    stats.push(2, torch.tensor([3.0, 4.0]), {"a": 2})
    ready = list(stats.ready())
    assert [(r.step, r.values, r.info) for r in ready] == [(1, [1.0, 2.0], {"a": 1})]
    assert [r.step for r in stats.drain()] == [2] and len(stats) == 0


def test_a_nonfinite_step_read_late_still_stops_before_any_later_save(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA the host reads a step's loss one step late. With that lag forced on the CPU: a NaN
    at step 5 is skipped on the device, the run stops naming step 5, and the save due at step 6
    never happens (saving first drains every pending step)."""
    real_init = DeferredStats.__init__
    monkeypatch.setattr(
        stats_module.DeferredStats, "__init__", lambda self, device, lag: real_init(self, device, lag=1)
    )
    calls = {"n": 0}
    real = tr.forward_loss

    def poisoned(model: Any, batch: Any, dtype: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(model, batch, dtype)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(tr, "forward_loss", poisoned)
    ckpt = tmp_path / "ck"
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 5") as info:
        train_model(tiny_config(dataset, ckpt, save_every=2, dropout=0.0))
    assert info.value.step == 5
    assert sorted(load_checkpoint(p)["step"] for p in ckpt.glob("checkpoint_*.pt")) == [2, 4]
    assert max(train_losses(ckpt)) == 4


def test_padding_free_rows_train_like_padded_rows(dataset: Path, tmp_path: Path) -> None:
    """The flat layout (padding dropped on the host, one row per batch) takes the same steps."""
    rows = train_model(tiny_config(dataset, tmp_path / "rows", max_steps=4, dropout=0.0, padding_free=False))
    flat = train_model(tiny_config(dataset, tmp_path / "flat", max_steps=4, dropout=0.0, padding_free=True))
    assert flat.step_losses == pytest.approx(rows.step_losses, rel=1e-4)
    assert flat.useful_tokens_per_s > 0 and flat.tokens_per_s >= flat.useful_tokens_per_s
