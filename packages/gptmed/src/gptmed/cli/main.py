"""The umbrella ``gptmed`` command: ``pipeline``, ``quickstart``, and every installed component's CLI.

Component commands are found from the installed gptmed distributions' ``gptmed.commands`` entry
points (each names the click command behind a console script: ``gptmed-data`` is ``gptmed data``),
so an install with only some components lists only what it has. They load lazily: ``gptmed --help``
imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from gptmed.core import (
    PRESETS,
    cli_errors,
    installed_version,
    missing_folders,
    parse_duration,
    remove_empty_folders,
)

__all__ = ["component_commands", "main"]

_COMPONENTS = ("gptmed-data", "gptmed-tokenizer", "gptmed-model", "gptmed-train", "gptmed-infer")
# The component subcommands this umbrella knows: the distribution each comes with (named when it
# is not installed) and its one-line help (the distribution summary is the fallback for others).
_KNOWN = {
    "data": ("gptmed-data", "Convert (cleaning on the way), validate, count, split Q&A data"),
    "tokenizer": ("gptmed-tokenizer", "Train a SentencePiece tokenizer; tokenize Q&A data"),
    "model": ("gptmed-model", "Model sizes and info"),
    "train": ("gptmed-train", "Train, resume, plot"),
    "infer": ("gptmed-infer", "Export to ONNX, evaluate, serve"),
    "generate": ("gptmed-infer", "Answer questions from a bundle or checkpoint"),
}
# The modules `gptmed pipeline` / `gptmed quickstart` run, and the distribution of each.
_PIPELINE_MODULES = {
    "gptmed.data": "gptmed-data",
    "gptmed.tokenizer": "gptmed-tokenizer",
    "gptmed.model": "gptmed-model",
    "gptmed.training": "gptmed-train",
    "gptmed.inference": "gptmed-infer",
    "onnx": "gptmed-infer[export]",
}


def _require_pipeline_components(command: str) -> None:
    """One line naming what is missing, before any step runs (not a ModuleNotFoundError midway)."""
    missing = [dist for module, dist in _PIPELINE_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise click.ClickException(
            f"gptmed {command} needs {', '.join(missing)}, not installed here; "
            "install every component with: pip install gptmed"
        )


def component_commands() -> dict[str, tuple[md.EntryPoint, str]]:
    """Installed component CLIs: subcommand name -> (its ``gptmed.commands`` entry point, the
    distribution summary). The console script ``gptmed-NAME`` runs the same click command."""
    found: dict[str, tuple[md.EntryPoint, str]] = {}
    for dist_name in _COMPONENTS:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue
        summary = dist.metadata["Summary"] or dist_name
        for ep in dist.entry_points:
            if ep.group == "gptmed.commands":
                found[ep.name] = (ep, summary)
    return dict(sorted(found.items()))


def _load(name: str, ep: md.EntryPoint) -> click.Command:
    loaded = ep.load()
    if not isinstance(loaded, click.Command):
        raise click.ClickException(
            f"the gptmed.commands entry point {name!r} ({ep.value}) is not a click command; "
            "reinstall that gptmed component"
        )
    return loaded


class _Umbrella(click.Group):
    """A group whose component subcommands are loaded only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(component_commands()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        own = super().get_command(ctx, cmd_name)
        if own is not None:
            return own
        entry = component_commands().get(cmd_name)
        if entry is None:
            if cmd_name in _KNOWN:
                dist = _KNOWN[cmd_name][0]
                raise click.ClickException(
                    f"`gptmed {cmd_name}` comes with {dist}, which is not installed: pip install {dist}"
                )
            return None
        return _load(cmd_name, entry[0])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, cmd.get_short_help_str(60)) for n, cmd in sorted(self.commands.items()) if not cmd.hidden]
        rows += [
            (name, f"{_KNOWN[name][1]} ({_KNOWN[name][0]})." if name in _KNOWN else summary)
            for name, (_, summary) in component_commands().items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@contextlib.contextmanager
def _training_signals(debug: bool) -> Iterator[None]:
    """SIGINT/SIGTERM during the training step: one line naming the saved checkpoint and how to
    continue, exit 128 + signum (gptmed-train's own contract; the step raised TrainingInterrupted)."""
    from gptmed.training.errors import TrainingInterrupted  # installed: _require_pipeline_components

    try:
        yield
    except TrainingInterrupted as exc:
        if debug:
            raise
        click.echo(exc.report("Rerun the same command to continue from it."), err=True)
        sys.exit(exc.exit_code)


@contextlib.contextmanager
def _no_empty_output(out: Path) -> Iterator[None]:
    """A run that fails before writing anything removes the output folders it created (a failed
    first step left an empty ``--out`` folder behind)."""
    made = missing_folders(out)
    try:
        yield
    except BaseException:
        remove_empty_folders(made)
        raise


@click.group(cls=_Umbrella, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(installed_version("gptmed"), prog_name="gptmed")
def main() -> None:
    """gptmed: train a GPT on your Q&A pairs and serve it without PyTorch."""


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--time-budget`` in seconds (90s, 10m, 2h); a bad value is a usage error naming it."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", "out", type=click.Path(path_type=Path), required=True, help="Folder for every artifact."
)
@click.option("--format", "input_format", default=None, help="Input format (default: detected).")
@click.option("--question-field", default=None, help="Field/column with the question (default: detected).")
@click.option("--answer-field", default=None, help="Field/column with the answer (default: detected).")
@click.option("--table", default=None, help="SQLite table to read.")
@click.option("--query", default=None, help="SQLite: a SELECT whose columns hold the question and answer.")
@click.option("--records-key", default=None, help="JSON: read the list under this key of a top-level object.")
@click.option("--encoding", default=None, help="Text encoding of the input (default: utf-8; e.g. cp1252).")
@click.option("--delimiter", default=None, help="CSV/TSV field separator (default: detected).")
@click.option("--skip-invalid", is_flag=True, help="Skip and count invalid input records.")
@click.option(
    "--model-size",
    type=click.Choice(sorted(PRESETS)),
    default=None,
    help="Model preset.  [default: the largest the corpus (and --time-budget, on this machine) can feed]",
)
@click.option(
    "--time-budget",
    metavar="DURATION",
    default=None,
    callback=_duration,
    help="Plan training to this wall-clock time (90s, 10m, 2h); also picks the model size.",
)
@click.option(
    "--num-epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Training epochs.  [default: 10; with --time-budget: as many as fit]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--learning-rate",
    type=float,
    default=None,
    help="Peak LR.  [default: chosen from the model width and batch]",
)
@click.option(
    "--vocab-size", type=click.IntRange(min=64), default=None, help="Default: from corpus statistics."
)
@click.option(
    "--max-length", type=click.IntRange(min=8), default=None, help="Default: from tokenized pair lengths."
)
@click.option("--test-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also export an int8 graph.")
@click.option("--force", is_flag=True, help="Rerun every step, even the current ones.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def pipeline(
    input_path: Path,
    out: Path,
    input_format: str | None,
    question_field: str | None,
    answer_field: str | None,
    table: str | None,
    query: str | None,
    records_key: str | None,
    encoding: str | None,
    delimiter: str | None,
    skip_invalid: bool,
    model_size: str | None,
    time_budget: float | None,
    num_epochs: int | None,
    batch_size: int,
    learning_rate: float | None,
    vocab_size: int | None,
    max_length: int | None,
    test_fraction: float,
    device: str,
    seed: int,
    quantize: str | None,
    force: bool,
    debug: bool,
) -> None:
    """Convert -> tokenizer -> tokenize -> train -> export -> evaluate, skipping current steps.

    Every artifact lands in OUT; rerunning after a crash continues where it stopped.
    """
    _require_pipeline_components("pipeline")
    from gptmed.cli.pipeline import PipelineOptions, run_pipeline

    options = PipelineOptions(
        input=input_path,
        out=out,
        input_format=input_format,
        question_field=question_field,
        answer_field=answer_field,
        table=table,
        query=query,
        records_key=records_key,
        encoding=encoding,
        delimiter=delimiter,
        skip_invalid=skip_invalid,
        model_size=model_size,
        time_budget=time_budget,
        num_epochs=num_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        vocab_size=vocab_size,
        max_length=max_length,
        test_fraction=test_fraction,
        device=device,
        seed=seed,
        quantize=quantize,
        force=force,
    )
    with cli_errors(debug), _training_signals(debug), _no_empty_output(out):
        result = run_pipeline(options, echo=click.echo)
    click.echo(f"\n✓ Bundle: {result.bundle}")
    click.echo(f'  Try it: gptmed-generate --checkpoint {result.bundle} --prompt "..."')


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("gptmed-quickstart"), show_default=True)
@click.option(
    "--num-epochs", type=click.IntRange(min=1), default=None, help="Training epochs.  [default: 40]"
)
@click.option(
    "--time-budget",
    metavar="DURATION",
    default=None,
    callback=_duration,
    help="Plan training to this wall-clock time (90s, 10m) instead of a number of epochs.",
)
@click.option("--questions", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--force", is_flag=True, help="Rerun every step, even the current ones.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def quickstart(
    out: Path, num_epochs: int | None, time_budget: float | None, questions: int, force: bool, debug: bool
) -> None:
    """The whole pipeline on the embedded sample (tiny model), then a few questions answered."""
    _require_pipeline_components("quickstart")
    from gptmed.cli.quickstart import run_quickstart

    with cli_errors(debug), _training_signals(debug), _no_empty_output(out):
        result = run_quickstart(
            out,
            num_epochs=num_epochs,
            time_budget=time_budget,
            questions=questions,
            force=force,
            echo=click.echo,
        )
    click.echo(
        f"\nThe exported bundle (onnxruntime, no torch) answers {result.exact} of {result.asked} "
        "training questions word for word (greedy). A few of them:"
    )
    for question, expected, answer in result.answers:
        mark = "✓" if answer.strip() == expected else "✗"
        click.echo(f"\nQ: {question}\nA: {answer}\n   {mark} sample: {expected}")


@main.command("cli-reference", hidden=True)
def cli_reference() -> None:
    """Print docs/cli-reference.md (generated from every installed gptmed command)."""
    from gptmed.cli.reference import render_cli_reference

    commands: dict[str, click.Command] = {"gptmed": main}
    for name, (ep, _) in component_commands().items():
        commands[f"gptmed-{name}"] = _load(name, ep)  # its console script's name
    click.echo(render_cli_reference(commands), nl=False)
