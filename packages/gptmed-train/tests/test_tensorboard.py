"""`--tensorboard`: the events a run writes are readable by TensorBoard and hold metrics.jsonl's
values; without the extra, one line naming it. The `tests(pkg='train')` nox session installs the
[tensorboard] extra, so the events test runs in CI."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
from gptmed.core import DataError
from gptmed.training import train_model
from train_helpers import tiny_config


def test_tensorboard_events_are_written_and_readable(dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorboard", reason='needs the [tensorboard] extra (pip install "gptmed-train[tensorboard]")'
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ck = tmp_path / "ck"
    train_model(tiny_config(dataset, ck, max_steps=3, eval_every=2, tensorboard=True))
    rows = [json.loads(line) for line in (ck / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(ck / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_loss"} <= set(
        events.Tags()["scalars"]
    )
    for kind, key in (("train", "loss"), ("train", "lr"), ("eval", "val_loss")):
        expected = [(r["step"], r[key]) for r in rows if r["kind"] == kind]
        got = [(e.step, e.value) for e in events.Scalars(f"{kind}/{key}")]
        assert [s for s, _ in got] == [s for s, _ in expected] and expected, (kind, key, got, expected)
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), (kind, key)


def test_without_the_extra_tensorboard_is_a_one_line_error(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch.utils.tensorboard" or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(
        DataError, match=r"TensorBoard logging needs the tensorboard package.*gptmed-train\[tensorboard\]"
    ):
        train_model(tiny_config(dataset, tmp_path / "ck", max_steps=2, tensorboard=True))
