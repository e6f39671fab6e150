"""The command line: flags, output shape, one-line errors, exit codes, `plot`, and the manual's Python API."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from gptmed.configs.train_config import TrainingConfig
from gptmed.training.cli import cli, format_duration
from gptmed.training.train import main
from train_helpers import cli_args, tiny_config, write_dataset

MANUAL_FLAGS = [
    "--model-size",
    "--num-epochs",
    "--batch-size",
    "--learning-rate",
    "--train-data",
    "--val-data",
    "--checkpoint-dir",
    "--device",
    "--seed",
    "--quick-test",
    "--resume",
    "--resume-from",
    "--warmup-steps",
    "--grad-clip",
    "--weight-decay",
    "--eval-every",
    "--save-every",
    "--grad-accum",
    "--precision",
    "--compile",
    "--early-stopping-patience",
    "--loss-on",
    "--max-steps",
    "--config",
]


def test_help_lists_every_flag_and_version() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--help"])
    assert out.exit_code == 0
    for flag in MANUAL_FLAGS:
        assert flag in out.output, flag
    assert "plot" in out.output
    assert "data/tokenized/train.npy" in out.output and "model/checkpoints" in out.output
    v = runner.invoke(cli, ["--version"])
    assert v.exit_code == 0 and "gptmed-train" in v.output
    assert runner.invoke(cli, ["plot", "--help"]).exit_code == 0


def test_training_output_is_the_manuals_shape(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    out = CliRunner().invoke(cli, cli_args(tiny_config(dataset, ckpt, num_epochs=2)))
    assert out.exit_code == 0, out.output
    text = out.output
    for line in [
        "GPT Training Script",
        "Setting random seed: 1",
        "Model config: tiny",
        "  d_model: 32",
        "Total parameters: ",
        "  Train sequences: 48",
        "  Val sequences: 8",
        "Starting training...",
        "Epoch 1/2",
        "Epoch 2/2",
        f"  ✓ Saved checkpoint: {ckpt}/checkpoint_epoch_2.pt",
        "Training complete! 🎉",
        f"Best checkpoint: {ckpt}/best_model.pt",
    ]:
        assert line in text, line
    assert "  Train Loss: " in text and " | Val Loss: " in text and " | Time: " in text
    assert "\r" not in text and "tok/s" not in text  # no progress bar when not a terminal
    png = tmp_path / "loss.png"
    plot = CliRunner().invoke(cli, ["plot", "--checkpoint-dir", str(ckpt), "-o", str(png)])
    assert plot.exit_code == 0, plot.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for where, message in ((tmp_path / "no-run", "no run folder"), (tmp_path, "no metrics.jsonl in")):
        miss = CliRunner().invoke(cli, ["plot", "--checkpoint-dir", str(where)])
        assert miss.exit_code == 1 and f"Error: {message} {where}" in miss.output, miss.output


def test_without_a_terminal_progress_lines_and_mid_epoch_evals_reach_the_log(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptmed.training.cli import ConsoleCallbacks

    monkeypatch.setattr(ConsoleCallbacks, "log_every_s", 0.0)  # a line per step instead of every 30 s
    ckpt = tmp_path / "ck"
    out = CliRunner().invoke(cli, cli_args(tiny_config(dataset, ckpt, num_epochs=1, eval_every=2)))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert [x.split()[1] for x in lines if x.startswith("  step ")] == [f"{n}/6" for n in range(1, 7)]
    assert all(" loss " in x and " tok/s  ETA " in x for x in lines if x.startswith("  step "))
    evals = [x for x in lines if x.startswith("  Step ")]  # 48 rows / 8: steps 2 and 4 mid-epoch
    assert [x.split(":")[0] for x in evals] == ["  Step 2", "  Step 4"] and all(
        "val loss" in x for x in evals
    )
    assert "\r" not in out.output


def test_train_data_elsewhere_takes_its_own_val_and_the_hint_names_its_folder(
    dataset: Path, tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "mydata")
    args = ["--train-data", str(data), "--model-size", "tiny", "--max-steps", "1", "--batch-size", "8"]
    out = CliRunner().invoke(cli, [*args, "--checkpoint-dir", str(tmp_path / "ck"), "--seed", "1"])
    assert out.exit_code == 0, out.output  # was: val data data/tokenized/val.npy not found
    assert "  Val sequences: 8" in out.output
    missing = tmp_path / "nope" / "train.npy"
    out = CliRunner().invoke(cli, ["--train-data", str(missing), "--checkpoint-dir", str(tmp_path / "c2")])
    assert out.exit_code == 1 and f"--output-dir {missing.parent}" in out.output, out.output


def test_errors_are_one_line_and_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(
        cli, ["--train-data", str(tmp_path / "none.npy"), "--checkpoint-dir", str(tmp_path / "c")]
    )
    assert out.exit_code == 1
    lines = [x for x in out.output.splitlines() if x.strip()]
    assert (
        lines[-1].startswith("Error: training data")
        and "not found" in lines[-1]
        and "tokenize_data" in lines[-1]
    )
    assert "Traceback" not in out.output
    assert runner.invoke(cli, ["--batch-size", "0"]).exit_code == 2
    assert runner.invoke(cli, ["--loss-on", "prompt"]).exit_code == 2
    bad = tmp_path / "c.json"
    bad.write_text("[1, 2]")
    out = runner.invoke(cli, ["--config", str(bad)])
    assert out.exit_code == 1 and "Error:" in out.output and "expected an object of settings" in out.output


def test_config_file_and_flags(dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.json"
    cfg.write_text(
        '{"model_size": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "batch_size": 8, '
        f'"train_data_path": "{dataset}", "val_data_path": "{dataset.with_name("val.npy")}", "device": "cpu", '
        '"max_steps": 2}'
    )
    out = CliRunner().invoke(
        cli, ["--config", str(cfg), "--checkpoint-dir", str(tmp_path / "ck"), "--max-steps", "3"]
    )
    assert out.exit_code == 0, out.output
    assert "Stopped at --max-steps (3 steps)" in out.output and "n_layers: 1" in out.output


def test_main_with_a_config_object(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = main(tiny_config(dataset, tmp_path / "ck", num_epochs=1))
    assert result is not None and result.steps == 6
    assert "Training complete!" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(tiny_config(dataset, tmp_path / "ck2", n_heads=3, d_model=32))
    assert info.value.code == 1
    assert capsys.readouterr().err.startswith(
        "Error: ModelConfig.d_model (32) must be divisible by n_heads (3)"
    )


_MANUAL_SCRIPT = """
from gptmed.training.train import main
from gptmed.configs.train_config import TrainingConfig

train_config = TrainingConfig(
    model_size="tiny", d_model=32, n_layers=2, n_heads=2, d_ff=64, batch_size=8, num_epochs=1,
    train_data_path={train!r}, val_data_path={val!r}, checkpoint_dir={ckpt!r}, device="cpu", seed=1,
){second}

# Train
main()
"""


def test_main_without_a_config_trains_with_the_one_the_script_built(dataset: Path, tmp_path: Path) -> None:
    # The user manual's "Custom Training Configuration" builds a TrainingConfig, then calls main().
    import subprocess
    import sys

    from train_helpers import subprocess_env

    def script(second: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "custom_training.py"
        text = _MANUAL_SCRIPT.format(
            train=str(dataset),
            val=str(dataset.with_name("val.npy")),
            ckpt=str(tmp_path / "ck"),
            second=second,
        )
        path.write_text(text, encoding="utf-8")
        cmd = [sys.executable, str(path)]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=tmp_path
        )

    done = script("")
    assert done.returncode == 0, done.stderr
    assert (
        "main() got no config: training with `train_config`, the TrainingConfig the script defines"
        in done.stdout
    )
    assert "Training complete!" in done.stdout and "Epoch 1/1" in done.stdout  # not the CLI's 10 epochs
    import torch

    saved = torch.load(tmp_path / "ck" / "best_model.pt", weights_only=True)["manifest"]
    assert saved["training_config"]["batch_size"] == 8, saved["training_config"]

    two = script("\nother = train_config.replace(num_epochs=2)\nthird = TrainingConfig(batch_size=4)")
    assert two.returncode == 1 and "Traceback" not in two.stderr
    assert two.stderr.startswith(
        "Error: main() got no config and the script defines 3 TrainingConfigs (train_config, other, third)"
    ), two.stderr
    assert "pass the one to train with, e.g. main(train_config)" in two.stderr


def test_quick_test_with_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(
        cli, ["--quick-test", "--device", "cpu", "--d-model", "32", "--n-layers", "1", "--n-heads", "2"]
    )
    assert out.exit_code == 0, out.output
    assert "synthetic dataset" in out.output and "Stopped at --max-steps (12 steps)" in out.output
    assert (tmp_path / "model/checkpoints/quick-test/best_model.pt").is_file()
    assert not (
        tmp_path / "model/checkpoints/best_model.pt"
    ).exists()  # a quick test never clobbers a real run


def test_quick_test_uses_real_data_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "data/tokenized")
    out = CliRunner().invoke(
        cli, ["--quick-test", "--device", "cpu", "--d-model", "32", "--n-layers", "1", "--n-heads", "2"]
    )
    assert out.exit_code == 0, out.output
    assert "synthetic" not in out.output and "Train sequences: 48" in out.output


def test_format_duration() -> None:
    assert format_duration(1472) == "24m 32s"
    assert format_duration(7) == "7s"
    assert format_duration(3725) == "1h 02m 05s"


def test_training_config_import_path() -> None:
    from gptmed.configs import TrainingConfig as Same

    assert Same is TrainingConfig


def test_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    from gptmed.training.cli import ConsoleCallbacks

    bar = ConsoleCallbacks(progress=True)
    bar.on_step(5, 10, 2.5, 1e-3, 12345.0, 65.0)
    err = capsys.readouterr().err
    assert "5/10" in err and "loss 2.5000" in err and "12,345 tok/s" in err and "ETA 1m 5s" in err
    quiet = ConsoleCallbacks(progress=None)  # stderr is captured, not a terminal: no bar
    quiet.on_step(5, 10, 2.5, 1e-3, 12345.0, 65.0)
    assert capsys.readouterr().err == ""


def test_bad_numbers_name_the_flag_the_user_typed() -> None:
    """`TrainingConfig.learning_rate must be in (0.0, inf]` named a field, and inf is refused."""
    for argv, message in (
        (["--learning-rate", "-1"], "Error: --learning-rate must be > 0, got -1.0"),
        (["--learning-rate", "inf"], "Error: --learning-rate must be a finite number, got inf"),
    ):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1 and result.stderr.strip() == message, result.output
