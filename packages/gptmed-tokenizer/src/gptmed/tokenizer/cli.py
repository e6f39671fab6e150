"""``gptmed-tokenizer``: train | tokenize | encode | decode | inspect (thin: parse, call, echo).

``train`` and ``tokenize`` are also the user manual's ``python -m gptmed.tokenizer.train_tokenizer``
and ``python -m gptmed.tokenizer.tokenize_data`` and print the manual's summary blocks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from gptmed.core import DataError, ManifestError, cli_errors

RULE = "=" * 60


def _version() -> str:
    from gptmed.core import installed_version

    return installed_version("gptmed-tokenizer")


def _debug(ctx: click.Context, debug: bool) -> bool:
    parent = ctx.find_root().obj
    return debug or bool(isinstance(parent, dict) and parent.get("debug"))


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback that redraws one status line on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    shown = False

    def update(done: int, total: int) -> None:
        nonlocal shown
        shown = True
        of = f"/{total:,}" if total else ""
        click.echo(f"\r{label}: {done:,}{of} pairs", nl=False, err=True)

    try:
        yield update
    finally:
        if shown:
            click.echo("", err=True)


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")


@click.command("train")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Canonical Q&A text file ('Q: ...' / 'A: ...'; .gz accepted).",
)
@click.option(
    "--output-prefix",
    required=True,
    type=click.Path(path_type=Path),
    help="Writes PREFIX.model and PREFIX.vocab (folders are created).",
)
@click.option(
    "--vocab-size",
    default=8000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of tokens, special ids and 256 byte pieces included.",
)
@click.option(
    "--model-type",
    default="bpe",
    show_default=True,
    type=click.Choice(["bpe", "unigram"]),
    help="SentencePiece algorithm.",
)
@click.option(
    "--character-coverage",
    default=0.9995,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of characters covered by pieces; the rest use byte fallback.",
)
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(min=0), help="SentencePiece random seed."
)
@debug_option
@click.pass_context
def train_command(
    ctx: click.Context,
    input_path: Path,
    output_prefix: Path,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    seed: int,
    debug: bool,
) -> None:
    """Train a SentencePiece tokenizer on Q&A text (the manual's Step 2)."""
    from gptmed.tokenizer.training import train_tokenizer

    with cli_errors(_debug(ctx, debug)):
        if not Path(input_path).is_file():  # before the header: nothing to train on
            raise DataError("input file not found", where=str(input_path), hint="check the --input path")
        click.echo("Training SentencePiece Tokenizer")
        click.echo(RULE)
        click.echo(f"Input: {input_path}")
        click.echo(f"Output prefix: {output_prefix}")
        click.echo(f"Vocab size: {vocab_size}")
        click.echo(f"Model type: {model_type}")
        click.echo("")
        click.echo("Training tokenizer...")
        result = train_tokenizer(
            input_path, output_prefix, vocab_size, model_type, character_coverage, seed=seed
        )
        click.echo("✓ Tokenizer trained successfully!")
        click.echo(f"  Model: {output_prefix.parent / result.model_path.name}")
        click.echo(f"  Vocab: {output_prefix.parent / result.vocab_path.name}")
        click.echo(f"  Pairs: {result.pairs:,}  Time: {result.seconds:.1f}s  sha256: {result.sha256[:16]}")
        if result.kept_previous is not None:
            click.echo(
                f"  The tokenizer it replaced is kept as {output_prefix.parent / result.kept_previous.name}: "
                "models trained with it still find it"
            )


@click.command("tokenize")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Canonical Q&A text file ('Q: ...' / 'A: ...'; .gz accepted).",
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .model file from the train step.",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for train.npy, val.npy, *.mask.npy and metadata.json.",
)
@click.option(
    "--max-length",
    default=512,
    show_default=True,
    type=click.IntRange(min=2),
    help="Tokens per row (the model's context).",
)
@click.option(
    "--train-split",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Fraction of pairs for training; the rest is validation (split by question).",
)
@click.option(
    "--stride",
    default=None,
    type=click.IntRange(min=1),
    help="Step between sliding windows of a pair longer than --max-length  [default: max-length - 1]",
)
@click.option("--seed", default=42, show_default=True, type=click.IntRange(min=0), help="Split seed.")
@click.option(
    "--num-threads",
    default=None,
    type=click.IntRange(min=1),
    help="Encoding threads  [default: the CPUs available]",
)
@debug_option
@click.pass_context
def tokenize_command(
    ctx: click.Context,
    input_path: Path,
    tokenizer_path: Path,
    output_dir: Path,
    max_length: int,
    train_split: float,
    stride: int | None,
    seed: int,
    num_threads: int | None,
    debug: bool,
) -> None:
    """Tokenize Q&A text into packed train/val arrays with loss masks (the manual's Step 3)."""
    from gptmed.tokenizer.dataset import FILES, METADATA, tokenize_dataset

    with cli_errors(_debug(ctx, debug)):
        if stride is not None and stride > max_length:
            raise click.BadParameter(
                f"{stride} is larger than --max-length {max_length}", param_hint="--stride"
            )
        click.echo("Tokenizing Dataset")
        click.echo(RULE)
        click.echo(f"Input: {input_path}")
        click.echo(f"Tokenizer: {tokenizer_path}")
        click.echo(f"Max length: {max_length}")
        click.echo(f"Train split: {train_split}")
        click.echo("")
        if (Path(output_dir) / METADATA).is_file():
            click.echo(
                f"Replacing the earlier tokenization in {output_dir} (models trained on it stay as they are)"
            )
        click.echo("Processing...")
        with _progress("Encoding pairs") as progress:
            manifest = tokenize_dataset(
                input_path,
                tokenizer_path,
                output_dir,
                max_length,
                train_split,
                stride,
                seed,
                num_threads=num_threads,
                progress=progress,
            )
        click.echo("✓ Tokenization complete!")
        click.echo(f"  Train sequences: {manifest.train_sequences:,}")
        click.echo(f"  Val sequences: {manifest.val_sequences:,}")
        click.echo(f"  Pairs: {manifest.train_pairs:,} train, {manifest.val_pairs:,} val")
        pairs = manifest.train_pairs + manifest.val_pairs
        if manifest.extra.get("long_pairs"):
            click.echo(
                f"  Pairs longer than {max_length} tokens: {manifest.extra['long_pairs']:,} of {pairs:,} "
                f"(cut into windows; longest {int(manifest.extra.get('longest_pair_tokens', 0)):,} tokens)"
            )
            if manifest.stride == max_length:
                click.echo(
                    f"  Warning: --stride {max_length} = --max-length: the first token of each later window "
                    f"is context only, so {manifest.extra['untrained_window_tokens']:,} answer token(s) are "
                    f"nobody's target (the default, {max_length - 1}, overlaps windows by that token)",
                    err=True,
                )
        if manifest.extra.get("questions_over_max_length"):
            click.echo(
                f"  Warning: {manifest.extra['questions_over_max_length']:,} question(s) fill all {max_length} "
                "tokens: a model with this context cannot answer them (raise --max-length)",
                err=True,
            )
        click.echo("  Files created:")
        for name in ("train", "val", "train_mask", "val_mask"):
            click.echo(f"    - {output_dir / FILES[name]}")
        click.echo(f"    - {output_dir / METADATA}")


@click.command("encode")
@click.option(
    "-t",
    "--tokenizer",
    "tokenizer_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .model file.",
)
@click.option("--pieces", is_flag=True, help="Print pieces instead of ids.")
@click.option("--prompt", is_flag=True, help="Encode TEXT as a question: [bos] + 'Q: TEXT\\nA:'.")
@click.argument("text", required=False)
@debug_option
@click.pass_context
def encode_command(
    ctx: click.Context, tokenizer_path: Path, pieces: bool, prompt: bool, text: str | None, debug: bool
) -> None:
    """Print the ids of TEXT (read from stdin when omitted), space-separated."""
    from gptmed.tokenizer.tokenizer import Tokenizer

    with cli_errors(_debug(ctx, debug)):
        tok = Tokenizer(tokenizer_path)
        if text is None:
            text = sys.stdin.read()
        ids = tok.encode_prompt(text) if prompt else tok.encode(text)
        if pieces:
            click.echo(" ".join(repr(tok.id_to_piece(i))[1:-1] for i in ids))
        else:
            click.echo(" ".join(map(str, ids)))


@click.command("decode")
@click.option(
    "-t",
    "--tokenizer",
    "tokenizer_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .model file.",
)
@click.argument("ids", nargs=-1)
@debug_option
@click.pass_context
def decode_command(ctx: click.Context, tokenizer_path: Path, ids: tuple[str, ...], debug: bool) -> None:
    """Print the text of IDS (integers; read from stdin when omitted). Special ids print nothing."""
    from gptmed.tokenizer.tokenizer import Tokenizer

    with cli_errors(_debug(ctx, debug)):
        tok = Tokenizer(tokenizer_path)
        words = list(ids) if ids else sys.stdin.read().replace(",", " ").split()
        values: list[int] = []
        for w in words:
            try:
                values.append(int(w))
            except ValueError:
                raise click.BadParameter(f"{w!r} is not an integer token id", param_hint="IDS") from None
        click.echo(tok.decode(values))


def _inspect_dataset(path: Path) -> dict[str, Any]:
    from gptmed.core import DatasetManifest
    from gptmed.tokenizer.dataset import load_npy

    folder = path.parent if path.is_file() else path
    manifest = DatasetManifest.load(folder / "metadata.json")
    info: dict[str, Any] = {"kind": "dataset", "folder": str(folder), **manifest.to_dict(), "arrays": {}}
    for role, name in manifest.files.items():
        file = folder / name
        if not file.exists():
            raise ManifestError(f"{name} listed in metadata.json is missing", where=str(folder))
        arr = load_npy(file, "r")
        info["arrays"][role] = {"file": name, "shape": list(arr.shape), "dtype": arr.dtype.name}
    return info


def _show(value: object) -> str:
    """Strings with newlines or tabs are shown quoted, so that each fact stays on one line."""
    if isinstance(value, str) and any(c in value for c in "\n\r\t"):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--text", default=None, help="Also show how TEXT tokenizes (for a .model).")
@debug_option
@click.pass_context
def inspect_command(ctx: click.Context, path: Path, as_json: bool, text: str | None, debug: bool) -> None:
    """Describe a tokenizer .model, or a tokenized dataset folder (its metadata.json and arrays)."""
    from gptmed.tokenizer.tokenizer import Tokenizer

    with cli_errors(_debug(ctx, debug)):
        if path.is_dir() or path.name == "metadata.json":
            info = _inspect_dataset(path)
        else:
            tok = Tokenizer(path)
            info = {"kind": "tokenizer", **tok.info()}
            if text is not None:
                info["example"] = {"text": text, "ids": tok.encode(text), "pieces": tok.pieces(text)}
        if as_json:
            click.echo(json.dumps(info, indent=2, ensure_ascii=False))
            return
        for key, value in info.items():
            if isinstance(value, dict):
                click.echo(f"{key}:")
                for k, v in value.items():
                    click.echo(f"  {k}: {_show(v)}")
            else:
                click.echo(f"{key}: {_show(value)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="gptmed-tokenizer")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train SentencePiece tokenizers on Q&A text and tokenize Q&A datasets for gptmed-train."""
    ctx.obj = {"debug": debug}
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


cli.add_command(train_command)
cli.add_command(tokenize_command)
cli.add_command(encode_command)
cli.add_command(decode_command)
cli.add_command(inspect_command)


def main(prog_name: str | None = None) -> None:
    """Entry point of the ``gptmed-tokenizer`` console script."""
    cli.main(prog_name=prog_name or "gptmed-tokenizer")
