"""Continuous batching: worker threads own the model's batches and KV caches and serve every request.

Requests wait in one queue shared by the workers (``workers`` of them, default 1; the CLI picks 2
on a machine with two or more cores). Each worker has its own running batch, KV store and share
of ``max_batch`` and ``kv_cache_mb``, and runs the shared onnxruntime session on its own thread:
two batches of 8 on one thread each decode 1.6x the tokens/s of one batch of 16 on two threads
(int8 small model, 2 cores; onnxruntime's threads wait for each other between the ~100 short
kernels of a step, two independent runs never wait). Each iteration of a worker

1. admits waiting requests while its batch has fewer than its share of ``max_batch`` rows and
   the KV store they need fits in its share of ``kv_cache_mb`` (the rest wait; beyond
   ``max_queue`` waiting, ``submit`` refuses with 429);
2. prefills newcomers, up to ``prefill_chunk`` padded prompt tokens: groups of short prompts
   (newcomers that arrive during one group are admitted for the next, within what is left), or
   the next ``prefill_chunk`` tokens of one long prompt, so a long prompt delays the running
   rows by one chunk per step instead of its whole prefill; a prompt whose prefill is done
   samples its first token (sent at once) and joins the running rows;
3. decodes one token for every running row in one batched step.

Rows leave between steps, each on its own: EOS, a stop string, ``max_tokens``, its client gone,
or the shutdown deadline. Each row samples with its own :class:`~gptmed.inference.Sampler` (its
own parameters and seed) over its own logits, so its answer is the one it gets alone, whichever
worker runs it. Text comes out of an :class:`~gptmed.inference.AnswerStream` per row, as
``generate``/``stream`` produce it; a row's first text goes out at once, later text every
``stream_interval`` tokens (default 1: every token) and what is left with its end. Events go to
each request's asyncio queue, once per iteration, through the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gptmed.core import ConfigError, GenerationConfig
from gptmed.inference.sampling import Sampler
from gptmed.inference.server.config import ServerConfig
from gptmed.inference.server.errors import APIError, rate_limited, shutting_down
from gptmed.inference.server.metrics import Metrics
from gptmed.inference.server.runners import Runner, make_runner
from gptmed.inference.streaming import AnswerStream

__all__ = ["Job", "Scheduler"]

_log = logging.getLogger(__name__)

Event = tuple[str, Any]  # ("piece", str) | ("end", (finish_reason, completion_tokens)) | ("error", APIError)
_STORE_STEP = 64  # the KV store's keys per row grow in multiples of this


@dataclass(eq=False)
class Job:
    """One request inside the scheduler. Only the worker that admitted it touches its generation state."""

    ids: list[int]  # the prompt (BOS + template)
    config: GenerationConfig  # max_length set
    stream: AnswerStream
    sampler: Sampler
    events: asyncio.Queue[Event]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    tokens: int = 0  # answer tokens so far
    pending: int = 0  # the last sampled token, fed to the model by the next step
    last_token: float = 0.0  # perf_counter of the last token
    ended: bool = False
    unsent: str = ""  # text held for the next piece event (``stream_interval``)
    held: int = 0  # tokens since the last piece event
    streamed: bool = False  # a piece event went out

    async def next_events(self) -> list[Event]:
        """The next event and every one already queued behind it, consecutive pieces joined: a
        stream whose writer fell behind the steps catches up in one write, not one per token."""
        events = [await self.events.get()]
        while not self.events.empty():
            event = self.events.get_nowait()
            if event[0] == "piece" and events[-1][0] == "piece":
                events[-1] = ("piece", events[-1][1] + event[1])
            else:
                events.append(event)
        return events

    @property
    def reserve(self) -> int:
        """Keys its row may need: the prompt and every answer token."""
        return len(self.ids) + self.config.max_length


@dataclass
class _Chunked:
    """A long prompt being prefilled chunk by chunk on its own cache."""

    job: Job
    handle: Any
    done: int  # prompt tokens in the cache


def _compaction(ended: Sequence[bool]) -> np.ndarray:
    """The rows to keep, in their new order: the last running rows move into the holes the
    ended ones leave among the first ``m`` (few rows are copied)."""
    n = len(ended)
    m = n - sum(ended)
    keep = np.arange(m, dtype=np.int64)
    holes = [i for i in range(m) if ended[i]]
    movers = [i for i in range(m, n) if not ended[i]]
    keep[holes] = movers
    return keep


def _shares(total: int, workers: int) -> list[int]:
    """``total`` split over ``workers`` as evenly as whole numbers allow (the first get the rest)."""
    return [total // workers + (i < total % workers) for i in range(workers)]


class Scheduler:
    """Runs every generation of a server on its worker threads (started by the first :meth:`submit`)."""

    def __init__(self, generator: Any, config: ServerConfig, metrics: Metrics) -> None:
        self.gen = generator
        self.metrics = metrics
        self.max_batch, self.max_queue = config.max_batch, config.max_queue
        self.stream_interval = config.stream_interval
        self.eos = generator.special_ids.eos
        self.vocab = generator.config.vocab_size
        runner = make_runner(generator.backend)
        budget = int(config.kv_cache_mb * 2**20)  # bytes
        row = generator.config.max_seq_len * runner.bytes_per_token
        if row > budget:
            raise ConfigError(
                f"--kv-cache-mb {config.kv_cache_mb:g} cannot hold one request: this model needs "
                f"{row / 2**20:.2f} MB for its context of {generator.config.max_seq_len} tokens; raise --kv-cache-mb"
            )
        # a backend that cannot run from several threads (torch, row by row) gets one worker; so
        # does a budget that holds fewer contexts than workers
        count = min(config.workers, config.max_batch, budget // row) if runner.concurrent else 1
        rows, budgets = _shares(config.max_batch, count), _shares(budget, count)
        runners = [runner, *(make_runner(generator.backend) for _ in range(count - 1))]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()  # submitted, not admitted by any worker
        self.workers = [
            _Worker(self, r, n, b, config.prefill_chunk)
            for r, n, b in zip(runners, rows, budgets, strict=True)
        ]
        self.inside = 0  # every job not ended (waiting or admitted)
        self.cancelled = 0  # jobs whose client went away
        self.deadline: float | None = None  # monotonic time at which every job ends with 503
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------ event loop side
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Admitted requests: running rows and those being prefilled."""
        return self.inside - len(self._waiting)

    @property
    def batch(self) -> int:
        """Running rows, over all workers."""
        return sum(len(worker.rows) for worker in self.workers)

    def submit(self, ids: list[int], config: GenerationConfig) -> Job:
        """Queue a generation (from the event loop); 429 when ``max_batch + max_queue`` are inside,
        503 once closed."""
        job = Job(
            ids,
            config,
            AnswerStream(self.gen.tokenizer.decode, config.stop),
            Sampler(config, 1, self.vocab, [ids]),
            asyncio.Queue(),
        )
        with self._wake:
            if self._closed:
                raise shutting_down()
            if self.inside >= self.max_batch + self.max_queue:
                raise rate_limited()
            self.inside += 1
            self._waiting.append(job)
            self._wake.notify_all()
        if not self.threads:
            self._loop = asyncio.get_running_loop()
            for n, worker in enumerate(self.workers):
                thread = threading.Thread(target=worker.serve, name=f"gptmed-worker-{n}", daemon=True)
                self.threads.append(thread)
                thread.start()
        return job

    def cancel(self, job: Job) -> None:
        """The client of ``job`` went away: its row leaves before the next step."""
        if not job.ended:
            job.cancelled.set()
            with self._wake:
                self._wake.notify_all()

    def begin_drain(self, timeout: float) -> None:
        """SIGTERM/SIGINT: jobs not done ``timeout - 1`` s from now end with 503 (1 s before the
        server's own deadline, so each can still send its error)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + max(timeout - 1.0, 0.0)
            with self._wake:
                self._wake.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers; jobs still inside end with 503."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(end - time.monotonic(), 0.0))

    def post(self, out: list[tuple[Job, Event]]) -> None:
        """Hand ``out``'s events to their requests' queues, on the event loop (from a worker)."""
        if not out or self._loop is None:
            return

        def deliver() -> None:
            for job, event in out:
                job.events.put_nowait(event)

        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self._loop.call_soon_threadsafe(deliver)


class _Worker:
    """One thread's batch: its rows, its KV store (``runner``), its share of the limits. The queue,
    the lock and the counters are the scheduler's (``s``)."""

    def __init__(self, scheduler: Scheduler, runner: Runner, max_batch: int, budget: int, chunk: int) -> None:
        self.s = scheduler
        self.runner = runner
        self.max_batch, self.budget, self.chunk = max_batch, budget, chunk
        self.context = scheduler.gen.config.max_seq_len
        self._ready: deque[Job] = deque()  # admitted, prefill not started
        self._chunked: _Chunked | None = None
        self.rows: list[Job] = []  # running: row r of the runner is rows[r]
        self._target = (0, 0)  # the KV store shape the admitted rows need

    # ------------------------------------------------------------------------ the thread
    def serve(self) -> None:
        """The worker thread: iterations until the scheduler closes."""
        s = self.s
        while True:
            with s._wake:
                while not s._closed and not (s._waiting or self._ready or self._chunked or self.rows):
                    s._wake.wait()
                if s._closed:
                    break
            out: list[tuple[Job, Event]] = []
            try:
                self._iteration(out)
            except Exception:
                _log.exception("generation failed")
                # this worker's jobs only: the queue and the other workers' rows go on
                self._end_all(
                    out, APIError(500, "internal error during generation", "server_error"), waiting=False
                )
            s.post(out)
        out = []
        self._end_all(out, shutting_down())
        s.post(out)

    def _iteration(self, out: list[tuple[Job, Event]]) -> None:
        """Prefill units up to ``prefill_chunk`` prompt tokens (newcomers that arrive during one
        are admitted for the next), then one decode step. Each unit's first tokens go out at
        once (a newcomer's first token waits neither for the other units nor for the step)."""
        if self.s.deadline is not None and time.monotonic() >= self.s.deadline:
            self._end_all(out, shutting_down())
            return
        self._drop_cancelled()
        budget = self.chunk
        while budget > 0:
            with self.s._wake:
                self._admit()
            done = self._prefill(out, budget)
            if not done:
                break
            budget -= done
            if out:
                self.s.post(out[:])
                out.clear()
        if self.rows:
            self._decode(out)

    # ------------------------------------------------------------------------ admission
    @property
    def admitted(self) -> int:
        """Jobs this worker holds: running rows and those being prefilled."""
        return len(self.rows) + len(self._ready) + (self._chunked is not None)

    def _admit(self) -> None:
        """Waiting -> ready while the batch and the KV budget have room (lock held). After the
        first job, one more only while no other worker holds fewer (newcomers that arrive
        together are shared out, not all prefilled by the first worker to look)."""
        waiting = self.s._waiting
        others = min((w.admitted for w in self.s.workers if w is not self), default=self.max_batch)
        taken = 0
        while waiting:
            job = waiting[0]
            if job.cancelled.is_set():
                waiting.popleft()
                self._cancelled(job)
                continue
            admitted = self.admitted
            if admitted >= self.max_batch or (taken and admitted > others):
                return
            shape = self._store_for(admitted + 1, max(self._target[1], job.reserve), admitted == 0)
            if shape is None:
                return
            self._target = shape
            self._ready.append(waiting.popleft())
            taken += 1

    def _store_for(self, rows: int, keys: int, alone: bool) -> tuple[int, int] | None:
        """The KV store (rows, keys per row) for ``rows`` rows of up to ``keys`` keys within the
        budget, grown from what is allocated (rows by powers of two up to ``max_batch``, keys in
        steps of 64 up to the context); None when it does not fit. ``alone``: nothing else is
        admitted, so a store that is too large is freed and allocated anew."""
        per_key = self.runner.bytes_per_token
        for attempt in range(2):
            have_rows, have_keys = self.runner.shape
            roomy = (
                max(have_rows, min(self.max_batch, 1 << (rows - 1).bit_length())),
                max(have_keys, min(self.context, -(-keys // _STORE_STEP) * _STORE_STEP)),
            )
            exact = (max(have_rows, rows), max(have_keys, keys))
            for shape in (roomy, exact):
                if shape[0] * shape[1] * per_key <= self.budget:
                    return shape
            if not alone or attempt:
                return None
            self.runner.reset()  # one row of the context always fits (checked at start)
        return None

    def _cancelled(self, job: Job) -> None:
        """(lock held)"""
        job.ended = True
        self.s.cancelled += 1
        self.s.inside -= 1

    def _drop_cancelled(self) -> None:
        with self.s._wake:
            for queue in (self.s._waiting, self._ready):
                for job in [j for j in queue if j.cancelled.is_set()]:
                    queue.remove(job)
                    self._cancelled(job)
            if self._chunked is not None and self._chunked.job.cancelled.is_set():
                self._cancelled(self._chunked.job)
                self._chunked = None
            gone = [job.cancelled.is_set() for job in self.rows]
            for job, left in zip(self.rows, gone, strict=True):
                if left:
                    self._cancelled(job)
        if any(gone):
            self._compact()

    # ------------------------------------------------------------------------ prefill
    def _prefill(self, out: list[tuple[Job, Event]], budget: int) -> int:
        """One unit of prefill within ``budget`` padded prompt tokens: the next chunk of a long
        prompt, or a group of short ones. Returns the tokens it ran (0: nothing fit, or nothing
        to do). A unit with the whole ``prefill_chunk`` always runs its first prompt."""
        whole = budget >= self.chunk
        chunked = self._chunked
        if chunked is not None:
            if not whole:
                return 0
            piece = chunked.job.ids[chunked.done : chunked.done + self.chunk]
            logits = self.runner.extend(chunked.handle, piece)
            chunked.done += len(piece)
            if chunked.done == len(chunked.job.ids):
                self._chunked = None
                self._started([chunked.job], logits, chunked.handle, out)
            return len(piece)
        with self.s._wake:
            if not self._ready or (len(self._ready[0].ids) > budget and not whole):
                return 0
            first = self._ready.popleft()
            group, width = [first], len(first.ids)
            long = self.runner.chunked and width > self.chunk
            while (
                not long and self._ready and (len(group) + 1) * max(width, len(self._ready[0].ids)) <= budget
            ):
                group.append(self._ready.popleft())
                width = max(width, len(group[-1].ids))
        if long:  # its first chunk now, the rest in the next iterations
            _logits, handle = self.runner.prefill([first.ids[: self.chunk]], width)
            self._chunked = _Chunked(first, handle, self.chunk)
            return self.chunk
        capacity = width if self.runner.chunked else max(job.reserve for job in group)
        logits, handle = self.runner.prefill([job.ids for job in group], capacity)
        self._started(group, logits, handle, out)
        return len(group) * width

    def _started(
        self, jobs: list[Job], logits: np.ndarray, handle: Any, out: list[tuple[Job, Event]]
    ) -> None:
        """Prefilled ``jobs`` (logits (k, V)): sample each one's first token; those still going
        join the running rows."""
        self.s.metrics.prompt_tokens.inc(sum(len(job.ids) for job in jobs))
        for i, job in enumerate(jobs):
            self._accept(job, int(job.sampler.next_tokens(logits[i : i + 1])[0]), out)
        joining = [i for i, job in enumerate(jobs) if not job.ended]
        if joining:
            self.runner.reserve(*self._target)
            self.runner.join(handle, joining)
            self.rows += [jobs[i] for i in joining]

    # ------------------------------------------------------------------------ decode
    def _decode(self, out: list[tuple[Job, Event]]) -> None:
        tokens = np.fromiter((job.pending for job in self.rows), dtype=np.int64, count=len(self.rows))
        logits = self.runner.step(tokens)  # (n, V)
        for row, job in enumerate(self.rows):
            self._accept(job, int(job.sampler.next_tokens(logits[row : row + 1])[0]), out)
        if any(job.ended for job in self.rows):
            self._compact()

    def _compact(self) -> None:
        keep = _compaction([job.ended for job in self.rows])
        self.runner.keep(keep)
        self.rows = [self.rows[int(r)] for r in keep]

    def _accept(self, job: Job, token: int, out: list[tuple[Job, Event]]) -> None:
        """A sampled token of ``job``: EOS ends it, else the text grows; a stop string or
        ``max_tokens`` ends it after this token."""
        now = time.perf_counter()
        metrics = self.s.metrics
        if job.tokens == 0:
            metrics.ttft.observe(now - job.submitted)
        else:
            metrics.tpot.observe(now - job.last_token)
        job.last_token = now
        if token == self.s.eos:
            self._finish(job, "stop", out)
            return
        job.tokens += 1
        metrics.completion_tokens.inc()
        job.unsent += job.stream.push(token)
        job.held += 1
        if job.stream.stopped:
            self._finish(job, "stop", out)
        elif job.tokens >= job.config.max_length:
            self._finish(job, "length", out)
        else:
            job.pending = token
            # the first text at once, then every stream_interval tokens
            if job.unsent and (not job.streamed or job.held >= self.s.stream_interval):
                out.append((job, ("piece", job.unsent)))
                job.unsent, job.held, job.streamed = "", 0, True

    def _finish(self, job: Job, reason: str, out: list[tuple[Job, Event]]) -> None:
        rest = job.unsent + job.stream.finish()
        if rest:
            out.append((job, ("piece", rest)))
        out.append((job, ("end", (reason, job.tokens))))
        job.ended = True
        with self.s._wake:
            self.s.inside -= 1

    def _end_all(self, out: list[tuple[Job, Event]], error: APIError, waiting: bool = True) -> None:
        """This worker's jobs, and with ``waiting`` the queue's, end with ``error`` (the shutdown
        deadline; a failed run ends this worker's only)."""
        s = self.s
        with s._wake:
            jobs = [*self._ready, *self.rows]
            if self._chunked is not None:
                jobs.append(self._chunked.job)
            if waiting:
                jobs += s._waiting
                s._waiting.clear()
            self._ready.clear()
            self._chunked, self.rows = None, []
            for job in jobs:
                if not job.ended:
                    job.ended = True
                    s.inside -= 1
                    out.append((job, ("error", error)))
        self.runner.reset()
        self._target = (0, 0)
