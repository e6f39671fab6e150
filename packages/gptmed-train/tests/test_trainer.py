"""The loop in-process: what it trains on, what it writes, and how it refuses bad runs."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch
from gptmed.core import CheckpointError, ConfigError, DataError, ModelConfig
from gptmed.model import GPTTransformer
from gptmed.training import (
    NonFiniteLossError,
    TrainingError,
    load_checkpoint,
    train_model,
)
from gptmed.training import checkpoint as ck
from gptmed.training import trainer as tr
from gptmed.training.batches import Batch, epoch_order, pair_layout, rows_layout
from gptmed.training.data import load_dataset
from gptmed.training.lock import FolderLock
from train_helpers import tiny_config, train_losses, write_dataset


def test_run_writes_epoch_checkpoints_best_and_metrics(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    result = train_model(tiny_config(dataset, ckpt, num_epochs=3, keep_last=2, eval_every=4))
    assert result.stopped == "completed" and result.steps == 18 and result.epoch == 3  # 48 rows / 8
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == [  # no .lock: the run removed it when it ended
        "best_model.pt",
        "checkpoint_epoch_2.pt",
        "checkpoint_epoch_3.pt",
        "metrics.jsonl",
    ]
    rows = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 19))
    assert set(train_rows[0]) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"}
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 6, 8, 12, 16, 18]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.2  # it learns
    best = load_checkpoint(ckpt / "best_model.pt")
    assert best["manifest"]["extra"]["val_loss"] == pytest.approx(min(r["val_loss"] for r in evals))
    assert result.best_val_loss == pytest.approx(best["manifest"]["extra"]["val_loss"])
    last = load_checkpoint(ckpt / "checkpoint_epoch_3.pt")
    assert (last["step"], last["epoch"], last["position"]) == (18, 3, 0)
    # the manual's inference snippet: build the model from the config, load model_state_dict
    model = GPTTransformer(ModelConfig.from_dict(last["model_config"]))
    model.load_state_dict(torch.load(ckpt / "best_model.pt", weights_only=True)["model_state_dict"])


@pytest.mark.parametrize("plan", [None, "runs"])
def test_first_step_loss_is_the_answer_only_loss(
    dataset: Path, tmp_path: Path, plan: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 1's logged loss equals a hand-computed answer-masked cross-entropy of the same rows
    (computed with one mask), also when the trainer's forward takes the per-run path (padding
    dropped: the tiny model would pick the mask by itself)."""
    import gptmed.model.architecture as arch

    asked: list[int] = []
    if plan is not None:
        monkeypatch.setattr(arch, "plan_segments", lambda *_a: asked.append(1) or plan)
    cfg = tiny_config(dataset, tmp_path / "ck", max_steps=1, dropout=0.0)
    result = train_model(cfg)
    assert bool(asked) == (plan is not None)  # the forced plan was really consulted
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg.train_data_path, cfg.val_data_path, loss_on="answer")
    model = GPTTransformer(tr.build_model_config(cfg, ds))
    rows = epoch_order(cfg.seed, 0, len(ds.train))[:8]
    tokens = torch.from_numpy(np.load(dataset)[np.sort(rows)].astype(np.int64))
    mask = torch.from_numpy(np.load(dataset.with_name("train.mask.npy"))[np.sort(rows)])
    x = tokens[:, :-1]
    segments, positions = (torch.from_numpy(a) for a in pair_layout(x.numpy(), ds.manifest.special_ids.bos))
    monkeypatch.undo()  # the reference: the mask path
    with torch.no_grad():
        logits = model(x, segment_ids=segments, position_ids=positions)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), reduction="none"
    )
    m = mask[:, 1:].reshape(-1).float()
    expect = float((ce * m).sum() / m.sum())
    assert result.step_losses[0] == pytest.approx(expect, rel=1e-5)
    all_loss = float(ce[tokens[:, 1:].reshape(-1) != 0].mean())
    if plan is not None:
        monkeypatch.setattr(arch, "plan_segments", lambda *_a: plan)
    other = train_model(cfg.replace(loss_on="all", checkpoint_dir=str(tmp_path / "ck2")))
    assert other.step_losses[0] == pytest.approx(all_loss, rel=1e-5)


def test_grad_accumulation_equals_the_big_batch(dataset: Path, tmp_path: Path) -> None:
    a = train_model(tiny_config(dataset, tmp_path / "a", max_steps=4, dropout=0.0, batch_size=8))
    b = train_model(
        tiny_config(dataset, tmp_path / "b", max_steps=4, dropout=0.0, batch_size=4, grad_accum=2)
    )
    assert a.step_losses == pytest.approx(b.step_losses, rel=1e-5)


def test_nan_loss_stops_before_the_step_and_saves_nothing(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "ck"
    calls = {"n": 0}
    real = tr.forward_loss

    def poisoned(model: Any, batch: Any, dtype: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(model, batch, dtype)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(tr, "forward_loss", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        train_model(tiny_config(dataset, ckpt, save_every=2))
    err = info.value
    assert err.step == 5
    text = str(err)
    assert "loss is nan at step 5" in text and "checkpoint_step_4.pt" in text and "skipped that step" in text
    steps = sorted(load_checkpoint(p)["step"] for p in ckpt.glob("checkpoint_*.pt"))
    assert steps == [2, 4]  # nothing after the bad step
    assert max(train_losses(ckpt)) == 4


def test_absurd_learning_rate_ends_with_a_nonfinite_error(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    with pytest.raises(NonFiniteLossError, match=r"(loss|gradient norm) is (nan|inf) at step \d+") as info:
        train_model(tiny_config(dataset, ckpt, learning_rate=1e30, warmup_steps=0, grad_clip=0.0))
    assert info.value.last_checkpoint is None
    assert not list(ckpt.glob("*.pt"))


def test_two_trainers_on_one_folder(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    with (
        FolderLock(ckpt),
        pytest.raises(TrainingError, match=r"another gptmed-train \(pid \d+\) is already using"),
    ):
        train_model(tiny_config(dataset, ckpt, max_steps=1))
    train_model(tiny_config(dataset, ckpt, max_steps=1))  # free again once released


def test_a_run_that_fails_before_saving_leaves_nothing_behind(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n_train=5)  # fewer rows than a batch: fails after locking
    ckpt = tmp_path / "new" / "ck"
    with pytest.raises(DataError, match="fewer than one step's batch"):
        train_model(tiny_config(data, ckpt))
    assert not (tmp_path / "new").exists()  # the folders the run made, and its .lock, are gone
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        train_model(tiny_config(data, kept))
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # a folder the user made stays


def test_the_lock_taken_on_a_removed_file_is_retaken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second process opens .lock, the holder releases (removing the file), then the second
    flocks the removed file: it must notice and lock the file at the path, or a third process
    could take the folder too. The interleaving is forced by releasing inside the first flock."""
    import fcntl

    folder = tmp_path / "new" / "ck"
    first = FolderLock(folder)
    first.acquire()  # made the folder: its release removes it again, under the second's feet
    real_flock = fcntl.flock
    calls = []

    def flock_after_release(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            first.release()  # between the second's open and its flock
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_release)
    second = FolderLock(folder)
    second.acquire()  # was: FileNotFoundError when the first had removed the folder too
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len(calls) == 2  # locked the removed file, saw it, took the new one
    assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(TrainingError, match="already using"):
        FolderLock(folder).acquire()  # the file at the path is the one held
    second.release()
    assert not (folder / ".lock").exists()


def test_dataset_smaller_than_a_batch(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n_train=5)
    with pytest.raises(
        DataError, match=r"has 5 sequences, fewer than one step's batch of 8.*lower --batch-size to at most 5"
    ):
        train_model(tiny_config(data, tmp_path / "ck"))
    with pytest.raises(DataError, match="batch of 12"):
        train_model(tiny_config(data, tmp_path / "ck", batch_size=4, grad_accum=3))


def test_cuda_without_cuda_and_bad_precision(dataset: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="--device cuda asked for CUDA, but CUDA is not available"):
        train_model(tiny_config(dataset, tmp_path / "ck", device="cuda"))
    with pytest.raises(TrainingError, match="--precision fp16 needs a CUDA GPU"):
        train_model(tiny_config(dataset, tmp_path / "ck", precision="fp16"))
    with pytest.raises(ConfigError, match="unknown --device 'tpu'"):
        train_model(tiny_config(dataset, tmp_path / "ck", device="tpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_checkpoint_trained_on_a_gpu_loads_without_one(dataset: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from train_helpers import subprocess_env

    ckpt = tmp_path / "ck"
    train_model(tiny_config(dataset, ckpt, device="cuda", max_steps=2))
    # the user manual's step 5.2: a plain torch.load, no map_location, on a machine without a GPU
    code = (
        "import torch; assert not torch.cuda.is_available(); "
        f"state = torch.load({str(ckpt / 'best_model.pt')!r}); "
        "assert all(t.device.type == 'cpu' for t in state['model_state_dict'].values())"
    )
    env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    resumed = train_model(tiny_config(dataset, ckpt, device="cuda", max_steps=4, resume=True))
    assert resumed.steps == 4  # and resuming on the GPU takes the CPU-saved state back to it


def test_a_new_run_in_a_folder_of_an_earlier_run_warns(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "ck"
    with caplog.at_level("WARNING", logger="gptmed.training.trainer"):
        train_model(tiny_config(dataset, ckpt, max_steps=2))
        assert "earlier run" not in caplog.text  # a fresh folder
        train_model(tiny_config(dataset, ckpt, max_steps=4, resume=True))
        assert "earlier run" not in caplog.text  # continuing it
        train_model(tiny_config(dataset, ckpt, max_steps=2, batch_size=4))  # a retry with other flags
    warned = [r.getMessage() for r in caplog.records if "earlier run" in r.getMessage()]
    assert len(warned) == 1, warned
    assert (
        f"{ckpt} already holds" in warned[0]
        and "pass --resume" in warned[0]
        and "--checkpoint-dir" in warned[0]
    )


def test_resume_refuses_other_model_vocab_or_data(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    first = train_model(tiny_config(dataset, ckpt, max_steps=2))
    src = str(first.last_checkpoint)
    with pytest.raises(
        CheckpointError, match=r"does not match this run: model_config.n_layers: checkpoint 2, this run 3"
    ):
        train_model(tiny_config(dataset, tmp_path / "o1", resume_from=src, n_layers=3))
    other_vocab = write_dataset(tmp_path / "v", vocab=64)
    with pytest.raises(
        CheckpointError, match=r"vocab_size \(tokenizer vocabulary\): checkpoint 48, this run 64"
    ):
        train_model(tiny_config(other_vocab, tmp_path / "o2", resume_from=src))
    other_data = write_dataset(tmp_path / "x", seed=5, input_sha256="c" * 64)
    with pytest.raises(
        CheckpointError, match=r"dataset: checkpoint trained on .*data \(fingerprint .*this run uses .*x"
    ):
        train_model(tiny_config(other_data, tmp_path / "o3", resume_from=src))
    other_tok = write_dataset(tmp_path / "t", tokenizer_sha256="f" * 64)
    with pytest.raises(
        CheckpointError, match=r"tokenizer_sha256: checkpoint aaaaaaaaaaaa…, this run ffffffffffff…"
    ):
        train_model(tiny_config(other_tok, tmp_path / "o4", resume_from=src))


def test_resume_without_checkpoint_and_corrupt_latest(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    with pytest.raises(CheckpointError, match=r"--resume: no valid checkpoint in"):
        train_model(tiny_config(dataset, ckpt, resume=True))
    train_model(tiny_config(dataset, ckpt, max_steps=3, save_every=1, keep_last=5))
    (ckpt / "checkpoint_step_4.pt").write_bytes(b"torn write")  # newest file, corrupt
    result = train_model(tiny_config(dataset, ckpt, resume=True, max_steps=4))
    assert result.steps == 4 and len(result.step_losses) == 1  # resumed from step 3
    with pytest.raises(CheckpointError, match=r".*garbage.pt is not a checkpoint"):
        (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
        train_model(tiny_config(dataset, ckpt, resume_from=str(tmp_path / "garbage.pt")))


def test_save_failure_mid_run_keeps_previous_checkpoint(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "ck"
    real = ck._serialize
    calls = {"n": 0}

    def disk_fills_up(state: dict[str, Any], fh: IO[bytes]) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:  # the 3rd save runs out of space halfway
            fh.write(b"PK partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, fh)

    monkeypatch.setattr(ck, "_serialize", disk_fills_up)
    with pytest.raises(CheckpointError, match="could not save checkpoint .*No space left on device"):
        train_model(tiny_config(dataset, ckpt, save_every=1, eval_every=0, keep_last=5))
    monkeypatch.setattr(ck, "_serialize", real)
    files = sorted(p.name for p in ckpt.iterdir() if p.suffix == ".pt")
    assert not [p for p in ckpt.iterdir() if ".tmp-" in p.name]
    latest = ck.find_latest_checkpoint(ckpt)
    assert latest is not None and latest[1]["step"] in (1, 2) and files


def test_early_stopping(dataset: Path, tmp_path: Path) -> None:
    # a learning rate this small cannot improve the val loss at the 3rd decimal: patience runs out
    result = train_model(
        tiny_config(
            dataset,
            tmp_path / "ck",
            num_epochs=20,
            learning_rate=1e-3,
            eval_every=1,
            early_stopping_patience=2,
            min_lr_ratio=1.0,
            warmup_steps=0,
        )
    )
    assert result.stopped == "early_stopping" and result.steps < 120
    assert result.best_checkpoint is not None and math.isfinite(result.best_val_loss or math.nan)


def test_finished_run_resume_is_a_no_op(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    train_model(tiny_config(dataset, ckpt, num_epochs=1))
    again = train_model(tiny_config(dataset, ckpt, num_epochs=1, resume=True))
    assert again.steps == 6 and again.step_losses == []
    longer = train_model(tiny_config(dataset, ckpt, num_epochs=2, resume=True))
    assert longer.steps == 12 and len(longer.step_losses) == 6


def test_bf16_autocast_on_cpu(dataset: Path, tmp_path: Path) -> None:
    result = train_model(tiny_config(dataset, tmp_path / "ck", max_steps=3, precision="bf16"))
    assert len(result.step_losses) == 3 and all(math.isfinite(x) for x in result.step_losses)
    state = load_checkpoint(tmp_path / "ck" / "checkpoint_step_3.pt")
    assert state["model_state_dict"]["tok_emb.weight"].dtype == torch.float32  # master weights stay fp32


def test_rows_without_answer_tokens_do_not_break_a_step(dataset: Path, tmp_path: Path) -> None:
    mask_path = dataset.with_name("train.mask.npy")
    mask = np.load(mask_path)
    mask[::2] = 0  # every other row has no answer target (e.g. a window of a long prompt)
    np.save(mask_path, mask)
    result = train_model(tiny_config(dataset, tmp_path / "ck", batch_size=1, max_steps=8))
    assert len(result.step_losses) == 8 and all(math.isfinite(x) for x in result.step_losses)
    assert 0.0 in result.step_losses and any(x > 0 for x in result.step_losses)


def test_padding_with_a_real_target_is_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding is skipped only where its targets are ignored; a loss mask that covers padding
    (a data bug, but a possible one) gets the same loss as without the padding marks."""
    import gptmed.model.architecture as arch
    from gptmed.core import get_tiny_config

    monkeypatch.setattr(arch, "plan_segments", lambda *_a: "runs")  # drop padding whenever marked
    model = GPTTransformer(get_tiny_config(vocab_size=64, max_seq_len=64).replace(dropout=0.0)).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(4, 64, (2, 48))
    x[:, 0] = 2  # BOS
    x[0, 30:] = 0  # trailing padding
    y = np.roll(x, -1, axis=1)
    y[x == 0] = -100

    def loss(pad_id: int | None) -> float:
        arrays = rows_layout(x, y, 2, pad_id)
        batch = Batch.from_layout(arrays, n_targets=int((y != -100).sum()), n_tokens=0, n_slots=x.size)
        with torch.no_grad():
            return float(tr.forward_loss(model, batch, None))

    plain, skipped = loss(None), loss(0)
    assert rows_layout(x, y, 2, 0)["segment_ids"][0, 40] == -1  # the padding was marked
    y[0, 40] = 7  # a target at a padding position
    assert rows_layout(x, y, 2, 0)["segment_ids"] is None  # ... so nothing is marked any more
    covered_plain, covered = loss(None), loss(0)
    assert skipped == pytest.approx(plain, rel=1e-5)
    assert covered == pytest.approx(covered_plain, rel=1e-6)


def test_a_checkpoint_dir_under_a_file_is_named_in_one_line(tmp_path: Path) -> None:
    from gptmed.core import GptmedError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(GptmedError, match=r"^cannot create checkpoint folder .*afile/ck: .*afile is a file"):
        FolderLock(tmp_path / "afile" / "ck").acquire()  # was `File exists: afile`
