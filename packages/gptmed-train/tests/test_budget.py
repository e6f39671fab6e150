"""--time-budget: the duration syntax, the schedule's re-planning, and real budgeted runs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from gptmed.core import ConfigError
from gptmed.training import TrainingConfig, load_checkpoint, parse_duration, train_model
from gptmed.training.budget import Cadence
from gptmed.training.checkpoint import find_latest_checkpoint
from gptmed.training.schedule import WarmupCosine
from train_helpers import TRAIN_CMD, cli_args, subprocess_env, tiny_config, write_dataset


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45), (" 1.5m ", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "", "m", "-5", "0s", "10m and a bit"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^--time-budget: .*(not a duration; use e\.g\. 90s, 10m|positive)"
    ):
        parse_duration(text, name="--time-budget")
    with pytest.raises(ConfigError, match="TrainingConfig.time_budget"):
        TrainingConfig(time_budget=text)


def test_replanning_keeps_the_learning_rate_continuous_and_ends_on_the_floor() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, lr=1.0, warmup_steps=100, total_steps=10**9, min_lr_ratio=0.1)
    assert sched.lr_at(9) == pytest.approx(0.1)  # warmup 10 / 100
    sched.replan(10, 200, warmup_steps=6)  # the plan after 10 steps: warmup already longer than 6
    assert sched.warmup_steps == 10 and sched.lr_at(10) == pytest.approx(1.0)
    before = sched.lr_at(80)
    sched.replan(80, 150)  # less time than thought: the decay speeds up from where it is
    assert sched.lr_at(80) == pytest.approx(before)
    assert sched.lr_at(149) == pytest.approx(0.1)  # the last planned step is on the floor
    assert sched.lr_at(120) < before
    restored = WarmupCosine(opt, lr=1.0, warmup_steps=100, total_steps=999, min_lr_ratio=0.1)
    restored.load_state_dict(sched.state_dict())  # a planned schedule keeps its end on resume
    assert [restored.lr_at(s) for s in (0, 80, 149)] == [sched.lr_at(s) for s in (0, 80, 149)]


def test_cadence_counts_the_evaluations_and_saves_ahead() -> None:
    every_epoch = Cadence(steps_per_epoch=10, eval_every=0, save_every=0, has_val=True)
    assert every_epoch.events(0, 25) == (2 + 1, 2 + 1 + 3)  # 2 epoch ends + final; + best models
    frequent = Cadence(steps_per_epoch=10, eval_every=4, save_every=5, has_val=False)
    assert frequent.events(10, 20) == (0, 1 + 1 + 2)  # no val: no evaluation


def _last_train_row(ckpt: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"][-1]


def test_a_20s_budget_ends_in_time_on_the_floor_of_its_schedule(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n_train=256, n_val=32)
    ckpt = tmp_path / "ck"
    cfg = tiny_config(
        data, ckpt, model_size="tiny", d_model=None, n_layers=None, n_heads=None, d_ff=None,
        num_epochs=None, warmup_steps=None, learning_rate=None, time_budget="20s",
    )  # fmt: skip
    result = train_model(cfg)
    assert result.stopped == "time_budget" and result.plan is not None
    assert result.elapsed_s <= 20.0 + 1.0, result.elapsed_s  # the clock starts at the first step
    assert result.elapsed_s >= 17.0, result.elapsed_s  # and it used the time it had
    last = _last_train_row(ckpt)
    # the run's last checkpoint holds its last step: checkpoint_step_N.pt, or checkpoint_epoch_N.pt
    # when the budget ran out on an epoch's last step (a fresh-clone CI run: step 544)
    saved = load_checkpoint(result.last_checkpoint)  # type: ignore[arg-type]
    assert saved["step"] == result.steps
    peak = saved["training_config"]["learning_rate"]
    # the cosine's floor, or within 1% of it when the clock ran out a step or two before the plan's
    # end ("stops at once"): 2% of the schedule left would leave the LR ~2% above its floor
    assert last["step"] == result.steps and last["lr"] == pytest.approx(peak * 0.1, rel=0.01)
    assert saved["training_config"]["time_budget"] == 20.0
    assert 19.0 <= saved["trainer_state"]["budget_spent_s"] <= 21.0
    assert (ckpt / "best_model.pt").is_file() and result.best_val_loss is not None


def test_an_interrupted_budget_run_resumes_the_same_plan(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n_train=256, n_val=16)
    ckpt = tmp_path / "ck"
    cfg = tiny_config(data, ckpt, num_epochs=None, warmup_steps=None, time_budget="8s", save_every=5)
    proc = subprocess.Popen(
        [*TRAIN_CMD, *cli_args(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt.glob("checkpoint_step_*.pt")):
        time.sleep(0.1)
    time.sleep(1.0)  # a few more steps, past the plan
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    found = find_latest_checkpoint(ckpt)
    assert found is not None
    stopped = found[1]
    spent = stopped["trainer_state"]["budget_spent_s"]
    assert 0 < spent < 8.0 and stopped["scheduler_state_dict"]["planned"], stopped["trainer_state"]
    result = train_model(tiny_config(data, ckpt, resume=True, num_epochs=None, warmup_steps=None))
    assert result.stopped == "time_budget"
    assert result.elapsed_s <= 8.0 - spent + 1.0  # only what was left of the budget
    final = load_checkpoint(result.last_checkpoint)  # type: ignore[arg-type]
    assert 7.0 <= final["trainer_state"]["budget_spent_s"] <= 9.0
    last = _last_train_row(ckpt)
    # the floor, within 1% as above: a fresh-clone CI run ended a step before the plan's end there
    # (3.0000457e-4 against a 3e-4 floor)
    assert last["lr"] == pytest.approx(final["training_config"]["learning_rate"] * 0.1, rel=0.01)
    assert math.isfinite(result.best_val_loss or math.nan)
