"""Real processes: exact resume across processes, SIGINT/SIGTERM, a second Ctrl-C, SIGKILL during saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gptmed.training import load_checkpoint, train_model
from gptmed.training.checkpoint import find_latest_checkpoint
from train_helpers import cli_args, run_trainer, subprocess_env, tiny_config, train_losses

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# A trainer whose checkpoint writes pause halfway (a slow disk), announcing "SAVING" on stdout.
SLOW_SAVE_DRIVER = """
import io, os, sys, time, torch
torch.set_num_threads(1)
from gptmed.training import checkpoint as ck
real = ck._serialize
def slow(state, fh):
    buf = io.BytesIO(); real(state, buf); data = buf.getvalue()
    fh.write(data[: len(data) // 2]); fh.flush()
    print("SAVING", flush=True)
    time.sleep(float(os.environ["SAVE_SLEEP"]))
    fh.write(data[len(data) // 2 :])
ck._serialize = slow
from gptmed.training.train import main
main()
"""


def _popen(args: list[str], *, save_sleep: float | None = None) -> subprocess.Popen[str]:
    env = subprocess_env()
    if save_sleep is None:
        code = "import torch; torch.set_num_threads(1); from gptmed.training.train import main; main()"
    else:
        code = SLOW_SAVE_DRIVER
        env["SAVE_SLEEP"] = str(save_sleep)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_steps(ckpt: Path, proc: subprocess.Popen[str], n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    metrics = ckpt / "metrics.jsonl"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"trainer ended early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}"
            )
        if (
            metrics.is_file()
            and sum('"kind": "train"' in line for line in metrics.read_text().splitlines()) >= n
        ):
            return
        time.sleep(0.05)
    raise AssertionError("trainer made no progress")


def _wait_for_marker(proc: subprocess.Popen[str], count: int, timeout: float = 60) -> None:
    assert proc.stdout is not None
    seen = 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"trainer ended ({proc.wait()}): {proc.stderr.read() if proc.stderr else ''}"
            )
        if line.strip() == "SAVING":
            seen += 1
            if seen == count:
                return
    raise AssertionError("no save seen")


def test_exact_resume_across_processes(dataset: Path, tmp_path: Path) -> None:
    """10 steps straight == 5 steps, then a new process that resumes and takes 5 more (the cut is mid-epoch,
    dropout is on, the run crosses an epoch boundary after resuming)."""
    straight = tmp_path / "straight"
    split = tmp_path / "split"
    base = dict(num_epochs=3, warmup_steps=3)  # 6 steps per epoch: the cut at 5 is mid-epoch
    # both single-threaded (train_helpers and the subprocess env pin 1 thread): same kernels, same results
    train_model(tiny_config(dataset, straight, max_steps=10, **base))
    train_model(tiny_config(dataset, split, max_steps=5, **base))
    half = load_checkpoint(split / "checkpoint_step_5.pt")
    assert (half["epoch"], half["position"]) == (0, 40)
    out = run_trainer(cli_args(tiny_config(dataset, split, max_steps=10, resume=True, **base)))
    assert "Resuming from" in out.stdout and "step 5" in out.stdout
    a, b = train_losses(straight), train_losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert [a[s] for s in range(1, 11)] == [b[s] for s in range(1, 11)]  # identical, not approximately
    sa = load_checkpoint(straight / "checkpoint_step_10.pt")
    sb = load_checkpoint(split / "checkpoint_step_10.pt")
    for key, value in sa["model_state_dict"].items():
        assert torch.equal(value, sb["model_state_dict"][key]), key
    for key, value in sa["optimizer_state_dict"]["state"].items():
        for name, t in value.items():
            assert torch.equal(t, sb["optimizer_state_dict"]["state"][key][name])
    assert torch.equal(sa["rng_state"]["torch"], sb["rng_state"]["torch"])


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_saves_and_resume_continues_at_the_next_step(
    dataset: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    ckpt = tmp_path / "ck"
    proc = _popen(cli_args(tiny_config(dataset, ckpt, num_epochs=200)))
    _wait_for_steps(ckpt, proc, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"Continue with: gptmed-train --resume --checkpoint-dir {ckpt}\n" in err  # the command that works
    found = find_latest_checkpoint(ckpt)
    assert found is not None
    stopped_at = int(found[1]["step"])
    assert stopped_at >= 2 and max(train_losses(ckpt)) == stopped_at
    run_trainer(cli_args(tiny_config(dataset, ckpt, num_epochs=200, max_steps=stopped_at + 2, resume=True)))
    rows = [json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, stopped_at + 3))  # continued at stopped_at + 1, nothing repeated


def test_a_second_trainer_process_on_the_folder_is_refused(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    first = _popen(cli_args(tiny_config(dataset, ckpt, num_epochs=200)))
    try:
        _wait_for_steps(ckpt, first, 1)
        second = run_trainer(cli_args(tiny_config(dataset, ckpt, num_epochs=1)), check=False)
        assert second.returncode == 1, second.stderr
        assert second.stderr.startswith(f"Error: another gptmed-train (pid {first.pid}) is already using"), (
            second.stderr
        )
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one trains on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130


def test_second_ctrl_c_exits_at_once(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    proc = _popen(cli_args(tiny_config(dataset, ckpt, num_epochs=200, save_every=3)), save_sleep=60)
    _wait_for_marker(proc, 1)  # stuck in a (slow) save
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and time.time() - t0 < 10
    assert "Second interrupt: exiting now" in err
    assert not list(ckpt.glob("checkpoint_*.pt"))  # the half-written save never became a checkpoint


def test_sigkill_during_saves_repeatedly(dataset: Path, tmp_path: Path) -> None:
    """Kill -9 in the middle of a save, three times: the latest checkpoint always loads, temp files are swept."""
    ckpt = tmp_path / "ck"
    seen_steps = []
    stale_before: set[str] = set()
    for i in range(3):
        args = cli_args(tiny_config(dataset, ckpt, num_epochs=200, save_every=1, keep_last=3, resume=i > 0))
        proc = _popen(args, save_sleep=0.2)
        _wait_for_marker(proc, 2)  # the 1st save of this run finished, the 2nd is half-written
        proc.kill()
        proc.wait(timeout=30)
        stale = {p.name for p in ckpt.iterdir() if ".tmp-" in p.name}
        assert stale and not (stale & stale_before)  # a new torn temp file; the old one was swept
        stale_before = stale
        found = find_latest_checkpoint(ckpt)
        assert found is not None
        seen_steps.append(int(found[1]["step"]))
        for p in ckpt.glob("checkpoint_*.pt"):
            load_checkpoint(p)  # every visible checkpoint is complete
    assert seen_steps == sorted(seen_steps) and seen_steps[-1] > seen_steps[0]
    run_trainer(
        cli_args(tiny_config(dataset, ckpt, num_epochs=200, max_steps=seen_steps[-1] + 1, resume=True))
    )
    assert not [p for p in ckpt.iterdir() if ".tmp-" in p.name]
    assert max(train_losses(ckpt)) == seen_steps[-1] + 1
    assert os.path.getsize(ckpt / "metrics.jsonl") > 0
