"""Soak: a real server process at twice its capacity for GPTMED_SOAK_SECONDS (30 s), streamed,
plain and abandoned requests mixed. No 5xx; every request is answered in full, with the answer
it gets alone (no lost or mixed-up answers), or refused with 429; RSS stays flat after warm-up;
clients that leave free their rows."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

SECONDS = float(os.environ.get("GPTMED_SOAK_SECONDS", "30"))
BATCH, QUEUE = 4, 4
CLIENTS = 2 * (BATCH + QUEUE)  # twice what the server takes in: the rest must get 429
RSS_GROWTH_MB = 24.0  # allowed after warm-up (allocator noise; a leak of 10 kB a request is 30+ MB)

_SERVER = """
import sys
from gptmed.inference import TextGenerator
from gptmed.inference.server import ServerConfig, build_server
gen = TextGenerator.from_bundle(sys.argv[1])
config = ServerConfig(port=int(sys.argv[2]), max_batch=int(sys.argv[3]), max_queue=int(sys.argv[4]), prefill_chunk=16)
build_server(gen, config, log_level="warning").run()
"""

QUESTIONS = [
    "What is fever?",
    "Explain 腎臓.",
    "Tell me about café au lait spot.",
    "What is insulin?",
    "Tell me about a fracture.",
    "What is hypertension?",
    "Explain asthma, anemia and migraine, one after the other, please.",
    "What is vitamin C?",
]


def _cases(gen) -> list[tuple[dict[str, Any], str]]:  # type: ignore[no-untyped-def]
    """(request body, the answer alone): greedy and seeded, different lengths."""
    cases = []
    for n, q in enumerate(QUESTIONS):
        for params in (
            {"temperature": 0, "max_tokens": 8 + 5 * n},
            {"temperature": 1.0, "top_k": 0, "seed": 100 + n, "max_tokens": 40},
            {"temperature": 0.8, "top_p": 0.9, "seed": n, "max_tokens": 24, "repetition_penalty": 1.3},
        ):
            kw = {k: v for k, v in params.items() if k != "max_tokens"}
            cases.append(({"prompt": q, **params}, gen.generate(q, max_length=params["max_tokens"], **kw)))
    return cases


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _client(
    url: str, cases: list[tuple[dict[str, Any], str]], seed: int, until: float, tally: Counter[str]
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.monotonic() < until:
            body, expected = rng.choice(cases)
            mode = rng.choices(["plain", "stream", "leave"], weights=[4, 4, 2])[0]
            tally["sent"] += 1
            if mode == "plain":
                r = await http.post("/v1/completions", json=body)
                assert r.status_code in (200, 429), (r.status_code, r.text)
                if r.status_code == 200:
                    assert r.json()["choices"][0]["text"] == expected, body
                tally["answered" if r.status_code == 200 else "refused"] += 1
                if r.status_code == 429:
                    await asyncio.sleep(rng.uniform(0.05, 0.2))  # a client backs off a little
                continue
            async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                assert r.status_code in (200, 429), r.status_code
                if r.status_code == 429:
                    await r.aread()
                    tally["refused"] += 1
                    await asyncio.sleep(rng.uniform(0.05, 0.2))
                    continue
                text, done = "", False
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    assert line.startswith("data: "), line
                    if line == "data: [DONE]":
                        done = True
                        break
                    event = json.loads(line[6:])
                    assert "error" not in event, event
                    text += event["choices"][0]["text"]
                    if mode == "leave":
                        break  # gone after the first piece: the server must free the row
                if mode == "leave":
                    tally["left"] += 1
                    continue
                assert done and text == expected, (body, text, expected)
                tally["answered"] += 1


def test_soak_at_twice_capacity(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    cases = _cases(onnx_gen)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(artifacts.bundle), str(port), str(BATCH), str(QUEUE)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, proc.communicate()
                time.sleep(0.1)
        tally: Counter[str] = Counter()
        rss: list[tuple[float, float]] = []

        async def soak() -> None:
            start = time.monotonic()
            until = start + SECONDS
            clients = [asyncio.create_task(_client(url, cases, n, until, tally)) for n in range(CLIENTS)]
            while not all(c.done() for c in clients):
                rss.append((time.monotonic() - start, _rss_mb(proc.pid)))
                await asyncio.wait(clients, timeout=0.5)
            for c in clients:
                c.result()  # an assertion inside a client fails the test here

        asyncio.run(soak())
        assert tally["sent"] == tally["answered"] + tally["refused"] + tally["left"], tally  # nothing lost
        assert tally["answered"] > 50 and tally["refused"] > 0 and tally["left"] > 0, tally
        warm = [mb for t, mb in rss if t >= SECONDS / 3]
        assert max(warm) - warm[0] < RSS_GROWTH_MB, (warm[0], max(warm), rss[::4])
        deadline = time.time() + 5
        while (h := httpx.get(url + "/health").json())["active"] or h["waiting"]:
            assert time.time() < deadline, h  # rows of clients that left were freed
            time.sleep(0.05)
        metrics = httpx.get(url + "/metrics").text
        assert 'gptmed_requests_total{outcome="error"} 0.0' in metrics
        assert 'gptmed_requests_total{outcome="cancelled"} 0.0' not in metrics
        print(f"soak {SECONDS:g} s: {dict(tally)}, RSS {warm[0]:.0f} -> {max(warm):.0f} MB, health {h}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
