"""``gptmed-train``: parse flags, call :func:`gptmed.training.train_model`, print the manual's output.

``gptmed-train [OPTIONS]`` trains; ``gptmed-train plot`` draws metrics.jsonl to a PNG.
Errors print one line (``Error: ...``) and exit 1; SIGINT/SIGTERM exit 130/143 after saving.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from gptmed.core import PRESETS, ConfigError, cli_errors, format_duration
from gptmed.training.budget import BudgetPlan
from gptmed.training.callbacks import RunInfo, TrainCallbacks, TrainResult
from gptmed.training.config import DEFAULT_EPOCHS, DEFAULT_MODEL_SIZE, LOSS_ON, PRECISIONS, TrainingConfig
from gptmed.training.errors import TrainingInterrupted
from gptmed.training.launch import train_model
from tqdm import tqdm

__all__ = ["ConsoleCallbacks", "cli", "format_duration", "run_with_console"]

RULE = "=" * 60


class ConsoleCallbacks(TrainCallbacks):
    """Prints the manual-shaped report to stdout and a tqdm progress bar to stderr (a terminal only).
    Without a terminal (a log file, CI) a plain progress line goes to stdout every ``log_every_s``
    seconds."""

    log_every_s = 30.0

    def __init__(self, progress: bool | None = None) -> None:
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._bar: tqdm[Any] | None = None
        self._last_line = time.monotonic()

    def _out(self, text: str = "") -> None:
        if self._bar is None:
            click.echo(text)
            return
        with tqdm.external_write_mode(file=sys.stdout):
            click.echo(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_start(self, info: RunInfo) -> None:
        cfg, mc = info.config, info.model_config
        self._out(RULE)
        self._out("GPT Training Script")
        self._out(RULE)
        self._out()
        if info.synthetic_data:
            self._out(
                f"Quick test: no data at the given path, using a synthetic dataset in {info.dataset_dir}"
            )
        elif cfg.quick_test:
            self._out(f"Quick test: tiny model, at most {cfg.max_steps} steps")
        self._out(f"Setting random seed: {cfg.seed}")
        self._out("Loading configurations...")
        self._out(f"Model config: {info.model_size}")
        self._out(f"  d_model: {mc.d_model}")
        self._out(f"  n_layers: {mc.n_layers}")
        self._out(f"  n_heads: {mc.n_heads}")
        self._out(f"  vocab_size: {mc.vocab_size} (from metadata.json)")
        self._out(f"  max_seq_len: {mc.max_seq_len}")
        if info.choices:
            self._out("Chosen for this run (a flag overrides each):")
            for choice in info.choices:
                self._out(f"  {choice}")
        layout = ", padding dropped on the host" if info.layout == "flat" else ""
        self._out(
            f"Device: {info.device} ({info.precision}{layout})"
            + (f", {info.world_size} processes" if info.world_size > 1 else "")
        )
        self._out()
        self._out("Creating model...")
        self._out(f"  Total parameters: {info.num_parameters:,}")
        self._out()
        self._out("Loading data...")
        self._out(f"  Train sequences: {info.train_sequences:,}")
        self._out(f"  Val sequences: {info.val_sequences:,}")
        self._out()
        if info.resumed_from is not None:
            self._out(
                f"Resuming from {info.resumed_from} (step {info.start_step}, epoch {info.start_epoch + 1})"
            )
            self._out()
        if cfg.time_budget is not None:
            self._out(f"Time budget: {format_duration(cfg.time_budget)}; the plan follows the first steps")
        self._out("Starting training...")

    def on_plan(self, plan: BudgetPlan, info: RunInfo, first: bool) -> None:
        if self._bar is not None:
            self._bar.total = plan.total_steps
            self._bar.refresh()
        if not first:
            return
        steps = plan.total_steps
        rows = steps * info.config.batch_size * info.config.grad_accum
        ends = time.strftime("%H:%M:%S", time.localtime(time.time() + plan.remaining_s))
        self._out(
            f"  Plan: {steps:,} steps ({rows / max(info.train_sequences, 1):.2f} epochs, {rows:,} sequences) "
            f"at {plan.step_s:.3f} s/step; {plan.evaluations} evaluation(s) ~{plan.eval_s:.1f} s and "
            f"{plan.saves} checkpoint save(s) ~{plan.save_s:.1f} s; ends by {ends}"
        )
        for choice in info.choices:
            if choice.flag == "--warmup-steps":
                self._out(f"  {choice}")

    def on_epoch_start(self, epoch: int, num_epochs: int | None) -> None:
        self._out()
        self._out(f"Epoch {epoch}/{num_epochs}" if num_epochs else f"Epoch {epoch}")

    def on_step(
        self, step: int, total_steps: int, loss: float, lr: float, tokens_per_s: float, eta_s: float
    ) -> None:
        if self.progress:
            text = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  ETA {format_duration(eta_s)}"
            if self._bar is None:
                self._bar = tqdm(
                    total=total_steps,
                    initial=step,
                    unit="step",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    leave=False,
                    bar_format="  {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}] {postfix}",
                )
                self._bar.set_postfix_str(text)  # drawn now; later updates at tqdm's own pace
                return
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(step - self._bar.n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.log_every_s:
            self._last_line = now
            self._out(
                f"  step {step}/{total_steps}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  "
                f"ETA {format_duration(eta_s)}"
            )

    def on_epoch_end(
        self,
        epoch: int,
        num_epochs: int | None,
        train_loss: float | None,
        val_loss: float | None,
        seconds: float,
    ) -> None:
        tl = f"{train_loss:.3f}" if train_loss is not None else "n/a"
        vl = f"{val_loss:.3f}" if val_loss is not None else "n/a"
        self._out(f"  Train Loss: {tl} | Val Loss: {vl} | Time: {format_duration(seconds)}")

    def on_eval(self, step: int, val_loss: float) -> None:
        self._out(f"  Step {step}: val loss {val_loss:.4f}")

    def on_checkpoint(self, path: Path, kind: str) -> None:
        if kind == "best":
            return  # reported once at the end, as in the manual
        self._out(f"  ✓ Saved checkpoint: {path}")

    def on_message(self, text: str) -> None:
        self._out(text)

    def on_end(self, result: TrainResult) -> None:
        self.close()
        self._out()
        if result.stopped == "max_steps":
            self._out(f"Stopped at --max-steps ({result.steps} steps).")
        elif result.stopped == "early_stopping":
            self._out(f"Stopped early at step {result.steps}.")
        elif result.stopped == "time_budget":
            self._out(f"Used the time budget: {result.steps} steps in {format_duration(result.elapsed_s)}.")
        self._out("Training complete! 🎉")
        if result.best_checkpoint is not None:
            best = f" (val loss {result.best_val_loss:.4f})" if result.best_val_loss is not None else ""
            self._out(f"Best checkpoint: {result.best_checkpoint}{best}")
        elif result.last_checkpoint is not None:
            self._out(f"Last checkpoint: {result.last_checkpoint}")


def run_with_console(
    config: TrainingConfig, *, explicit_fields: set[str] | None = None, debug: bool = False
) -> TrainResult:
    """Train with the console report; errors become ``Error: ...`` + exit 1, signals exit 130/143."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    callbacks = ConsoleCallbacks(config.progress)
    with cli_errors(debug), contextlib.closing(callbacks):
        try:
            return train_model(config, callbacks, explicit_fields=explicit_fields)
        except TrainingInterrupted as exc:
            callbacks.close()
            click.echo(exc.report(f"Continue with: {_resume_command(config)}"), err=True)
            sys.exit(exc.exit_code)
    raise AssertionError("unreachable")  # pragma: no cover


def _resume_command(config: TrainingConfig) -> str:
    """The command that continues this run (its folder, when not the default; the rest comes from
    the checkpoint)."""
    command = "gptmed-train --resume"
    if Path(config.checkpoint_dir) != Path(_D["checkpoint_dir"]):
        command += f" --checkpoint-dir {shlex.quote(str(config.checkpoint_dir))}"
    return command


# ---------------------------------------------------------------------------------------------
# Flag -> TrainingConfig field. Every training flag defaults to the TrainingConfig default.
_D = TrainingConfig.defaults()


# gptmed-train's flags, in --help order; most map one-to-one to a TrainingConfig field
TRAIN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="JSON or TOML file of settings (flags override it).",
    ),
    click.option(
        "--model-size",
        type=click.Choice(sorted(PRESETS)),
        default=None,
        help=f"Model preset.  [default: {DEFAULT_MODEL_SIZE}; on resume: the checkpoint's]",
    ),
    click.option(
        "--num-epochs",
        type=click.IntRange(min=1),
        default=None,
        help=f"Training epochs.  [default: {DEFAULT_EPOCHS}; with --time-budget: as many as fit]",
    ),
    click.option(
        "--time-budget",
        metavar="DURATION",
        default=None,
        help="Plan the run to this wall-clock time (90s, 10m, 2h): the steps, evaluations and "
        "checkpoints fit in it, and the LR schedule ends with it.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=_D["batch_size"],
        show_default=True,
        help="Sequences per micro-batch (all processes together).",
    ),
    click.option(
        "--learning-rate",
        type=float,
        default=None,
        help="Peak learning rate.  [default: chosen from the model width and batch size]",
    ),
    click.option(
        "--train-data",
        "train_data_path",
        default=_D["train_data_path"],
        show_default=True,
        help="Tokenized train.npy (metadata.json must be beside it).",
    ),
    click.option(
        "--val-data",
        "val_data_path",
        default=_D["val_data_path"],
        show_default=True,
        help="Tokenized val.npy.",
    ),
    click.option(
        "--checkpoint-dir",
        default=_D["checkpoint_dir"],
        show_default=True,
        help="Where checkpoints and metrics.jsonl go.",
    ),
    click.option(
        "--device",
        default=_D["device"],
        show_default=True,
        help="auto (CUDA when present), cpu, cuda, cuda:N, mps.",
    ),
    click.option(
        "--seed",
        type=int,
        default=_D["seed"],
        show_default=True,
        help="Random seed (init, dropout, data order).",
    ),
    click.option(
        "--quick-test",
        is_flag=True,
        help="Tiny model, 12 steps: checks the pipeline in < 1 minute (synthetic data if none).",
    ),
    click.option(
        "--resume", is_flag=True, help="Continue from the newest valid checkpoint in --checkpoint-dir."
    ),
    click.option(
        "--resume-from",
        type=click.Path(dir_okay=False),
        default=None,
        help="Continue from this checkpoint file.",
    ),
    click.option(
        "--warmup-steps",
        type=click.IntRange(min=0),
        default=None,
        help="Linear LR warmup steps.  [default: 3% of the steps, at most 100]",
    ),
    click.option(
        "--grad-clip",
        type=click.FloatRange(min=0),
        default=_D["grad_clip"],
        show_default=True,
        help="Clip the gradient norm (0 = off).",
    ),
    click.option(
        "--weight-decay",
        type=click.FloatRange(min=0),
        default=_D["weight_decay"],
        show_default=True,
        help="AdamW weight decay (matrices only).",
    ),
    click.option(
        "--eval-every",
        type=click.IntRange(min=0),
        default=_D["eval_every"],
        show_default=True,
        help="Also evaluate every N steps (0 = each epoch only).",
    ),
    click.option(
        "--save-every",
        type=click.IntRange(min=0),
        default=_D["save_every"],
        show_default=True,
        help="Also save checkpoint_step_N.pt every N steps (0 = each epoch only).",
    ),
    click.option(
        "--keep-last",
        type=click.IntRange(min=0),
        default=_D["keep_last"],
        show_default=True,
        help="Keep the newest K epoch checkpoints (0 = all) and K step checkpoints (2 when 0).",
    ),
    click.option(
        "--grad-accum",
        type=click.IntRange(min=1),
        default=_D["grad_accum"],
        show_default=True,
        help="Micro-batches per optimizer step.",
    ),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=_D["precision"],
        show_default=True,
        help="auto = bf16 on a CUDA GPU that supports it, else fp32.",
    ),
    click.option(
        "--compile/--no-compile",
        "compile_model",
        default=False,
        show_default=True,
        help="torch.compile the model.",
    ),
    click.option(
        "--padding-free/--no-padding-free",
        default=None,
        help="Drop the padding on the host and train each batch as one flat row of packed pairs.  "
        "[default: on CUDA]",
    ),
    click.option(
        "--early-stopping-patience",
        type=click.IntRange(min=0),
        default=_D["early_stopping_patience"],
        show_default=True,
        help="Stop after N evaluations without a better val loss (0 = never).",
    ),
    click.option(
        "--loss-on",
        type=click.Choice(LOSS_ON),
        default=_D["loss_on"],
        show_default=True,
        help="answer: answer tokens + EOS only; all: every non-pad token.",
    ),
    click.option(
        "--max-steps",
        type=click.IntRange(min=1),
        default=None,
        help="Stop after this many optimizer steps.",
    ),
    click.option(
        "--log-every",
        type=click.IntRange(min=1),
        default=_D["log_every"],
        show_default=True,
        help="metrics.jsonl row every N steps.",
    ),
    click.option(
        "--max-eval-batches",
        type=click.IntRange(min=1),
        default=None,
        help="Evaluate on at most N val batches.",
    ),
    click.option("--d-model", type=click.IntRange(min=1), default=None, help="Override the preset's width."),
    click.option("--n-layers", type=click.IntRange(min=1), default=None, help="Override the preset's depth."),
    click.option("--n-heads", type=click.IntRange(min=1), default=None, help="Override the preset's heads."),
    click.option("--d-ff", type=click.IntRange(min=1), default=None, help="Override the preset's MLP width."),
    click.option(
        "--dropout",
        type=click.FloatRange(0, 1, max_open=True),
        default=None,
        help="Dropout on embeddings, attention and MLP outputs.  [default: 0]",
    ),
    click.option(
        "--tensorboard",
        is_flag=True,
        help="Also log to TensorBoard (pip install 'gptmed-train[tensorboard]').",
    ),
    click.option(
        "--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal)."
    ),
    click.option("--debug", is_flag=True, help="Show tracebacks."),
]


def _train_options(f: Any) -> Any:
    for opt in reversed(TRAIN_OPTIONS):
        f = opt(f)
    return f


_RENAME = {"compile_model": "compile"}
_NOT_FIELDS = {"config_file", "debug"}


def _version() -> str:
    from gptmed.core import installed_version

    return installed_version("gptmed-train")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="gptmed-train")
@_train_options
@click.pass_context
def cli(ctx: click.Context, /, **kwargs: Any) -> None:
    """Train a gptmed GPT on tokenized Q&A data (gptmed-train --help lists every flag).

    \b
    gptmed-train --model-size small --num-epochs 10 --batch-size 16 \\
        --train-data data/tokenized/train.npy --val-data data/tokenized/val.npy
    gptmed-train --time-budget 10m # plan the run (and its settings) to ten minutes
    gptmed-train --resume          # newest valid checkpoint in --checkpoint-dir
    gptmed-train plot              # loss curves of model/checkpoints/metrics.jsonl
    """
    if ctx.invoked_subcommand is not None:
        return
    debug = bool(kwargs.get("debug"))
    explicit: set[str] = set()
    values: dict[str, Any] = {}
    with cli_errors(debug):
        if kwargs.get("config_file"):
            from_file = TrainingConfig.from_file(kwargs["config_file"])
            values.update(from_file.to_dict())
            explicit |= {k for k, v in from_file.to_dict().items() if v != _D.get(k)}
        for name, value in kwargs.items():
            if name in _NOT_FIELDS:
                continue
            field_name = _RENAME.get(name, name)
            if ctx.get_parameter_source(name) == ParameterSource.DEFAULT and field_name in values:
                continue
            if ctx.get_parameter_source(name) != ParameterSource.DEFAULT:
                explicit.add(field_name)
            values[field_name] = value
        if "train_data_path" in explicit and "val_data_path" not in explicit:
            # --train-data elsewhere: its val.npy is beside it, not in the default folder
            values["val_data_path"] = str(Path(values["train_data_path"]).parent / "val.npy")
        try:
            config = TrainingConfig.from_dict(values, source="command line")
        except ConfigError as exc:  # name the flag the user typed, not the TrainingConfig field
            flags = {_RENAME.get(p.name or "", p.name): max(p.opts, key=len) for p in ctx.command.params}
            message = re.sub(
                r"TrainingConfig\.(\w+)", lambda m: flags.get(m.group(1), m.group(0)), exc.message
            )
            raise ConfigError(message, where=exc.where, hint=exc.hint) from None
    run_with_console(config, explicit_fields=explicit, debug=debug)


@cli.command("plot")
@click.argument("metrics", required=False, default=None)
@click.option(
    "--checkpoint-dir",
    default=_D["checkpoint_dir"],
    show_default=True,
    help="Run folder holding metrics.jsonl.",
)
@click.option("-o", "--output", default=None, help="PNG to write  [default: <checkpoint-dir>/loss.png]")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def plot_cmd(metrics: str | None, checkpoint_dir: str, output: str | None, debug: bool) -> None:
    """Draw the train/val loss curves of a run (metrics.jsonl, or its folder) to a PNG."""
    from gptmed.training.metrics import plot_metrics

    with cli_errors(debug):
        src = Path(metrics) if metrics else Path(checkpoint_dir)
        out = Path(output) if output else (src if src.is_dir() else src.parent) / "loss.png"
        path = plot_metrics(src, out)
    click.echo(f"✓ Wrote {path}")
