"""``gptmed-model``: model sizes and facts. Thin: parse, call one library function, echo."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click
from gptmed.core.config import DEFAULT_MODEL_SIZE, PRESETS, get_config
from gptmed.core.errors import cli_errors
from gptmed.core.manifests import installed_version

_F = TypeVar("_F", bound=Callable[..., Any])


def _version() -> str:
    return installed_version("gptmed-model")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="gptmed-model")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """gptmed's GPT model: preset sizes, FLOPs, memory, and which attention kernel runs."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


_common: list[Callable[[Any], Any]] = [
    click.option(
        "--vocab-size",
        type=click.IntRange(min=8),
        default=8000,
        show_default=True,
        help="Tokenizer vocabulary size.",
    ),
    click.option(
        "--max-seq-len",
        type=click.IntRange(min=1),
        default=512,
        show_default=True,
        help="Context length (max_seq_len).",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=16,
        show_default=True,
        help="Batch size for the training-memory estimate.",
    ),
    click.option(
        "--seq-len",
        type=click.IntRange(min=1),
        default=None,
        help="Sequence length for FLOPs and memory (default: --max-seq-len).",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["fp32", "bf16", "fp16"]),
        default="fp32",
        show_default=True,
        help="Weight / activation precision for the memory columns.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
]


def _apply(options: list[Callable[[Any], Any]]) -> Callable[[_F], _F]:
    def deco(f: _F) -> _F:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


@main.command()
@_apply(_common)
@click.pass_context
def sizes(
    ctx: click.Context,
    vocab_size: int,
    max_seq_len: int,
    batch_size: int,
    seq_len: int | None,
    dtype: str,
    as_json: bool,
) -> None:
    """Table of the presets: parameters, FLOPs per token, memory for weights and for training."""
    from gptmed.model.sizes import format_size_table, preset_reports

    with cli_errors(ctx.obj["debug"]):
        reports = preset_reports(
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            batch_size=batch_size,
            seq_len=seq_len,
            dtype=dtype,
        )
        if as_json:
            click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            click.echo(format_size_table(reports))


@main.command()
@click.option(
    "--model-size",
    type=click.Choice(sorted(PRESETS)),
    default=DEFAULT_MODEL_SIZE,
    show_default=True,
    help="Preset to describe.",
)
@_apply(_common)
@click.pass_context
def info(
    ctx: click.Context,
    model_size: str,
    vocab_size: int,
    max_seq_len: int,
    batch_size: int,
    seq_len: int | None,
    dtype: str,
    as_json: bool,
) -> None:
    """Config, parameter count, FLOPs and memory of one preset, and the attention backend."""
    from gptmed.model.attention import backend_reason
    from gptmed.model.sizes import size_report

    with cli_errors(ctx.obj["debug"]):
        config = get_config(model_size, vocab_size=vocab_size, max_seq_len=max_seq_len)
        report = size_report(config, name=model_size, batch_size=batch_size, seq_len=seq_len, dtype=dtype)
        data = {
            "model_size": model_size,
            "config": config.to_dict(),
            **report.to_dict(),
            "attention_backend": backend_reason(),
        }
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"model size: {model_size}")
        for key, value in config.to_dict().items():
            click.echo(f"  {key}: {value}")
        click.echo(f"  head_dim: {config.head_dim}")
        click.echo(f"parameters: {report.params:,} ({report.non_embedding_params:,} non-embedding)")
        click.echo(
            f"FLOPs/token at T={report.seq_len}: {report.fwd_flops_per_token:,} forward, "
            f"{report.train_flops_per_token:,} training"
        )
        click.echo(f"weights ({dtype}): {report.weights_bytes / 2**20:,.1f} MiB")
        click.echo(
            f"training memory at batch {report.batch_size} x {report.seq_len}: "
            f"~{report.train_bytes / 2**20:,.0f} MiB (activations ~{report.activation_bytes / 2**20:,.0f} MiB)"
        )
        click.echo(f"attention backend: {data['attention_backend']}")


if __name__ == "__main__":  # pragma: no cover
    main()
