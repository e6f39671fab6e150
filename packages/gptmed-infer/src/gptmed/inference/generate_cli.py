"""``gptmed-generate``: answer questions from a bundle (onnxruntime) or a .pt checkpoint (torch)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from gptmed.core import GptmedError, cli_errors
from gptmed.inference import __version__
from gptmed.inference.cli_common import (
    DEFAULT_CHECKPOINT,
    open_generator,
    threads_option,
)


def _read_prompts(source: str, required: bool = True) -> list[str]:
    """The questions of ``source`` (a file or '-'), one a line; none is an error when ``required``
    (a --prompts-file given), and an empty list otherwise (stdin read because nothing was given)."""
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise GptmedError(
                f"not valid UTF-8 (byte offset {exc.start})", where=source, hint="save it as UTF-8"
            ) from None
    text = text.removeprefix("\ufeff")  # a BOM (Windows editors) is not part of the first question
    questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions and required:
        raise GptmedError(
            f"no questions ({'only blank lines' if text else 'it is empty'})",
            where="stdin" if source == "-" else source,
            hint="write one question per line",
        )
    return questions


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` in a --stop value; any other backslash stays as typed."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class _Sampling:
    """gptmed-generate's sampling flags; ``None`` leaves the bundle's default (stop: ``None`` too)."""

    max_length: int | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    repetition_penalty: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    no_repeat_ngram_size: int | None
    seed: int | None
    stop: tuple[str, ...] | None

    def settings(self) -> dict[str, Any]:
        """The flags the user gave, by GenerationConfig field name (``None``: the bundle's default)."""
        return {
            "max_length": self.max_length,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "seed": self.seed,
            "stop": self.stop,
        }

    def answers(self, gen: Any, prompts: list[str]) -> list[str]:
        """``gen.generate_batch(prompts)`` with these settings."""
        answers: list[str] = gen.generate_batch(prompts, **self.settings())
        return answers

    def stream(self, gen: Any, prompt: str) -> Iterator[str]:
        """``gen.stream(prompt)`` with these settings."""
        pieces: Iterator[str] = gen.stream(prompt, **self.settings())
        return pieces


@dataclass(frozen=True)
class _Output:
    """How gptmed-generate prints: ``flags`` questions came from --prompt (the rest from a file)."""

    flags: int
    stream: bool
    as_json: bool
    batch_size: int


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--checkpoint",
    default=DEFAULT_CHECKPOINT,
    show_default=True,
    help="A .pt checkpoint (torch backend), an exported bundle folder or its model.onnx.",
)
@click.option(
    "--tokenizer",
    default=None,
    help="SentencePiece .model; default: the one recorded with the checkpoint/bundle (sha256-checked).",
)
@click.option("--prompt", "prompts", multiple=True, help="Question to answer (repeatable).")
@click.option(
    "--prompts-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="File with one question per line ('-' = stdin); answers are printed as Q&A text.",
)
@click.option("--interactive", "-i", is_flag=True, help="Ask questions one after another (Ctrl-D to quit).")
@click.option(
    "--max-length", type=click.IntRange(min=1), default=None, help="Maximum new tokens [default: 100]."
)
@click.option(
    "--temperature", type=float, default=None, help="0 = greedy; higher = more random [default: 0.7]."
)
@click.option(
    "--top-k", type=int, default=None, help="Sample from the k most likely tokens; 0 = all [default: 50]."
)
@click.option(
    "--top-p", type=float, default=None, help="Nucleus sampling threshold in (0, 1] [default: 0.9]."
)
@click.option(
    "--repetition-penalty", type=float, default=None, help=">1 discourages tokens already seen (CTRL)."
)
@click.option(
    "--frequency-penalty",
    type=click.FloatRange(-2, 2),
    default=None,
    help="Subtracted from a token's logit per earlier use in the answer [default: 0.5].",
)
@click.option(
    "--presence-penalty",
    type=click.FloatRange(-2, 2),
    default=None,
    help="Subtracted from a token's logit once the answer holds it [default: 0].",
)
@click.option(
    "--no-repeat-ngram-size",
    type=click.IntRange(min=0),
    default=None,
    help="n > 0: the answer never repeats an n-gram of tokens; 0 = off [default: 0].",
)
@click.option("--seed", type=int, default=None, help="Fix sampling: the same seed gives the same text.")
@click.option(
    "--stop", multiple=True, help="Stop before this string (repeatable; \\n escapes work). Default: \\nQ:"
)
@click.option("--stream/--no-stream", default=False, help="Print the answer while it is generated.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Questions per batch with --prompts-file.",
)
@click.option("--int8", is_flag=True, help="Use the bundle's int8 graph (model.int8.onnx).")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per answer (prompt, answer).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="gptmed-generate")
def generate_main(
    checkpoint: str,
    tokenizer: str | None,
    prompts: tuple[str, ...],
    prompts_file: str | None,
    interactive: bool,
    max_length: int | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float | None,
    frequency_penalty: float | None,
    presence_penalty: float | None,
    no_repeat_ngram_size: int | None,
    seed: int | None,
    stop: tuple[str, ...],
    stream: bool,
    batch_size: int,
    int8: bool,
    threads: int | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Answer questions with a trained gptmed model (bundle: onnxruntime, no torch; .pt: torch)."""
    with cli_errors(debug):
        questions = list(prompts)
        if prompts_file:
            questions += _read_prompts(prompts_file)
        elif not questions and not interactive and not sys.stdin.isatty():
            questions += _read_prompts("-", required=False)
        if not questions and not interactive:
            raise click.UsageError(
                "give --prompt TEXT, --prompts-file FILE (or '-' for stdin), or --interactive"
            )
        gen = open_generator(checkpoint, tokenizer, "int8" if int8 else None, threads)
        sampling = _Sampling(
            max_length=max_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            seed=seed,
            stop=tuple(_unescape(s) for s in stop) or None,
        )
        if questions:
            _answer_all(gen, questions, sampling, _Output(len(prompts), stream, as_json, batch_size))
        if interactive:
            _interactive(gen, sampling)


def _emit(prompt: str, answer: str, as_json: bool, single: bool) -> None:
    if as_json:
        click.echo(json.dumps({"prompt": prompt, "answer": answer}, ensure_ascii=False))
    elif single:
        click.echo(answer)
    else:
        click.echo(f"Q: {prompt}\nA: {answer}\n")


def _subject(index: int, prompts: list[str], flags: int) -> str:
    """How an error names ``prompts[index]``: "prompt" when it is the only one, "prompt N ('...')"
    for the N-th --prompt, "question N ('...')" for the N-th question of --prompts-file."""
    if len(prompts) == 1:
        return "prompt"
    question = prompts[index]
    shown = question if len(question) <= 50 else question[:47] + "..."
    if index < flags:
        return f"prompt {index + 1} ({shown!r})"
    return f"question {index - flags + 1} ({shown!r})"


def _answer_all(gen: Any, prompts: list[str], sampling: _Sampling, out: _Output) -> None:
    from gptmed.inference.generator import PromptError

    single = len(prompts) == 1 and out.flags == 1  # one --prompt: the bare answer
    if out.stream and not out.as_json:
        for n, prompt in enumerate(prompts):
            pieces = sampling.stream(gen, prompt)
            try:
                first = next(pieces, "")  # a prompt that cannot run fails here, before its "Q:"
            except PromptError as exc:
                raise GptmedError(exc.about(_subject(n, prompts, out.flags))) from None
            if not single:
                click.echo(f"Q: {prompt}\nA: ", nl=False)
            click.echo(first, nl=False)
            for piece in pieces:
                click.echo(piece, nl=False)
            click.echo("\n" if not single else "")
        return

    for start in range(0, len(prompts), out.batch_size):
        chunk = prompts[start : start + out.batch_size]
        try:
            answers = sampling.answers(gen, chunk)
        except PromptError as exc:
            raise GptmedError(exc.about(_subject(start + exc.row, prompts, out.flags))) from None
        for prompt, answer in zip(chunk, answers, strict=True):
            _emit(prompt, answer, out.as_json, single)


def _interactive(gen: Any, sampling: _Sampling) -> None:
    click.echo("Ask a question (Ctrl-D or 'exit' to quit).", err=True)
    while True:
        try:
            question = input("Q: ")
        except EOFError:
            click.echo("", err=True)
            return
        if question.strip() in ("exit", "quit"):
            return
        if not question.strip():
            continue
        try:
            click.echo("A: ", nl=False)
            for piece in sampling.stream(gen, question):
                click.echo(piece, nl=False)
            click.echo("\n")
        except ValueError as exc:  # a prompt that does not fit: say so and keep going
            click.echo(f"\nError: {exc}", err=True)


# ------------------------------------------------------------------------------------ gptmed-infer
