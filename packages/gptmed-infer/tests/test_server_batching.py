"""Continuous batching in the server: the scheduler (directly, and through a real uvicorn), the
KV budget, chunked prefill, rows leaving on their own, /metrics, and a .pt checkpoint (torch)."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from gptmed.core import ConfigError  # noqa: E402
from gptmed.inference import TextGenerator, make_config  # noqa: E402
from gptmed.inference.server import ServerConfig  # noqa: E402
from gptmed.inference.server.metrics import Metrics  # noqa: E402
from gptmed.inference.server.scheduler import Scheduler  # noqa: E402
from server_backends import SerialSlowBackend, SlowBackend  # noqa: E402
from test_server import KEY, _start  # noqa: E402

QUESTIONS = [
    "What is fever?",
    "Explain 腎臓.",
    "Tell me about café au lait spot, and then about asthma and about anemia.",
    "What is insulin?",
    "Tell me about a fracture.",
    "What is hypertension and what is migraine?",
]


def _slow_gen(onnx_gen, artifacts, backend_type: type = SlowBackend, **kw: Any) -> TextGenerator:  # type: ignore[no-untyped-def]
    backend = backend_type(onnx_gen.backend, **kw)
    return TextGenerator(model=backend, tokenizer_path=str(artifacts.bundle / "tokenizer.model"))


def _log_calls(backend: Any, *names: str) -> list[str]:
    """Wrap ``backend``'s methods ``names``: the returned list gets each call's name, in order."""
    calls: list[str] = []
    for name in names:
        method = getattr(backend, name)

        def logged(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls.append(_name)
            return _method(*args, **kw)

        setattr(backend, name, logged)
    return calls


def _run(
    gen: TextGenerator, requests: list[tuple[list[int], Any]], **config: Any
) -> list[tuple[list[int], str, str]]:
    """Every request through one scheduler at once -> (token ids, text, finish reason) each. "At
    once": the first prefill waits until every request is queued (the workers start with the first
    submit, and a busy machine could otherwise run a whole iteration before the last one arrives)."""
    queued = threading.Event()
    backend, prefill = gen.backend, gen.backend.prefill

    def gated_prefill(*args: Any, **kw: Any) -> Any:
        queued.wait(timeout=30)
        return prefill(*args, **kw)

    async def main() -> list[tuple[list[int], str, str]]:
        scheduler = Scheduler(gen, ServerConfig(**config), Metrics())
        jobs = [scheduler.submit(ids, cfg) for ids, cfg in requests]
        queued.set()

        async def collect(job) -> tuple[list[int], str, str]:  # type: ignore[no-untyped-def]
            text = ""
            while True:
                kind, value = await job.events.get()
                if kind == "piece":
                    text += value
                elif kind == "end":
                    return job.stream.ids, text, value[0]
                else:
                    raise value

        try:
            return list(await asyncio.gather(*(collect(job) for job in jobs)))
        finally:
            scheduler.close()
            assert scheduler.inside == 0

    backend.prefill = gated_prefill
    try:
        return asyncio.run(main())
    finally:
        backend.prefill = prefill


@pytest.mark.parametrize("workers", [1, 2])
def test_greedy_rows_in_one_batch_get_the_tokens_they_get_alone(variant_gen, artifacts, workers) -> None:  # type: ignore[no-untyped-def]
    gen = _slow_gen(variant_gen, artifacts, delay=0.002)
    configs = [make_config(gen.defaults, temperature=0.0, max_length=n) for n in (40, 6, 25, 3, 40, 12)]
    requests = [(gen.encode_prompt(q), cfg) for q, cfg in zip(QUESTIONS, configs, strict=True)]
    assert max(len(ids) for ids, _ in requests) > 12
    # different max_tokens: rows leave at different steps; prompts over 12 tokens are chunked
    got = _run(gen, requests, max_batch=3 * workers, prefill_chunk=12, workers=workers)
    for q, cfg, (tokens, text, reason) in zip(QUESTIONS, configs, got, strict=True):
        alone = gen.generate_results([q], config=cfg)[0]
        assert tokens == alone.token_ids, q
        assert text == alone.text
        assert reason == {"eos": "stop"}.get(alone.finish_reason, alone.finish_reason)
    assert len(gen.backend.threads) == workers  # each worker decoded its own batch
    for widths in gen.backend.threads.values():
        assert max(widths) >= 2 and max(widths) <= 3  # batched, within the worker's share of max_batch
        assert any(b < a for a, b in itertools.pairwise(widths))  # and rows left on their own


def test_workers_share_out_the_batch_the_kv_budget_and_the_queue(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Eight requests at once on two workers of two rows each (max_batch 4): four run, the rest
    wait in the one queue and go to whichever worker has room; every answer is the one it gets alone."""
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    configs = [
        make_config(gen.defaults, temperature=0.0, max_length=n) for n in (30, 5, 12, 30, 8, 20, 3, 16)
    ]
    questions = QUESTIONS + QUESTIONS[:2]
    requests = [(gen.encode_prompt(q), cfg) for q, cfg in zip(questions, configs, strict=True)]
    got = _run(gen, requests, max_batch=4, max_queue=4, workers=2)
    for q, cfg, (tokens, _text, _reason) in zip(questions, configs, got, strict=True):
        assert tokens == gen.generate_results([q], config=cfg)[0].token_ids, q
    assert sorted(gen.backend.threads) == ["gptmed-worker-0", "gptmed-worker-1"]
    assert max(gen.backend.widths) == 2


def test_the_worker_count_is_bounded_by_the_batch_the_kv_budget_and_the_backend(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    gen = _slow_gen(onnx_gen, artifacts)
    context = gen.config.max_seq_len * gen.backend.kv_bytes_per_token() / 2**20  # MB of one row
    workers = lambda **c: [w.max_batch for w in Scheduler(gen, ServerConfig(**c), Metrics()).workers]  # noqa: E731
    assert workers(max_batch=5, workers=2) == [3, 2]
    assert workers(max_batch=2, workers=3) == [1, 1]  # never a worker without a row
    assert workers(max_batch=8, workers=2, kv_cache_mb=1.5 * context) == [8]  # one context fits, not two
    serial = _slow_gen(onnx_gen, artifacts, SerialSlowBackend)
    assert len(Scheduler(serial, ServerConfig(max_batch=4, workers=2), Metrics()).workers) == 1


def test_rows_with_their_own_penalties_get_the_tokens_they_get_alone(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Each row's frequency / presence penalties and no-repeat n-gram rule are its own in a batch."""
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    settings = [
        {"no_repeat_ngram_size": 2},
        {"frequency_penalty": 1.5},
        {},
        {"presence_penalty": 2.0, "no_repeat_ngram_size": 3},
        {"repetition_penalty": 1.5},
    ]
    configs = [make_config(gen.defaults, temperature=0.0, max_length=40, **s) for s in settings]
    requests = [(gen.encode_prompt(q), cfg) for q, cfg in zip(QUESTIONS, configs, strict=False)]
    got = _run(gen, requests, max_batch=8)
    for q, cfg, (tokens, _text, _reason) in zip(QUESTIONS, configs, got, strict=False):
        assert tokens == gen.generate_results([q], config=cfg)[0].token_ids, (q, cfg)
    bigrams = list(itertools.pairwise(got[0][0]))
    assert len(bigrams) == len(set(bigrams))  # the n-gram rule held in the batch
    assert max(gen.backend.widths) > 1


@pytest.mark.parametrize("workers", [1, 2])
def test_seeded_rows_in_one_batch_get_the_text_they_get_alone(variant_gen, artifacts, workers) -> None:  # type: ignore[no-untyped-def]
    gen = _slow_gen(variant_gen, artifacts, delay=0.002)
    configs = [
        make_config(gen.defaults, temperature=t, top_k=k, top_p=p, seed=seed, max_length=30)
        for t, k, p, seed in [
            (1.0, 0, 1.0, 1),
            (0.7, 50, 0.9, 2),
            (1.3, 0, 0.95, 3),
            (0.9, 5, 1.0, 4),
            (1.0, 0, 1.0, 1),
        ]
    ]
    requests = [(gen.encode_prompt(q), cfg) for q, cfg in zip(QUESTIONS, configs, strict=False)]
    got = _run(gen, requests, max_batch=8, workers=workers)
    for q, cfg, (_tokens, text, _reason) in zip(QUESTIONS, configs, got, strict=False):
        assert text == gen.generate(q, config=cfg), q
    assert max(gen.backend.widths) > 1


def test_the_kv_budget_bounds_the_batch_and_the_rest_waits(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    # two rows of 64 keys (the store's steps): the prompts (~10-40 tokens) + 20 answer tokens fit
    two_rows = 2 * 64 * gen.backend.kv_bytes_per_token() / 2**20  # MB
    configs = [make_config(gen.defaults, temperature=0.0, max_length=20) for _ in QUESTIONS]
    requests = [(gen.encode_prompt(q), cfg) for q, cfg in zip(QUESTIONS, configs, strict=True)]
    got = _run(gen, requests, max_batch=8, kv_cache_mb=two_rows)
    assert max(gen.backend.widths) == 2  # max_batch would allow 6
    for q, cfg, (tokens, _text, _reason) in zip(QUESTIONS, configs, got, strict=True):
        assert tokens == gen.generate_results([q], config=cfg)[0].token_ids
    with pytest.raises(ConfigError, match="cannot hold one request"):
        Scheduler(gen, ServerConfig(kv_cache_mb=two_rows / 4), Metrics())


def test_a_long_prompt_is_prefilled_between_the_steps_of_the_running_rows(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Its chunks alternate with decode steps, and it then answers as it does alone."""
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    calls = _log_calls(gen.backend, "extend", "step")
    short = make_config(gen.defaults, temperature=0.0, max_length=30)
    long_q = "Tell me about " + ", ".join(["fever", "asthma", "anemia", "insulin", "migraine"] * 3) + "."
    long_ids = gen.encode_prompt(long_q)
    assert len(long_ids) > 4 * 16 and len(gen.encode_prompt("What is fever?")) <= 16
    long_cfg = short.replace(max_length=gen.config.max_seq_len - len(long_ids))
    got = _run(
        gen,
        [(gen.encode_prompt("What is fever?"), short), (long_ids, long_cfg)],
        max_batch=4,
        prefill_chunk=16,
    )
    extends = [i for i, c in enumerate(calls) if c == "extend"]
    assert len(extends) == -(-len(long_ids) // 16) - 1  # every chunk after the first
    assert all(calls[i + 1] == "step" for i in extends[:-1]), calls  # the running row went on between chunks
    assert got[1][0] == gen.generate_results([long_q], config=long_cfg)[0].token_ids


def test_prompts_are_prefilled_up_to_the_chunk_before_the_next_decode_step(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Two prompts fill most of --prefill-chunk as one group; the third, which did not fit in the
    group, still fits in what is left of the chunk: it is prefilled before the first decode step
    (it used to wait for that step: a newcomer's time to first token)."""
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    calls = _log_calls(gen.backend, "prefill", "step")
    by_length = sorted(QUESTIONS, key=lambda q: len(gen.encode_prompt(q)))
    short, *_, long_a, long_b = by_length
    widest = max(len(gen.encode_prompt(q)) for q in (long_a, long_b))
    assert len(gen.encode_prompt(short)) < widest
    chunk = 2 * widest + len(gen.encode_prompt(short))  # the group takes two, the third is left over
    cfg = make_config(gen.defaults, temperature=0.0, max_length=10)
    requests = [(gen.encode_prompt(q), cfg) for q in (long_a, long_b, short)]
    got = _run(gen, requests, max_batch=4, prefill_chunk=chunk)
    first_step = calls.index("step")
    assert "prefill" in calls[:first_step] and "prefill" not in calls[first_step:], calls
    for q, (tokens, _text, _reason) in zip((long_a, long_b, short), got, strict=True):
        assert tokens == gen.generate_results([q], config=cfg)[0].token_ids


def test_a_failed_step_ends_its_rows_with_500_and_the_queue_goes_on(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """onnxruntime raises in one decode step: the rows of that batch end with a 500 error event;
    the requests still waiting are then answered as they are alone (no error, nothing lost)."""
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    backend, real_step = gen.backend, gen.backend.step
    failures = [RuntimeError("onnxruntime: out of memory")]

    def failing_step(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_step(*args)

    backend.step = failing_step
    cfg = make_config(gen.defaults, temperature=0.0, max_length=8)
    questions = QUESTIONS[:4]

    async def main() -> list[Any]:
        scheduler = Scheduler(gen, ServerConfig(max_batch=2, max_queue=4), Metrics())
        jobs = [scheduler.submit(gen.encode_prompt(q), cfg) for q in questions]

        async def last_event(job) -> Any:  # type: ignore[no-untyped-def]
            while True:
                kind, value = await job.events.get()
                if kind != "piece":
                    return kind, value, job.stream.ids

        try:
            return list(await asyncio.gather(*(last_event(job) for job in jobs)))
        finally:
            scheduler.close()
            assert scheduler.inside == 0

    ends = asyncio.run(main())
    failed = [value.status for kind, value, _ids in ends if kind == "error"]
    assert failed in ([500], [500, 500]), ends  # the rows of the failed step (1 or 2 had joined)
    assert [kind for kind, _value, _ids in ends[len(failed) :]] == ["end"] * (4 - len(failed))
    for q, (_kind, _value, ids) in zip(questions[len(failed) :], ends[len(failed) :], strict=True):
        assert ids == gen.generate_results([q], config=cfg)[0].token_ids, q


def test_a_checkpoint_on_torch_is_served_row_by_row(torch_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    from openai import OpenAI

    for url in _start(torch_gen, max_batch=4, max_queue=4):
        client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)

        def ask(q: str, client: OpenAI = client) -> str:
            r = client.completions.create(model="gptmed", prompt=q, temperature=0, max_tokens=30)
            return r.choices[0].text  # type: ignore[no-any-return]

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, QUESTIONS[:4]))
        assert answers == [torch_gen.generate(q, temperature=0, max_length=30) for q in QUESTIONS[:4]]


def test_rows_of_a_backend_without_batching_take_turns(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    gen = _slow_gen(onnx_gen, artifacts, SerialSlowBackend, delay=0.002)
    configs = [make_config(gen.defaults, temperature=0.0, max_length=n) for n in (20, 5, 20)]
    requests = [(gen.encode_prompt(q), cfg) for q, cfg in zip(QUESTIONS, configs, strict=False)]
    got = _run(gen, requests, max_batch=4)
    for q, cfg, (tokens, _text, _reason) in zip(QUESTIONS, configs, got, strict=False):
        assert tokens == gen.generate_results([q], config=cfg)[0].token_ids


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_count_outcomes_tokens_and_latencies(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    gen = _slow_gen(onnx_gen, artifacts, delay=0.05, eos=onnx_gen.special_ids.eos)
    auth = {"Authorization": f"Bearer {KEY}"}
    for url in _start(gen, max_batch=1, max_queue=0):
        assert httpx.get(url + "/metrics").status_code == 401  # behind the key, like the API
        with httpx.stream(
            "POST",
            url + "/v1/completions",
            headers=auth,
            json={"prompt": "What is fever?", "max_tokens": 30, "stream": True},
        ) as running:
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")  # running: the batch is full
            page = httpx.get(url + "/metrics", headers=auth).text
            assert _metric(page, "gptmed_batch_size") == 1 and _metric(page, "gptmed_queue_depth") == 0
            busy = httpx.post(url + "/v1/completions", headers=auth, json={"prompt": "What is fever?"})
            assert busy.status_code == 429
            bad = httpx.post(url + "/v1/completions", headers=auth, json={"prompt": "hi", "top_p": 7})
            assert bad.status_code == 400
        # the client left the stream: its row is freed
        deadline = time.time() + 5
        while httpx.get(url + "/health").json()["active"]:
            assert time.time() < deadline
            time.sleep(0.02)
        r = httpx.post(
            url + "/v1/completions", headers=auth, json={"prompt": "What is fever?", "max_tokens": 4}
        )
        assert r.status_code == 200
        page = httpx.get(url + "/metrics", headers=auth).text
        assert page.startswith("# HELP")
        for outcome, count in [
            ("ok", 1),
            ("cancelled", 1),
            ("rate_limited", 1),
            ("bad_request", 1),
            ("error", 0),
        ]:
            assert _metric(page, f'gptmed_requests_total{{outcome="{outcome}"}}') == count, outcome
        assert _metric(page, "gptmed_completion_tokens_total") >= 5
        assert _metric(page, "gptmed_prompt_tokens_total") == 2 * len(gen.encode_prompt("What is fever?"))
        assert _metric(page, "gptmed_time_to_first_token_seconds_count") == 2
        assert _metric(page, "gptmed_time_per_output_token_seconds_count") >= 3
        assert _metric(page, "gptmed_batch_size") == 0


def test_a_queued_client_that_leaves_frees_its_place(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    from test_server import _LONG, _raw_post

    gen = _slow_gen(onnx_gen, artifacts, delay=0.025, eos=onnx_gen.special_ids.eos)

    def waiting(count: int) -> dict[str, Any]:
        deadline = time.time() + 5
        while (h := httpx.get(url + "/health").json())["waiting"] != count:
            assert time.time() < deadline, h
            time.sleep(0.02)
        return h  # type: ignore[no-any-return]

    for url in _start(gen, max_batch=1, max_queue=2):
        running = _raw_post(url, {**_LONG, "stream": True})
        assert b"200 OK" in running.recv(4096)
        first = _raw_post(url, {**_LONG, "stream": True})  # waits for the running one (64 steps)
        waiting(1)
        second = _raw_post(url, _LONG)  # plain, behind the first
        waiting(2)
        second.close()
        h = waiting(1)  # was: held its place until it reached the head of the queue
        assert h["active"] == 1 and h["cancelled"] == 1
        third = _raw_post(url, _LONG)  # takes the place: not a 429
        h = waiting(2)
        for sock in (third, first, running):
            sock.close()


def test_a_stream_that_fell_behind_gets_the_queued_pieces_as_one_event(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Its writer did not read while the row ran: the pieces queued meanwhile come out joined (one
    SSE event, not one per token), then the end, apart."""
    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    cfg = make_config(gen.defaults, temperature=0.0, max_length=20)
    question = QUESTIONS[0]

    async def main() -> list[Any]:
        scheduler = Scheduler(gen, ServerConfig(max_batch=2), Metrics())
        try:
            job = scheduler.submit(gen.encode_prompt(question), cfg)
            while not job.ended:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the worker's last post reaches the queue
            assert job.events.qsize() > 2  # a piece per token, and the end
            return await job.next_events()
        finally:
            scheduler.close()

    alone = gen.generate_results([question], config=cfg)[0]
    reason = "stop" if alone.finish_reason == "eos" else alone.finish_reason
    assert asyncio.run(main()) == [("piece", alone.text), ("end", (reason, len(alone.token_ids)))]


def test_stream_interval_sends_the_first_text_at_once_then_every_n_tokens(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """--stream-interval 4: the first text as soon as its token is sampled, then one piece event
    per 4 tokens, the rest with the end; the text and tokens are the ones the row gets alone."""
    from gptmed.inference import AnswerStream

    gen = _slow_gen(onnx_gen, artifacts, delay=0.002)
    cfg = make_config(gen.defaults, temperature=0.0, max_length=30)
    question = QUESTIONS[0]  # 19 tokens, then EOS
    alone = gen.generate_results([question], config=cfg)[0]
    reference = AnswerStream(gen.tokenizer.decode, cfg.stop)
    first = next(n for n, token in enumerate(alone.token_ids, 1) if reference.push(token))
    assert len(alone.token_ids) - first > 8  # room for a few intervals after the first text

    async def pieces(interval: int) -> list[str]:
        scheduler = Scheduler(gen, ServerConfig(max_batch=2, stream_interval=interval), Metrics())
        try:
            job = scheduler.submit(gen.encode_prompt(question), cfg)
            got = []
            while True:
                kind, value = await job.events.get()  # one event at a time: no joining here
                if kind == "end":
                    return got
                assert kind == "piece"
                got.append(value)
        finally:
            scheduler.close()

    every = asyncio.run(pieces(1))
    grouped = asyncio.run(pieces(4))
    assert "".join(every) == "".join(grouped) == alone.text
    assert grouped[0] == every[0]  # the first text is not held back
    # after it, a piece per 4 tokens (and what is left with the end): about a quarter of the events
    rest = len(alone.token_ids) - first
    assert len(grouped) <= 1 + -(-rest // 4) + 1 < len(every)
    with pytest.raises(ConfigError, match="stream_interval must be >= 1"):
        ServerConfig(stream_interval=0)
