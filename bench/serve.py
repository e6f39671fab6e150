"""Serving throughput: `gptmed-infer serve` with continuous batching vs one request at a time,
driven by the official `openai` async client at 1, 4, 16 and 32 concurrent clients.

    python bench/serve.py [--size small] [--clients 1 4 16 32] [--requests 32] [--max-tokens 64]
                          [--variants fp32 int8] [--max-batch 16] [--rounds 1] [--workdir /tmp/gptmed-bench-generate]
                          [--json out.json]

Per variant (fp32, int8) two servers run the same bundle, side by side in the same run:
``--max-batch 16`` (continuous batching) and ``--max-batch 1`` (one at a time: the baseline),
both with ``--max-queue 64``, so no request is refused. Each row sends ``max(--requests, 2 x
clients)`` streamed greedy ``/v1/completions`` requests of ``--max-tokens`` tokens (MedQuAD
questions), each client one after another. Reported: completion tokens/s (usage of every answer
/ wall time), its ratio to one-at-a-time, p50/p95 time to the first token and latency, 429s,
5xx, and the CPU cores the server process (in brackets: its main thread, the event loop; the
rest is the workers) and the client (this process) kept busy meanwhile: on a small machine the
client's share is cores the server does not get. ``--stream-interval 64`` against the default 1
gives the cost of a streamed event on each side. One more row runs 32 clients against
``--max-batch 16 --max-queue 8`` (capacity 24): the excess gets 429 (the client waits 0.2 s and
retries), never a 5xx.

The prefill section measures how long a long prompt (``--long-prompt`` tokens) stalls a running
stream: the largest gap between two tokens of a stream while the long prompt is prefilled, with
``--prefill-chunk 64`` and with a chunk the size of the context (no chunking), on one worker
(with two, the idle one usually takes the long prompt and it never meets the stream). The workers
section runs the batched server with its default workers (2 on 2+ cores) and with
``--workers 1``; the spin section, with ``--workers 1``, onnxruntime's threads spinning or not.

Weights: bench/generate.py's preset with random init (speed does not depend on the values),
built and cached in ``--workdir`` (shared with bench/generate.py). Needs the ``[serve]`` extra
and ``openai`` (gptmed-infer's ``[test]`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@dataclass
class Run:
    """One row: a server setting at a client count."""

    label: str
    clients: int
    seconds: float = 0.0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    refused: int = 0  # 429
    failed: int = 0  # 5xx or a stream that ended in an error
    server_cpu: float = 0.0  # CPU seconds of the server process while the requests ran
    loop_cpu: float = 0.0  # of which its main thread: the event loop (the rest: the workers)
    client_cpu: float = 0.0  # CPU seconds of this process (the openai client) meanwhile

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def cores(self) -> str:
        """CPU cores the server and the client kept busy on average: "server (its event loop) +
        client"."""
        if not self.seconds:
            return "-"
        server = "?"
        if self.server_cpu:
            server = f"{self.server_cpu / self.seconds:.2f} ({self.loop_cpu / self.seconds:.2f})"
        return f"{server} + {self.client_cpu / self.seconds:.2f}"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _questions(workdir: Path, count: int = 200) -> list[str]:
    """MedQuAD questions (the corpus bench/generate.py trained the tokenizer on), or made-up ones."""
    medquad = REPO / ".." / "shared" / "datasets" / "medquad" / "train.qa.txt.gz"
    text = ""
    if medquad.is_file():
        with gzip.open(medquad, "rt", encoding="utf-8") as fh:
            text = fh.read(2_000_000)
    elif (workdir / "qa.txt").is_file():
        text = (workdir / "qa.txt").read_text(encoding="utf-8")
    found = [line[3:].strip() for line in text.splitlines() if line.startswith("Q: ")]
    return found[:count] or [f"What is condition number {n}?" for n in range(count)]


# ----------------------------------------------------------------------------------- servers


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of process ``pid``, all its threads and its main thread alone
    (the server's event loop); zeros where /proc is missing."""
    seconds = []
    for stat in (f"/proc/{pid}/stat", f"/proc/{pid}/task/{pid}/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0, 0.0
        seconds.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return seconds[0], seconds[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """`gptmed-infer serve` in a subprocess (the CLI, as a user starts it)."""

    def __init__(self, bundle: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = "import sys; from gptmed.inference.cli import main; sys.argv[0] = 'gptmed-infer'; main()"
        args = ["serve", "--bundle", str(bundle), "--port", str(self.port), "--max-tokens", "512", *flags]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def __enter__(self) -> Server:
        deadline = time.time() + 120
        while True:
            try:  # the standard library: the openai client's HTTP package varies with its version
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:  # refused, reset or timed out while the server starts
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"the server did not start: {self.proc.communicate()[1][-2000:]}"
                    ) from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------------- clients


async def _one(client: Any, question: str, max_tokens: int, run: Run) -> None:
    """One streamed greedy completion; retries 429s after 0.2 s."""
    import openai

    while True:
        start = time.perf_counter()
        first = None
        try:
            stream = await client.completions.create(
                model="gptmed",
                prompt=question,
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text and first is None:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    run.tokens += chunk.usage.completion_tokens
        except openai.RateLimitError:
            run.refused += 1
            await asyncio.sleep(0.2)
            continue
        except openai.APIError:
            run.failed += 1
            return
        run.latency.append(time.perf_counter() - start)
        if first is not None:
            run.ttft.append(first)
        return


async def _drive(
    url: str, questions: list[str], clients: int, requests: int, max_tokens: int, run: Run, pid: int
) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    work = [questions[n % len(questions)] for n in range(requests)]

    async def worker(w: int) -> None:
        for question in work[w::clients]:
            await _one(client, question, max_tokens, run)

    await _one(client, questions[-1], 4, Run("warm-up", 1))
    start, (server, loop), mine = time.perf_counter(), _cpu_seconds(pid), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    run.seconds += time.perf_counter() - start
    server_now, loop_now = _cpu_seconds(pid)
    run.server_cpu += server_now - server
    run.loop_cpu += loop_now - loop
    run.client_cpu += time.process_time() - mine
    await client.close()


def measure(
    server: Server,
    label: str,
    questions: list[str],
    clients: int,
    requests: int,
    max_tokens: int,
    run: Run | None = None,
) -> Run:
    """One round of ``requests`` at ``clients``; added to ``run`` (tokens, time, latencies, CPU)
    when given."""
    run = run or Run(label, clients)
    count = max(requests, 2 * clients)
    asyncio.run(_drive(server.url, questions, clients, count, max_tokens, run, server.proc.pid))
    return run


# ----------------------------------------------------------------------------------- prefill stall


async def _stall(url: str, long_prompt: str) -> tuple[float, float]:
    """(median gap, largest gap) in seconds between tokens of a running stream while a long
    prompt is prefilled."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    stamps: list[float] = []
    started = asyncio.Event()

    async def stream() -> None:
        try:
            s = await client.completions.create(
                model="gptmed", prompt="What is glaucoma?", max_tokens=200, temperature=0, stream=True
            )
            async for chunk in s:
                if chunk.choices and chunk.choices[0].text:
                    stamps.append(time.perf_counter())
                    if len(stamps) == 20:
                        started.set()
        finally:
            started.set()  # a stream that ended early must not leave long() waiting

    async def long() -> None:
        await started.wait()
        await client.completions.create(model="gptmed", prompt=long_prompt, max_tokens=4, temperature=0)

    await asyncio.gather(stream(), long())
    await client.close()
    if len(stamps) <= 20:
        raise RuntimeError(
            f"the running stream ended after {len(stamps)} pieces, before the long prompt came"
        )
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps), max(gaps)


# ----------------------------------------------------------------------------------- report


def _row(run: Run, base: Run | None) -> str:
    ratio = f"{run.tokens_per_s / base.tokens_per_s:.2f}x" if base and base.tokens_per_s else "1.00x"
    return (
        f"| {run.label} | {run.clients} | {run.tokens_per_s:.0f} | {ratio} | "
        f"{_pct(run.ttft, 0.5):.3f} / {_pct(run.ttft, 0.95):.3f} | "
        f"{_pct(run.latency, 0.5):.2f} / {_pct(run.latency, 0.95):.2f} | {run.refused} | {run.failed} | "
        f"{run.cores()} |"
    )


def spin_section(bundle: Path, questions: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """The batched server (fp32, 16 clients) with onnxruntime's worker threads spinning between
    kernels (the default) and without (GPTMED_ORT_SPIN=0), alternated twice."""
    print(
        f"\nonnxruntime spinning, fp32 --max-batch {args.max_batch} --workers 1 (both threads in one run), "
        "16 clients (tokens/s, alternated):"
    )
    out: dict[str, list[float]] = {"1": [], "0": []}
    for _round in range(2):
        for spin in ("1", "0"):
            flags = ["--max-batch", str(args.max_batch), "--workers", "1"]
            with Server(bundle, *flags, env={"GPTMED_ORT_SPIN": spin}) as srv:
                run = measure(srv, f"spin {spin}", questions, 16, args.requests, args.max_tokens)
            out[spin].append(run.tokens_per_s)
            print(f"  GPTMED_ORT_SPIN={spin}: {run.tokens_per_s:.0f} tokens/s", flush=True)
    return out


def workers_section(bundle: Path, questions: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """The batched server at 16 clients with the default workers (2 on 2+ cores) and with
    ``--workers 1`` (one batch of --max-batch rows on every thread), alternated twice."""
    print(f"\nworkers, --max-batch {args.max_batch}, 16 clients (tokens/s, alternated):")
    out: dict[str, list[float]] = {}
    for _round in range(2):
        for variant in args.variants:
            for workers in ("default", "1"):
                flags = ["--max-batch", str(args.max_batch), *(["--int8"] if variant == "int8" else [])]
                flags += [] if workers == "default" else ["--workers", workers]
                with Server(bundle, *flags) as srv:
                    run = measure(srv, workers, questions, 16, args.requests, args.max_tokens)
                out.setdefault(f"{variant} workers {workers}", []).append(run.tokens_per_s)
                print(f"  {variant}, workers {workers}: {run.tokens_per_s:.0f} tokens/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--requests", type=int, default=32, help="requests per row (at least 2 per client)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="alternated rounds per row (totals over them)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument(
        "--stream-interval", type=int, default=1, help="the servers' --stream-interval (both sides)"
    )
    ap.add_argument("--variants", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--long-prompt", type=int, default=400, help="prompt tokens of the prefill-stall test")
    ap.add_argument("--skip", nargs="*", default=[], help="sections to skip: overload stall workers spin")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gptmed-bench-generate"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        import openai  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        sys.exit(
            f"bench/serve.py needs the [serve] extra and openai ({exc}): pip install 'gptmed-infer[serve]' openai"
        )
    from generate import build

    _ckpt, bundle = build(args.workdir, args.size)
    questions = _questions(args.workdir)
    print(
        f"# bench/serve.py: {args.size} model, {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"# {args.max_tokens} tokens per answer, greedy, streamed; --max-queue 64 unless said otherwise\n")
    header = (
        "| server | clients | tokens/s | vs one at a time | TTFT p50 / p95 s | latency p50 / p95 s | 429 | 5xx "
        "| CPU cores: server (event loop) + client |"
    )
    results: dict[str, Any] = {}
    for variant in args.variants:
        int8 = ["--int8"] if variant == "int8" else []
        batched_label, single_label = f"{variant} --max-batch {args.max_batch}", f"{variant} one at a time"
        rows: list[str] = [header, "|---|---|---|---|---|---|---|---|---|"]
        runs: dict[str, list[Run]] = {}
        interval = ["--stream-interval", str(args.stream_interval)]
        with (
            Server(
                bundle, "--max-batch", str(args.max_batch), "--max-queue", "64", *int8, *interval
            ) as batched,
            Server(bundle, "--max-batch", "1", "--max-queue", "64", *int8, *interval) as single,
        ):
            for clients in args.clients:  # the two servers alternate: the machine's load hits both
                base, run = Run(single_label, clients), Run(batched_label, clients)
                for _round in range(args.rounds):  # alternated: the rows' totals over the rounds
                    measure(single, single_label, questions, clients, args.requests, args.max_tokens, base)
                    measure(batched, batched_label, questions, clients, args.requests, args.max_tokens, run)
                rows += [_row(base, None), _row(run, base)]
                runs.setdefault("single", []).append(base)
                runs.setdefault("batched", []).append(run)
                print(rows[-2] + "\n" + rows[-1], flush=True)
        if "overload" not in args.skip:
            with Server(bundle, "--max-batch", str(args.max_batch), "--max-queue", "8", *int8) as tight:
                over = measure(
                    tight,
                    f"{variant} --max-batch {args.max_batch} --max-queue 8",
                    questions,
                    32,
                    64,
                    args.max_tokens,
                )
            rows.append(_row(over, runs["single"][-1]))
            runs["overload"] = [over]
            print(rows[-1], flush=True)
        print("\n" + "\n".join(rows) + "\n")
        results[variant] = {
            k: [vars(r) | {"tokens_per_s": r.tokens_per_s} for r in v] for k, v in runs.items()
        }
    if "stall" not in args.skip:
        from gptmed.tokenizer import Tokenizer

        tok = Tokenizer(bundle / "tokenizer.model")
        long_prompt = tok.decode(tok.encode(" ".join(questions))[: args.long_prompt])
        print(
            f"prefill of a ~{args.long_prompt}-token prompt while a stream runs "
            f"(fp32, --max-batch {args.max_batch} --workers 1):"
        )
        results["stall"] = {}
        context = json.loads((bundle / "gptmed.json").read_text())["model_config"]["max_seq_len"]
        for chunk in ("64", str(context)):  # chunked, and the whole context in one unit
            # one worker: with two, the idle one usually takes the long prompt, away from the stream
            flags = ["--max-batch", str(args.max_batch), "--workers", "1", "--prefill-chunk", chunk]
            with Server(bundle, *flags) as srv:
                median, worst = asyncio.run(_stall(srv.url, long_prompt))
            print(
                f"  --prefill-chunk {chunk:>3}: median gap {median * 1e3:.1f} ms, largest gap {worst * 1e3:.1f} ms"
            )
            results["stall"][chunk] = {"median_gap_s": median, "max_gap_s": worst}
    if "workers" not in args.skip:
        results["workers"] = workers_section(bundle, questions, args)
    if "spin" not in args.skip:
        results["spin"] = spin_section(bundle, questions, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
