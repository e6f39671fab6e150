"""The ``gptmed-data`` command: thin click wrappers over the library functions."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from gptmed.core import cli_errors
from gptmed.data.clean import _plural

if TYPE_CHECKING:
    from gptmed.data.readers import ReadProgress

F = TypeVar("F", bound=Callable[..., Any])

_FORMATS = ("txt", "json", "jsonl", "csv", "tsv", "sqlite", "parquet")


def _debug_option(f: F) -> F:
    return click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")(f)


def _input_options(f: F) -> F:
    """The options that say how to read an input file (shared by convert/validate/stats/split).

    Each of those commands names them as parameters (``format_``, ``question_field``, ...) and
    passes each by name to its library call."""
    options = [
        click.option(
            "--format",
            "format_",
            type=click.Choice(_FORMATS),
            help="Input format (default: from the file name, else its content).",
        ),
        click.option(
            "--question-field",
            help="Field/column holding the question (default: question, q, input, prompt, query, instruction).",
        ),
        click.option(
            "--answer-field",
            help="Field/column holding the answer (default: answer, a, output, response, completion, reply).",
        ),
        click.option(
            "--table", help="SQLite: the table to read (default: the one table with question/answer columns)."
        ),
        click.option("--query", help="SQLite: a SELECT whose result columns hold the question and answer."),
        click.option("--records-key", help="JSON: read the list under this key of a top-level object."),
        click.option(
            "--encoding",
            default="utf-8",
            show_default=True,
            help="Text encoding of the input (decoding is strict).",
        ),
        click.option(
            "--skip-invalid",
            is_flag=True,
            help="Skip and count invalid records instead of stopping at the first.",
        ),
        click.option(
            "--unicode-normalize", type=click.Choice(["NFC", "NFKC"]), help="Unicode-normalise both fields."
        ),
        click.option(
            "--delimiter",
            help="CSV/TSV: the field separator (default: tab for TSV; for CSV the one of , ; tab | that splits the header most).",
        ),
        click.option(
            "--max-field-chars",
            type=click.IntRange(min=1),
            default=1_000_000,
            show_default=True,
            help="CSV/TSV: longest field accepted.",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


class _ProgressBar:
    """A tqdm bar on stderr fed by a reader's progress callback: bytes of the input with rate and
    ETA (records and rate for SQLite and Parquet, whose size says nothing); one bar per stage
    (split's two passes). Drawn only on a terminal (``disable=None``): quiet in CI and pipes."""

    def __init__(self) -> None:
        self._bar: Any = None  # tqdm, imported on first use (gptmed-data --help stays fast)
        self._stage = ""

    def __call__(self, now: ReadProgress) -> None:
        if self._bar is None or now.stage != self._stage:
            self.close()
            self._stage = now.stage
            self._bar = _new_bar(now)
        if now.bytes_read is not None:
            self._bar.set_postfix_str(_plural(now.records, "record"), refresh=False)
        done = now.records if now.bytes_read is None else now.bytes_read
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _new_bar(now: ReadProgress) -> Any:
    from tqdm import tqdm

    by_bytes = now.bytes_read is not None
    return tqdm(
        desc=now.stage,
        total=now.total_bytes if by_bytes else None,
        unit="B" if by_bytes else " records",
        unit_scale=True,
        disable=None,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _setup(ctx: click.Context, debug: bool) -> bool:
    debug = debug or bool(ctx.obj and ctx.obj.get("debug"))
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    return debug


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptmed-data", prog_name="gptmed-data")
@_debug_option
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Convert (cleaning on the way), validate, count and split Q&A data for gptmed.

    INPUT/FILE may be - (standard input) or a pipe; cleaning is done by convert's options
    (--dedupe, --min/max-answer-words/chars, --unicode-normalize, --skip-invalid).
    """
    ctx.obj = {"debug": debug}


@main.command()
@click.argument("input", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (.txt canonical Q&A text, .jsonl JSON lines).",
)
@click.option(
    "--output-format",
    type=click.Choice(["txt", "jsonl"]),
    help="Output format (default: from the -o extension).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--dedupe",
    type=click.Choice(["none", "exact", "normalized"]),
    default="none",
    show_default=True,
    help="Drop duplicate pairs.",
)
@click.option("--min-answer-words", type=click.IntRange(min=0), help="Drop answers with fewer words.")
@click.option("--max-answer-words", type=click.IntRange(min=0), help="Drop answers with more words.")
@click.option("--min-answer-chars", type=click.IntRange(min=0), help="Drop answers with fewer characters.")
@click.option("--max-answer-chars", type=click.IntRange(min=0), help="Drop answers with more characters.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_input_options
@_debug_option
@click.pass_context
def convert(
    ctx: click.Context,
    /,
    input: Path,
    output: Path,
    output_format: str | None,
    overwrite: bool,
    dedupe: str,
    min_answer_words: int | None,
    max_answer_words: int | None,
    min_answer_chars: int | None,
    max_answer_chars: int | None,
    as_json: bool,
    format_: str | None,
    question_field: str | None,
    answer_field: str | None,
    table: str | None,
    query: str | None,
    records_key: str | None,
    encoding: str,
    skip_invalid: bool,
    unicode_normalize: str | None,
    delimiter: str | None,
    max_field_chars: int,
    debug: bool,
) -> None:
    """Convert INPUT (txt, json, jsonl, csv, tsv, sqlite; - for standard input) to canonical Q&A text or JSONL."""
    from gptmed.data.conversion import convert as run

    with cli_errors(_setup(ctx, debug)):
        try:
            with _ProgressBar() as bar:
                report = run(
                    input,
                    output,
                    output_format=output_format,
                    overwrite=overwrite,
                    progress=bar,
                    dedupe=dedupe,
                    min_answer_words=min_answer_words,
                    max_answer_words=max_answer_words,
                    min_answer_chars=min_answer_chars,
                    max_answer_chars=max_answer_chars,
                    format=format_,
                    question_field=question_field,
                    answer_field=answer_field,
                    table=table,
                    query=query,
                    records_key=records_key,
                    encoding=encoding,
                    skip_invalid=skip_invalid,
                    unicode_normalize=unicode_normalize,
                    delimiter=delimiter,
                    max_field_chars=max_field_chars,
                )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--max-problems",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="List at most this many invalid records.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_input_options
@_debug_option
@click.pass_context
def validate(
    ctx: click.Context,
    /,
    file: Path,
    max_problems: int,
    as_json: bool,
    format_: str | None,
    question_field: str | None,
    answer_field: str | None,
    table: str | None,
    query: str | None,
    records_key: str | None,
    encoding: str,
    skip_invalid: bool,
    unicode_normalize: str | None,
    delimiter: str | None,
    max_field_chars: int,
    debug: bool,
) -> None:
    """Check FILE; list invalid records with their line/record numbers. Exit 1 on any error.

    The report goes to standard output; an error that stops reading (encoding, syntax, no
    records) is also the one-line "Error: ..." on standard error.
    """
    from gptmed.data.stats import validate as run

    del skip_invalid  # validate always reads past invalid records to list them all
    with cli_errors(_setup(ctx, debug)), _ProgressBar() as bar:
        report = run(
            file,
            max_problems=max_problems,
            progress=bar,
            format=format_,
            question_field=question_field,
            answer_field=answer_field,
            table=table,
            query=query,
            records_key=records_key,
            encoding=encoding,
            unicode_normalize=unicode_normalize,
            delimiter=delimiter,
            max_field_chars=max_field_chars,
        )
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text(fatal=False))
    if report.fatal:
        click.echo(f"Error: {report.fatal}", err=True)
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@_input_options
@_debug_option
@click.pass_context
def stats(
    ctx: click.Context,
    /,
    file: Path,
    as_json: bool,
    format_: str | None,
    question_field: str | None,
    answer_field: str | None,
    table: str | None,
    query: str | None,
    records_key: str | None,
    encoding: str,
    skip_invalid: bool,
    unicode_normalize: str | None,
    delimiter: str | None,
    max_field_chars: int,
    debug: bool,
) -> None:
    """Pairs, length percentiles (words), duplicates, empty, short (<10 words) and long (>500) answers.

    Stops at the first invalid record like convert; --skip-invalid counts them by reason instead.
    """
    from gptmed.data.stats import compute_stats

    with cli_errors(_setup(ctx, debug)), _ProgressBar() as bar:
        report = compute_stats(
            file,
            progress=bar,
            format=format_,
            question_field=question_field,
            answer_field=answer_field,
            table=table,
            query=query,
            records_key=records_key,
            encoding=encoding,
            skip_invalid=skip_invalid,
            unicode_normalize=unicode_normalize,
            delimiter=delimiter,
            max_field_chars=max_field_chars,
        )
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for train/val/test files.",
)
@click.option(
    "--val",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of questions for val.",
)
@click.option(
    "--test",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Fraction of questions for test.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Shuffle seed.")
@click.option("--output-format", type=click.Choice(["txt", "jsonl"]), default="txt", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing split files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_input_options
@_debug_option
@click.pass_context
def split(
    ctx: click.Context,
    /,
    file: Path,
    out_dir: Path,
    val: float,
    test: float,
    seed: int,
    output_format: str,
    overwrite: bool,
    as_json: bool,
    format_: str | None,
    question_field: str | None,
    answer_field: str | None,
    table: str | None,
    query: str | None,
    records_key: str | None,
    encoding: str,
    skip_invalid: bool,
    unicode_normalize: str | None,
    delimiter: str | None,
    max_field_chars: int,
    debug: bool,
) -> None:
    """Split FILE into train/val/test by normalised question (no question in two splits)."""
    from gptmed.data.splitting import split as run

    with cli_errors(_setup(ctx, debug)):
        try:
            with _ProgressBar() as bar:
                report = run(
                    file,
                    out_dir,
                    val=val,
                    test=test,
                    seed=seed,
                    output_format=output_format,
                    overwrite=overwrite,
                    progress=bar,
                    format=format_,
                    question_field=question_field,
                    answer_field=answer_field,
                    table=table,
                    query=query,
                    records_key=records_key,
                    encoding=encoding,
                    skip_invalid=skip_invalid,
                    unicode_normalize=unicode_normalize,
                    delimiter=delimiter,
                    max_field_chars=max_field_chars,
                )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Training pairs (canonical Q&A text).",
)
@click.option(
    "--facts", type=click.IntRange(min=1), default=200, show_default=True, help="Number of invented facts."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--heldout-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Held-out phrasings (canonical Q&A text).",
)
@click.option(
    "--phrasings", type=click.IntRange(1, 5), default=4, show_default=True, help="Phrasings per fact."
)
@click.option(
    "--heldout-per-fact",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Phrasings per fact held out.",
)
@click.option("--overwrite", is_flag=True)
@_debug_option
@click.pass_context
def synth(
    ctx: click.Context,
    out: Path,
    facts: int,
    seed: int,
    heldout_out: Path | None,
    phrasings: int,
    heldout_per_fact: int,
    overwrite: bool,
    debug: bool,
) -> None:
    """Generate a deterministic, learnable fact Q&A set (invented places and attributes)."""
    from gptmed.data.synthetic import synth as run

    with cli_errors(_setup(ctx, debug)):
        try:
            data = run(facts, seed, phrasings_per_fact=phrasings, heldout_per_fact=heldout_per_fact)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        data.write(out, heldout_out, overwrite=overwrite)
    held = f", {_plural(len(data.heldout), 'held-out pair')} -> {heldout_out}" if heldout_out else ""
    click.echo(
        f"{_plural(len(data.facts), 'fact')}: {_plural(len(data.train), 'training pair')} -> {out}{held}"
    )


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Copy the sample to this file (- for standard output).",
)
@click.option("--info", is_flag=True, help="Print the number of pairs and the license.")
@click.option("--path", "show_path", is_flag=True, help="Print the path of the embedded sample.")
@click.option("--overwrite", is_flag=True)
@_debug_option
@click.pass_context
def sample(
    ctx: click.Context, output: Path | None, info: bool, show_path: bool, overwrite: bool, debug: bool
) -> None:
    """The embedded sample dataset: copy it out (-o FILE), --info, or --path."""
    from gptmed.data.sample import copy_sample, sample_info, sample_path

    if not (output or info or show_path):
        raise click.UsageError("pass -o FILE, --info or --path")
    with cli_errors(_setup(ctx, debug)):
        if show_path:
            click.echo(str(sample_path()))
        if info:
            click.echo(sample_info().to_text())
        if output == Path("-"):  # standard output, not a file named "-"
            click.echo(sample_path().read_text(encoding="utf-8"), nl=False)
        elif output:
            copy_sample(output, overwrite=overwrite)
            click.echo(f"copied the sample to {output}")


if __name__ == "__main__":  # pragma: no cover
    main()
