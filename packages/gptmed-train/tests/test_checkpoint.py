"""Checkpoint files: atomic saves under faults, corrupt and malicious files, finding and pruning."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from gptmed.core import CheckpointError
from gptmed.training import checkpoint as ck
from gptmed.training import train_model
from train_helpers import tiny_config


@pytest.fixture(scope="module")
def real_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real checkpoint dict from a 2-step run."""
    from train_helpers import write_dataset

    root = tmp_path_factory.mktemp("state")
    data = write_dataset(root / "data")
    result = train_model(tiny_config(data, root / "ck", max_steps=2))
    assert result.last_checkpoint is not None
    return ck.load_checkpoint(result.last_checkpoint)


def test_checkpoint_has_every_contract_key_and_loads_weights_only(
    real_state: dict[str, Any], tmp_path: Path
) -> None:
    for key in ck.REQUIRED_KEYS:
        assert key in real_state
    assert real_state["step"] == 2 and real_state["epoch"] == 0 and real_state["position"] == 16
    assert isinstance(real_state["rng_state"]["torch"], torch.Tensor)
    man = real_state["manifest"]
    assert man["format"] == "gptmed.checkpoint"
    assert set(man["extra"]) >= {"tokenizer_path", "dataset_dir", "val_loss"}
    assert os.path.isabs(man["extra"]["dataset_dir"]) and man["tokenizer_sha256"] == "a" * 64
    assert man["data_fingerprint"] and man["versions"]["torch"] == torch.__version__
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in real_state["model_state_dict"])
    path = ck.save_checkpoint(tmp_path / "c.pt", real_state)
    again = torch.load(path, weights_only=True)  # plain torch, as the manual's example does
    assert torch.equal(
        again["model_state_dict"]["tok_emb.weight"], real_state["model_state_dict"]["tok_emb.weight"]
    )


def _partial_then(exc: BaseException):  # type: ignore[no-untyped-def]
    def fake(state: dict[str, Any], fh: IO[bytes]) -> None:
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise exc

    return fake


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("injected fault in the middle of torch.save"),
    ],
    ids=["enospc", "exception"],
)
def test_failed_save_leaves_previous_checkpoint_intact(
    real_state: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    path = ck.save_checkpoint(tmp_path / "checkpoint_epoch_1.pt", real_state)
    before = path.read_bytes()
    monkeypatch.setattr(ck, "_serialize", _partial_then(exc))
    with pytest.raises((CheckpointError, RuntimeError)) as info:
        ck.save_checkpoint(path, {**real_state, "step": 99})
    if isinstance(exc, OSError):
        assert "No space left on device" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before
    assert ck.load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # temp file cleaned up


def test_truncated_and_garbage_files_are_reported_corrupt(real_state: dict[str, Any], tmp_path: Path) -> None:
    good = ck.save_checkpoint(tmp_path / "good.pt", real_state)
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "garbage.pt": os.urandom(4096),
        "empty.pt": b"",
        "text.pt": b"hello, I am not a checkpoint\n",
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(CheckpointError) as err:
            ck.load_checkpoint(p)
        # one short diagnosis, not torch.load's page about weights_only or miniz internals
        assert str(err.value).startswith(f"{p} is not a checkpoint (truncated, or another kind of file); "), (
            err
        )
        assert "PyTorch" not in str(err.value) and "miniz" not in str(err.value)
    # a file passed by mistake is never called something to delete; a torn checkpoint file is
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train"}\n')
    with pytest.raises(CheckpointError, match="pass a checkpoint file") as err:
        ck.load_checkpoint(tmp_path / "metrics.jsonl")
    assert "delete" not in str(err.value)
    (tmp_path / "checkpoint_step_9.pt").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="delete it and resume from an earlier checkpoint"):
        ck.load_checkpoint(tmp_path / "checkpoint_step_9.pt")


def test_plain_dict_without_contract_keys_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(
        CheckpointError, match="is corrupt or not a gptmed-train checkpoint.*model_state_dict"
    ):
        ck.load_checkpoint(p)


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_reduce_object_is_refused(real_state: dict[str, Any], tmp_path: Path) -> None:
    p = tmp_path / "evil.pt"
    torch.save({**real_state, "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match=r"is unsafe: .*refused \(weights_only loading\)"):
        ck.load_checkpoint(p)


def test_find_latest_skips_corrupt_and_prune_keeps_newest(real_state: dict[str, Any], tmp_path: Path) -> None:
    for i, name in enumerate(["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "checkpoint_step_30.pt"]):
        ck.save_checkpoint(tmp_path / name, {**real_state, "step": i + 1})
        t = time.time() - 100 + i
        os.utime(tmp_path / name, (t, t))
    (tmp_path / "checkpoint_step_40.pt").write_bytes(b"torn")  # newest, but corrupt
    found = ck.find_latest_checkpoint(tmp_path)
    assert found is not None and found[0].name == "checkpoint_step_30.pt"
    (tmp_path / "checkpoint_step_40.pt").unlink()
    (tmp_path / "best_model.pt").write_bytes(b"x")
    removed = ck.prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["checkpoint_epoch_1.pt"]
    assert (tmp_path / "best_model.pt").exists()
    assert ck.find_latest_checkpoint(tmp_path / "missing") is None


def test_max_steps_with_save_every_still_evaluates_and_writes_best(tmp_path: Path) -> None:
    # The manual's Python example sets save_every=1: the step checkpoint written at the last
    # step must not stop the final evaluation that produces best_model.pt.
    from train_helpers import write_dataset

    data = write_dataset(tmp_path / "data")
    result = train_model(tiny_config(data, tmp_path / "ck", max_steps=2, save_every=1))
    assert result.stopped == "max_steps" and result.best_val_loss is not None
    assert (tmp_path / "ck" / "best_model.pt").exists()


def test_metrics_file_is_only_touched_by_the_first_row(tmp_path: Path) -> None:
    """A run stopped before its first row (Ctrl-C while the model was being built) left an empty
    metrics.jsonl, so the checkpoint folder it had made could not be removed, and a new run in an
    old folder wiped the earlier run's rows before training a step."""
    from gptmed.training.metrics import MetricsWriter, read_metrics

    run = tmp_path / "new"
    writer = MetricsWriter(run / "metrics.jsonl", keep_until_step=None)
    writer.close()
    assert not run.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"kind": "train", "step": 7}\n')
    MetricsWriter(old / "metrics.jsonl", keep_until_step=None).close()
    assert read_metrics(old / "metrics.jsonl") == [{"kind": "train", "step": 7}]
    writer = MetricsWriter(old / "metrics.jsonl", keep_until_step=None)
    writer.write({"kind": "train", "step": 1})
    writer.close()
    assert read_metrics(old / "metrics.jsonl") == [{"kind": "train", "step": 1}]
