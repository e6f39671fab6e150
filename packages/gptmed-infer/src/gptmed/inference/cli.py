"""``gptmed-infer``: export, eval, info and serve (``gptmed-generate`` is in generate_cli.py)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from gptmed.core import GptmedError, cli_errors
from gptmed.inference import __version__
from gptmed.inference.cli_common import (
    DEFAULT_CHECKPOINT,
    not_found,
    open_generator,
    threads_option,
)
from gptmed.inference.generate_cli import generate_main  # noqa: F401  (its old import path)


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
    help="Share of greedy tokens the int8 graph must agree on with fp32 (near-ties count) [default: 0.90].",
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
            raise not_found(Path(checkpoint), "--checkpoint", bundles=False)
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
                f"  int8: agreement {q['agreement']:.1%} (>= {q['min_agreement']:.0%}; "
                f"exact {q['greedy_agreement']:.1%}, near-ties within {q['near_tie_logits']:g} logits count), "
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
@threads_option
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
        gen = open_generator(bundle, None, "int8" if int8 else None, threads, option="--bundle")
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
    help="Requests generating at once, decoded together in batches, one per worker (--max-concurrency: old name).",
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
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads that each decode their own batch, sharing --max-batch, --kv-cache-mb and "
    "--threads [default: 2 on a machine with 2 or more cores, else 1].",
)
@click.option(
    "--stream-interval",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Answer tokens per streamed event after the first (which goes at once): above 1, fewer "
    "and larger events, less CPU per token for the server and its clients.",
)
@click.option("--int8", is_flag=True, help="Serve the int8 graph.")
@threads_option
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
    workers: int | None,
    stream_interval: int,
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
            workers=1 if Path(bundle).suffix == ".pt" else _serve_workers(workers, threads, max_batch),
            stream_interval=stream_interval,
        )
        if config.workers > 1:  # the workers share the threads: each runs its batch on its share
            threads = max(1, _total_threads(threads) // config.workers)
        # onnxruntime's workers spin between kernels by default; a server's event loop and scheduler
        # threads need those cores (bench/serve.py: 2x tokens/s at 16 clients on 2 cores without)
        os.environ.setdefault("GPTMED_ORT_SPIN", "0")
        sockets = bind_sockets(host, port)  # a port in use fails here, before loading the model
        try:
            gen = open_generator(bundle, None, "int8" if int8 else None, threads, option="--bundle")
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        serve(gen, config, sockets)


def _total_threads(threads: int | None) -> int:
    """The onnxruntime threads ``--threads`` asks for (None or 0: GPTMED_NUM_THREADS or every core
    this process may use)."""
    if not threads:
        threads = int(os.environ.get("GPTMED_NUM_THREADS") or 0)
    if threads:
        return threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _serve_workers(workers: int | None, threads: int | None, max_batch: int) -> int:
    """``--workers``, or its default: 2 when there are 2 threads for them and a batch to split.
    (Measured on 2 cores, int8 small model: two batches of 8 on one thread each decode 1.6x the
    tokens/s of one batch of 16 on two threads; docs/deployment.md.)"""
    if workers is not None:
        return workers
    return 2 if _total_threads(threads) >= 2 and max_batch >= 2 else 1


if __name__ == "__main__":  # pragma: no cover
    main()
