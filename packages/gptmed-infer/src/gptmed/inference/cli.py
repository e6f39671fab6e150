"""``gptmed-generate`` and ``gptmed-infer`` (export, eval, info, serve): parse, call, echo."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from gptmed.core import GptmedError, cli_errors
from gptmed.inference import __version__

DEFAULT_CHECKPOINT = "model/checkpoints/best_model.pt"
_threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=None,
    help="onnxruntime intra-op threads (0 = all cores; default: GPTMED_NUM_THREADS or all).",
)


class _NeedsTorch(GptmedError):
    pass


def _looks_like_bundle(folder: Path) -> bool:
    """A folder whose ``gptmed.json`` loads as a bundle manifest (no checksums: a suggestion only)."""
    from gptmed.core import BundleManifest

    try:
        BundleManifest.load(folder / "gptmed.json")
    except (GptmedError, OSError, ValueError):
        return False
    return True


def _not_found(path: Path, option: str, *, checkpoints: bool = True, bundles: bool = True) -> GptmedError:
    """The error "PATH: checkpoint|bundle not found", its hint naming ``option`` and up to 3 candidates:
    .pt files under model/checkpoints/ and bundle folders in the working folder whose gptmed.json
    loads. Hidden names (export's ``.OUT.tmp-*`` staging folders) are never suggested."""
    noun = "checkpoint" if checkpoints else "bundle"
    if not bundles:
        hint = f"train one (gptmed-train) or pass {option} with a training checkpoint (.pt file)"
    elif not checkpoints:
        hint = f"export one (gptmed-infer export --out DIR) or pass {option} with an exported bundle folder"
    else:
        hint = f"train one (gptmed-train) or pass {option} with a .pt file or an exported bundle folder"
    ckpt_dir = Path(DEFAULT_CHECKPOINT).parent
    found: list[Path] = []
    if checkpoints:
        pts = sorted(ckpt_dir.glob("*.pt")) + sorted(ckpt_dir.glob("*/best_model.pt"))
        found += [p for p in pts if p.is_file()]
    if bundles:
        found += [m.parent for m in sorted(Path(".").glob("*/gptmed.json")) if _looks_like_bundle(m.parent)]
    shown = [str(c) for c in found if not any(part.startswith(".") for part in c.parts)][:3]
    if shown:
        hint += f" (found: {', '.join(shown)})"
    return GptmedError(f"{noun} not found", where=str(path), hint=hint)


def _open_generator(
    checkpoint: str,
    tokenizer: str | None,
    variant: str | None,
    threads: int | None,
    option: str = "--checkpoint",
) -> Any:
    """The generator for ``checkpoint``; ``option`` is the flag that named it (for the hint)."""
    from gptmed.inference.generator import TextGenerator

    path = Path(checkpoint)
    if not path.exists():
        raise _not_found(path, option, checkpoints=option != "--bundle")
    try:
        if path.suffix == ".pt":
            return TextGenerator(model=str(path), tokenizer_path=tokenizer)
        return TextGenerator(model=str(path), tokenizer_path=tokenizer, variant=variant, threads=threads)
    except ImportError as exc:
        raise _NeedsTorch(
            f"{path} is a torch checkpoint and torch is not installed ({exc})",
            hint='export a bundle (gptmed-infer export) and pass its folder, or pip install "gptmed-infer[export]"',
        ) from None


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
    help="Subtracted from a token's logit per earlier use in the answer.",
)
@click.option(
    "--presence-penalty",
    type=click.FloatRange(-2, 2),
    default=None,
    help="Subtracted from a token's logit once the answer holds it.",
)
@click.option(
    "--no-repeat-ngram-size",
    type=click.IntRange(min=0),
    default=None,
    help="n > 0: the answer never repeats an n-gram of tokens; 0 = off.",
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
@_threads_option
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
        gen = _open_generator(checkpoint, tokenizer, "int8" if int8 else None, threads)
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gptmed-infer")
def main() -> None:
    """Export bundles, evaluate them and serve them (gptmed's torch-free runtime)."""


def _needs_export_extra(exc: ImportError) -> GptmedError:
    """One line for a missing torch/onnx/gptmed-model: the module that is missing, then the fix."""
    missing = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc  # the torch backend re-raises
    return GptmedError(
        f"export needs the [export] extra ({missing})", hint='pip install "gptmed-infer[export]"'
    )


@contextlib.contextmanager
def _stage_bar(label: str) -> Iterator[Callable[[int, int, str], None]]:
    """A ``progress(done, total, stage)`` callback drawing a tqdm bar over a library call's stages
    (on a terminal only: ``disable=None`` keeps CI logs and pipes quiet); gone when the call ends."""
    from tqdm import tqdm

    with tqdm(desc=label, unit="stage", disable=None, leave=False) as bar:

        def progress(done: int, total: int, stage: str) -> None:
            bar.total = total
            bar.set_postfix_str(stage, refresh=False)
            bar.update(done - bar.n)

        yield progress


@main.command("export")
@click.option(
    "--checkpoint", default=DEFAULT_CHECKPOINT, show_default=True, help="Training checkpoint (.pt)."
)
@click.option("--tokenizer", default=None, help="Tokenizer .model (default: the one the checkpoint records).")
@click.option("--out", "out_dir", default="bundle", show_default=True, help="Bundle folder to write.")
@click.option(
    "--quantize", type=click.Choice(["int8"]), default=None, help="Also write an int8 graph (gated)."
)
@click.option(
    "--min-int8-agreement",
    type=click.FloatRange(0, 1),
    default=None,
    help="Greedy agreement with fp32 the int8 graph must reach [default: 0.90].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export_cmd(
    checkpoint: str,
    tokenizer: str | None,
    out_dir: str,
    quantize: str | None,
    min_int8_agreement: float | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Export a checkpoint to a bundle: model.onnx (KV cache), tokenizer.model, gptmed.json.

    The export fails, and writes nothing, unless ONNX matches torch (logits within 1e-4,
    identical greedy tokens)."""
    with cli_errors(debug):
        try:
            from gptmed.inference.export import INT8_MIN_AGREEMENT, export_bundle_report
        except ImportError as exc:
            raise _needs_export_extra(exc) from None
        if not Path(checkpoint).exists():
            raise _not_found(Path(checkpoint), "--checkpoint", bundles=False)
        try:
            with _stage_bar("export") as progress:
                report = export_bundle_report(
                    checkpoint,
                    out_dir,
                    tokenizer,
                    quantize,
                    min_int8_agreement=INT8_MIN_AGREEMENT
                    if min_int8_agreement is None
                    else min_int8_agreement,
                    progress=progress,
                )
        except ImportError as exc:
            raise _needs_export_extra(exc) from None
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "out": str(report.out_dir),
                        "files": report.files,
                        "parity": report.parity,
                        "int8": report.int8,
                        "seconds": round(report.seconds, 2),
                    },
                    indent=2,
                )
            )
            return
        p = report.parity
        click.echo(f"✓ bundle written to {report.out_dir} in {report.seconds:.1f}s")
        for name, size in report.files.items():
            click.echo(f"  {name:<20} {size / 1e6:8.2f} MB")
        click.echo(
            f"  parity: prefill {p['prefill_max_abs_diff']:.2e}, decode {p['decode_max_abs_diff']:.2e} "
            f"(<= {p['atol']:g}); greedy identical on {p['greedy_prompts_identical']}/{p['prompts']} prompts; "
            f"graph {p.get('graph', 'fast')}"
        )
        if report.int8:
            q = report.int8
            click.echo(
                f"  int8: agreement {q['greedy_agreement']:.1%} (>= {q['min_agreement']:.0%}), "
                f"{q['int8_bytes'] / 1e6:.2f} MB vs {q['fp32_bytes'] / 1e6:.2f} MB, "
                f"{q['int8_ms_per_token']:.2f} vs {q['fp32_ms_per_token']:.2f} ms/token"
            )


@main.command("eval")
@click.option("--bundle", required=True, help="Bundle folder (or a .pt checkpoint when torch is installed).")
@click.option(
    "--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Held-out Q&A text file."
)
@click.option(
    "--max-length",
    type=click.IntRange(min=1),
    default=None,
    help="New tokens per answer, capped by the room each question leaves: the cap of the EOS share "
    "[default: 448].",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N pairs only.")
@click.option(
    "--sample",
    is_flag=True,
    help="Sample the answers with the bundle's decoding defaults (temperature, top-k, top-p) instead "
    "of greedy decoding; penalties apply either way.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Sampling seed with --sample (same seed, same answers).",
)
@click.option("--int8", is_flag=True, help="Evaluate the int8 graph.")
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def eval_cmd(
    bundle: str,
    data: str,
    max_length: int | None,
    limit: int | None,
    sample: bool,
    seed: int,
    int8: bool,
    threads: int | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Answer bits per byte, perplexity, EOS share, loop rate, exact match, token F1 and ROUGE-L
    on held-out Q&A pairs."""
    from gptmed.inference.evaluate import evaluate

    with cli_errors(debug):
        gen = _open_generator(bundle, None, "int8" if int8 else None, threads, option="--bundle")
        decoding = gen.defaults.replace(seed=seed) if sample else gen.defaults.replace(temperature=0.0)
        report = evaluate(gen, data, max_length=max_length, limit=limit, decoding=decoding)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
            return
        click.echo(f"{'metric':<16}{'value':>10}")
        click.echo(f"{'pairs':<16}{report.pairs:>10}")
        click.echo(f"{'answer BPB':<16}{report.answer_bpb:>10.3f}")
        click.echo(f"{'perplexity':<16}{report.perplexity:>10.3f}")
        click.echo(f"{'EOS share':<16}{report.eos_share:>10.3f}")
        click.echo(f"{'loop rate':<16}{report.loop_rate:>10.3f}")
        click.echo(f"{'exact match':<16}{report.exact_match:>10.3f}")
        click.echo(f"{'token F1':<16}{report.token_f1:>10.3f}")
        click.echo(f"{'ROUGE-L':<16}{report.rouge_l:>10.3f}")
        how = "sampled" if sample else "greedy"
        click.echo(f"answers: {how}, up to {report.max_length} new tokens each", err=True)
        if report.skipped:
            click.echo(
                f"skipped {report.skipped} pair(s) whose question fills the model's context "
                f"({', '.join(report.skipped_where)}{', ...' if report.skipped > len(report.skipped_where) else ''})",
                err=True,
            )


@main.command("info")
@click.argument("bundle")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def info_cmd(bundle: str, debug: bool) -> None:
    """Verify a bundle (sha256, I/O names) and print its manifest."""
    from gptmed.inference.bundle import load_bundle

    with cli_errors(debug):
        b = load_bundle(bundle)
        click.echo(b.manifest.to_json(), nl=False)
        click.echo(f"✓ {b.root}: {len(b.manifest.files)} files verified", err=True)


@main.command("serve")
@click.option(
    "--bundle",
    default="bundle",
    show_default=True,
    help="Bundle folder to serve (or a .pt checkpoint when torch is installed).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. Any other than 127.0.0.1/localhost/::1 is reachable from the network: "
    "without --api-key it serves anyone who can reach it (with a warning at start).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0 picks a free one; the log names it).",
)
@click.option(
    "--api-key",
    envvar="GPTMED_API_KEY",
    default=None,
    help="Bearer key clients must send (env GPTMED_API_KEY).",
)
@click.option(
    "--max-batch",
    "--max-concurrency",
    "max_batch",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Requests generating at once, decoded together in one batch (--max-concurrency: old name).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Requests waiting for a place in the batch; beyond that: 429.",
)
@click.option(
    "--kv-cache-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=1024.0,
    show_default=True,
    help="KV cache memory the running batch may use; requests beyond it wait.",
)
@click.option(
    "--prefill-chunk",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Prompt tokens prefilled between two decode steps (a long prompt is split).",
)
@click.option(
    "--max-tokens", type=click.IntRange(min=1), default=256, show_default=True, help="Cap on max_tokens."
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Request body cap in bytes.",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a connection has for its request headers, then for its body (408).",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds running requests get to finish after SIGTERM/SIGINT (then 503).",
)
@click.option("--int8", is_flag=True, help="Serve the int8 graph.")
@_threads_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve_cmd(
    bundle: str,
    host: str,
    port: int,
    api_key: str | None,
    max_batch: int,
    max_queue: int,
    kv_cache_mb: float,
    prefill_chunk: int,
    max_tokens: int,
    max_body: int,
    read_timeout: float,
    shutdown_timeout: float,
    int8: bool,
    threads: int | None,
    debug: bool,
) -> None:
    """Serve a bundle with an OpenAI-compatible API (/v1/chat/completions, /v1/completions), a chat
    page (/) and Prometheus metrics (/metrics). Requests are batched as they come and go; a .pt
    checkpoint (torch) is served too, its requests taking turns token by token."""
    with cli_errors(debug):
        try:
            from gptmed.inference.server import ServerConfig, bind_sockets, serve
        except ImportError as exc:
            raise GptmedError(
                f"serve needs the [serve] extra ({exc})", hint='pip install "gptmed-infer[serve]"'
            ) from None
        config = ServerConfig(
            host=host,
            port=port,
            api_key=api_key or None,  # GPTMED_API_KEY= (empty) is no key, as before
            max_batch=max_batch,
            max_queue=max_queue,
            kv_cache_mb=kv_cache_mb,
            prefill_chunk=prefill_chunk,
            max_tokens=max_tokens,
            max_body=max_body,
            read_timeout=read_timeout,
            shutdown_timeout=shutdown_timeout,
        )
        # onnxruntime's workers spin between kernels by default; a server's event loop and scheduler
        # threads need those cores (bench/serve.py: 2x tokens/s at 16 clients on 2 cores without)
        os.environ.setdefault("GPTMED_ORT_SPIN", "0")
        sockets = bind_sockets(host, port)  # a port in use fails here, before loading the model
        try:
            gen = _open_generator(bundle, None, "int8" if int8 else None, threads, option="--bundle")
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        serve(gen, config, sockets)


if __name__ == "__main__":  # pragma: no cover
    main()
