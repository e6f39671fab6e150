"""torchrun with 2 gloo processes on the CPU: same loss curve as 1 process with the same global batch,
and a DDP run resumes from its own checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from gptmed.training import load_checkpoint, train_model
from train_helpers import cli_args, subprocess_env, tiny_config, train_losses

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed"
)


# Runs `python -m gptmed.training.train` and then lists the threads the rank has left: after a
# run, the trainer's shutdown must have stopped gloo's threads, or they race the process's exit
# (an occasional SIGABRT after a successful run). The garbage collector is off in the rank, so a
# process group that only a reference cycle keeps alive stays alive every time, not when the
# collector happens not to run (1 CI run in many). Each rank writes its own file: two ranks printing
# to torchrun's shared stdout can interleave within a line.
_RANK_MAIN = """
import gc, os, runpy, sys
gc.disable()
code = 0
try:
    runpy.run_module("gptmed.training.train", run_name="__main__")
except SystemExit as exc:
    code = exc.code
if os.path.isdir("/proc/self/task"):  # Linux
    names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"threads_rank{os.environ['RANK']}.txt")
    with open(out, "w") as f:
        f.write(" ".join(names))
sys.exit(code)
"""


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    launch = tmp_path / "launch"
    launch.mkdir(exist_ok=True)
    for old in launch.glob("threads_rank*.txt"):
        old.unlink()
    script = launch / "rank_main.py"
    script.write_text(_RANK_MAIN)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    if sys.platform == "linux":
        left = {f.name: f.read_text() for f in sorted(launch.glob("threads_rank*.txt"))}
        assert sorted(left) == ["threads_rank0.txt", "threads_rank1.txt"], proc.stdout
        assert not any("gloo" in names for names in left.values()), left
    return proc


def test_two_gloo_processes_match_one_process(dataset: Path, tmp_path: Path) -> None:
    common = dict(num_epochs=2, warmup_steps=2, dropout=0.0, batch_size=8, grad_accum=2)  # 3 steps per epoch
    single = train_model(tiny_config(dataset, tmp_path / "one", max_steps=5, **common))
    ddp = tmp_path / "two"
    out = _torchrun(cli_args(tiny_config(dataset, ddp, max_steps=2, **common)), tmp_path)
    assert out.stdout.count("GPT Training Script") == 1  # rank 0 prints, rank 1 is quiet
    assert "2 processes" in out.stdout
    _torchrun(
        cli_args(tiny_config(dataset, ddp, max_steps=5, resume=True, **common)), tmp_path
    )  # crosses the epoch end
    losses = train_losses(ddp)
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert [losses[s] for s in range(1, 6)] == pytest.approx(single.step_losses, rel=2e-5)
    a = load_checkpoint(tmp_path / "one" / "checkpoint_step_5.pt")["model_state_dict"]
    b = load_checkpoint(ddp / "checkpoint_step_5.pt")
    assert b["rng_state"]["by_rank"].shape[0] == 2
    for key, value in a.items():
        assert (value - b["model_state_dict"][key]).abs().max() < 1e-4, key
