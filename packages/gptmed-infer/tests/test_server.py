"""The OpenAI-compatible server, on a real uvicorn on 127.0.0.1, with the official openai client."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from gptmed.core import ConfigError  # noqa: E402
from gptmed.inference.server import ServerConfig, build_server, check_bind  # noqa: E402
from server_backends import SlowBackend  # noqa: E402

KEY = "sk-test-0123456789"


def _start(gen, max_queue: int = 0, **config: Any) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The server `gptmed-infer serve` runs (build_server), on a free port, in a thread."""
    settings = {"max_batch": 1, "max_tokens": 64, "max_body": 8192, "workers": 2, **config}
    cfg = ServerConfig(api_key=KEY, port=0, max_queue=max_queue, **settings)
    srv = build_server(gen, cfg, log_level="warning")
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    scheduler = srv.config.app.state.api.scheduler  # the generation thread ends with the server
    assert not any(thread.is_alive() for thread in scheduler.threads)


@pytest.fixture(scope="module")
def server(onnx_gen) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield from _start(onnx_gen)


def _never_ends(onnx_gen, artifacts):  # type: ignore[no-untyped-def]
    """A generator where EOS never wins: every request generates all its max_tokens, 25 ms a step."""
    from gptmed.inference import TextGenerator

    backend = SlowBackend(onnx_gen.backend, eos=onnx_gen.special_ids.eos)
    return TextGenerator(model=backend, tokenizer_path=str(artifacts.bundle / "tokenizer.model"))


@pytest.fixture(scope="module")
def slow(onnx_gen, artifacts):  # type: ignore[no-untyped-def]
    """A server on :func:`_never_ends` (so a stream is still running when a test acts on it)."""
    gen = _never_ends(onnx_gen, artifacts)
    for url in _start(gen):
        yield url, gen.backend


def _client(url: str, key: str = KEY):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _post(url: str, path: str, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=content, headers=h, timeout=30)


def _error(r: httpx.Response) -> dict[str, object]:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


# no EOS on the slow backend, no matching stop string: runs its 64 tokens (>= 1.6 s there)
_LONG = {
    "prompt": "What is fever?",
    "temperature": 1.5,
    "top_k": 0,
    "max_tokens": 64,
    "stop": ["zzzz"],
    "seed": 0,
}


def _raw_post(url: str, body: dict[str, Any]) -> socket.socket:
    """POST /v1/completions on a raw socket (the test decides when the client goes away)."""
    data = json.dumps(body).encode()
    return _raw(
        url,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data,
    )


def _raw(url: str, request: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(request)
    return sock


def test_chat_completion_with_the_openai_client(server, onnx_gen) -> None:  # type: ignore[no-untyped-def]
    resp = _client(server).chat.completions.create(
        model="gptmed",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is fever?"}],
        temperature=0,
        max_tokens=40,
    )
    assert resp.choices[0].message.content == onnx_gen.generate(
        "What is fever?", temperature=0, max_length=40
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0


def test_completion_and_streaming_end_with_done(server, onnx_gen) -> None:  # type: ignore[no-untyped-def]
    client = _client(server)
    expected = onnx_gen.generate("Explain 腎臓.", temperature=0, max_length=40)
    resp = client.completions.create(model="gptmed", prompt="Explain 腎臓.", temperature=0, max_tokens=40)
    assert resp.choices[0].text == expected
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="gptmed",
            messages=[{"role": "user", "content": "Explain 腎臓."}],
            temperature=0,
            max_tokens=40,
            stream=True,
        )
    ]
    assert "".join(pieces) == expected
    with httpx.stream(
        "POST",
        server + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "What is fever?", "stream": True, "temperature": 0, "max_tokens": 3},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_wrong_or_missing_key_is_401(server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="sk-wrong").chat.completions.create(
            model="gptmed", messages=[{"role": "user", "content": "x"}]
        )
    r = httpx.post(server + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"
    r = httpx.get(server + "/v1/models/other")  # the key first: no word on which models exist
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        ("/v1/chat/completions", b"{not json", "invalid_json", None),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
            "invalid_unicode",
            None,
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "\\ud800"}]}',
            "invalid_unicode",
            "messages",
        ),
        ("/v1/chat/completions", '{"messages": []}', "invalid_value", "messages"),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
            "invalid_value",
            "temperature",
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}',
            "invalid_value",
            "temperature",
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}',
            "invalid_value",
            "top_p",
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
            "invalid_value",
            "max_tokens",
        ),
        ("/v1/completions", '{"prompt": "' + "fever " * 150 + '"}', "context_length_exceeded", "prompt"),
        (
            "/v1/completions",
            '{"prompt": "What is fever?", "max_tokens": 64, "top_k": -2}',
            "invalid_value",
            "top_k",
        ),
        # numpy's generators refuse negative seeds (a 500, or a stream that ended in an error event)
        ("/v1/completions", '{"prompt": "hi", "seed": -1}', "invalid_value", "seed"),
        ("/v1/completions", '{"prompt": "hi", "seed": -1, "stream": true}', "invalid_value", "seed"),
        # an integer beyond float's range (OverflowError), one beyond 4,300 digits (ValueError in
        # json.loads), nesting beyond the recursion limit (RecursionError): all under the body cap
        ("/v1/completions", '{"prompt": "hi", "top_k": 1' + "0" * 400 + "}", "invalid_value", "top_k"),
        (
            "/v1/completions",
            '{"prompt": "hi", "temperature": 1' + "0" * 400 + "}",
            "invalid_value",
            "temperature",
        ),
        ("/v1/completions", '{"prompt": "hi", "user": 1' + "0" * 4400 + "}", "invalid_json", None),
        ("/v1/completions", '{"prompt": "hi", "x": ' + "[" * 3000 + "]" * 3000 + "}", "invalid_json", None),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
            "invalid_type",
            "messages",
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": ["hi"]}]}',
            "invalid_type",
            "messages",
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": null}]}',
            "invalid_type",
            "messages",
        ),
        (
            "/v1/completions",
            '{"prompt": "hi", "max_tokens": 2, "max_completion_tokens": 5}',
            "invalid_value",
            "max_completion_tokens",
        ),
        ("/v1/completions", '{"prompt": "hi", "n": true}', "invalid_type", "n"),  # True == 1 in Python
        ("/v1/completions", '{"prompt": "hi", "n": 2}', "invalid_value", "n"),
        ("/v1/completions", '{"prompt": "hi", "frequency_penalty": 3}', "invalid_value", "frequency_penalty"),
        (
            "/v1/completions",
            '{"prompt": "hi", "presence_penalty": -2.5}',
            "invalid_value",
            "presence_penalty",
        ),
        (
            "/v1/completions",
            '{"prompt": "hi", "no_repeat_ngram_size": -1}',
            "invalid_value",
            "no_repeat_ngram_size",
        ),
        (
            "/v1/completions",
            '{"prompt": "hi", "no_repeat_ngram_size": 1.5}',
            "invalid_value",
            "no_repeat_ngram_size",
        ),
        # silently ignoring them would hand back something else than what was asked for
        ("/v1/completions", '{"prompt": "hi", "echo": true}', "unsupported_parameter", "echo"),
        ("/v1/completions", '{"prompt": "hi", "logprobs": 2}', "unsupported_parameter", "logprobs"),
        ("/v1/completions", '{"prompt": "hi", "suffix": "x"}', "unsupported_parameter", "suffix"),
        ("/v1/completions", '{"prompt": "hi", "stream_options": 3}', "invalid_type", "stream_options"),
    ],
)
def test_bad_requests_are_400_never_500(server, path, body, code, param) -> None:  # type: ignore[no-untyped-def]
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["code"] == code and err["param"] == param


def test_max_completion_tokens_is_max_tokens_under_its_newer_name(server) -> None:  # type: ignore[no-untyped-def]
    for fields in ({"max_completion_tokens": 2}, {"max_tokens": 2, "max_completion_tokens": 2}):
        body = {"prompt": "What is fever?", "temperature": 0, "frequency_penalty": 0, **fields}
        r = _post(server, "/v1/completions", json.dumps(body))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["usage"]["completion_tokens"] == 2 and answer["choices"][0]["finish_reason"] == "length"


def test_a_bad_chat_message_is_named_by_its_index(server) -> None:  # type: ignore[no-untyped-def]
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": None}]
    message = str(_error(_post(server, "/v1/chat/completions", json.dumps({"messages": turns})))["message"])
    assert message == "'messages[1].content' must be a string, got null", message
    turns[1]["content"] = [{"type": "text", "text": "hi"}, "there"]
    message = str(_error(_post(server, "/v1/chat/completions", json.dumps({"messages": turns})))["message"])
    assert message.startswith("'messages[1].content[1]' must be a content part such as {"), message


def test_context_length_exceeded_by_max_tokens(server) -> None:  # type: ignore[no-untyped-def]
    r = _post(server, "/v1/completions", json.dumps({"prompt": "fever " * 40, "max_tokens": 64}))
    assert r.status_code == 400 and _error(r)["code"] == "context_length_exceeded"
    assert "(at most " in str(_error(r)["message"])
    r = _post(server, "/v1/completions", json.dumps({"prompt": "fever " * 150}))  # no max_tokens
    message = str(_error(r)["message"])
    assert "no room for an answer" in message and "max_tokens is -" not in message


def test_openai_fields_that_may_be_null_and_earlier_turns_without_content(server) -> None:  # type: ignore[no-untyped-def]
    body = {"prompt": "What is fever?", "temperature": 0, "max_tokens": 5, "n": None, "stream": None}
    assert _post(server, "/v1/completions", json.dumps(body)).status_code == 200
    messages = [
        {"role": "user", "content": "What is asthma?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "{}", "tool_call_id": "c1"},
        {"role": "user", "content": "What is fever?"},
    ]
    r = _post(server, "/v1/chat/completions", json.dumps({"messages": messages, "max_tokens": 5}))
    assert r.status_code == 200, r.text
    r = _post(server, "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": None}]}))
    assert r.status_code == 400 and _error(r)["param"] == "messages"  # the question itself must be text


def test_stream_options_include_usage_sends_a_usage_chunk(server) -> None:  # type: ignore[no-untyped-def]
    chunks = list(
        _client(server).chat.completions.create(
            model="gptmed",
            messages=[{"role": "user", "content": "What is fever?"}],
            temperature=0,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4 and last.usage.total_tokens == last.usage.prompt_tokens + 4
    assert all(c.usage is None for c in chunks[:-1])


def test_an_api_key_clients_cannot_send_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="printable ASCII"):
        ServerConfig(api_key="clé-ü")
    for key in ("abc ", " abc", " "):
        with pytest.raises(ConfigError, match="whitespace"):
            ServerConfig(api_key=key)
    assert ServerConfig(api_key="a b").api_key == "a b"  # inside the key, a space travels


def test_body_over_the_cap_is_413_before_parsing(server) -> None:  # type: ignore[no-untyped-def]
    r = _post(server, "/v1/completions", b"x" * 10_000)  # not even JSON: the size check comes first
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"


def test_over_the_concurrency_limit_is_fast_429_and_disconnect_stops_generation(slow) -> None:  # type: ignore[no-untyped-def]
    url, backend = slow
    sock = _raw_post(url, {**_LONG, "stream": True})
    assert b"200 OK" in sock.recv(4096)  # headers sent: the stream holds the only slot (64 steps >= 1.6 s)
    start = time.perf_counter()
    r = _post(url, "/v1/completions", json.dumps({"prompt": "What is fever?", "max_tokens": 5}))
    assert r.status_code == 429 and _error(r)["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] == "1"
    assert time.perf_counter() - start < 1.0  # fast, not queued behind the stream
    assert httpx.get(url + "/health").json()["active"] == 1
    sock.close()  # the client goes away mid-stream
    deadline = time.time() + 10
    while (h := httpx.get(url + "/health").json())["active"] != 0:
        assert time.time() < deadline, "generation kept running after the client left"
        time.sleep(0.02)
    assert h["cancelled"] == 1
    steps = backend.steps
    assert steps < 60  # stopped early, not after all 64 tokens
    time.sleep(0.2)
    assert backend.steps == steps  # and nothing runs on in the background
    ok = _post(
        url, "/v1/completions", json.dumps({"prompt": "What is fever?", "max_tokens": 5, "temperature": 0})
    )
    assert ok.status_code == 200


def test_a_bounded_queue_serves_the_slot_and_the_queue_and_refuses_the_rest(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    gen = _never_ends(onnx_gen, artifacts)
    # every request generates 40 tokens at >= 25 ms each (>= 1 s): all four arrive while the first runs
    body = {"prompt": "What is fever?", "temperature": 0, "max_tokens": 40, "stop": ["zzzz"]}

    def post(url: str, seed: int) -> tuple[int, float]:
        start = time.perf_counter()
        r = _post(url, "/v1/completions", json.dumps({**body, "seed": seed}))
        return r.status_code, time.perf_counter() - start

    for url in _start(gen, max_queue=1):  # one running, one waiting
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(post, [url] * 4, range(4)))
        codes = sorted(code for code, _ in results)
        assert codes == [200, 200, 429, 429], results
        refused = [secs for code, secs in results if code == 429]
        served = [secs for code, secs in results if code == 200]
        assert max(refused) < min(served) and max(refused) < 0.9, results  # refused at once
        assert max(served) > 2.0, results  # the queued one waited for the running one


def test_models_endpoint_and_unknown_route(server) -> None:  # type: ignore[no-untyped-def]
    assert [m.id for m in _client(server).models.list()] == ["gptmed"]
    assert _client(server).models.retrieve("gptmed").id == "gptmed"
    listed = httpx.get(server + "/v1/models/", headers={"Authorization": f"Bearer {KEY}"})
    assert listed.json()["data"][0]["id"] == "gptmed"  # with the slash: the list
    with pytest.raises(openai.NotFoundError, match="no model 'other'"):
        _client(server).models.retrieve("other")
    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and _error(r)["code"] == "not_found"


def test_public_bind_without_key_warns(caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level("WARNING"):
        check_bind(ServerConfig(host="0.0.0.0"))
    assert "WITHOUT an API key" in caplog.text
    caplog.clear()
    check_bind(ServerConfig(host="127.0.0.1"))
    check_bind(ServerConfig(host="0.0.0.0", api_key="k"))
    assert caplog.text == ""
    assert ServerConfig().host == "127.0.0.1"


def _wait_idle(url: str, seconds: float = 5.0) -> dict[str, Any]:
    deadline = time.time() + seconds
    while (h := httpx.get(url + "/health").json())["active"] != 0:
        assert time.time() < deadline, f"generation kept running: {h}"
        time.sleep(0.02)
    return h  # type: ignore[no-any-return]


def test_a_client_leaving_a_non_streamed_request_stops_its_generation(slow) -> None:  # type: ignore[no-untyped-def]
    url, backend = slow
    cancelled = httpx.get(url + "/health").json()["cancelled"]
    sock = _raw_post(url, _LONG)
    time.sleep(0.3)
    assert httpx.get(url + "/health").json()["active"] == 1
    start_steps = backend.steps
    sock.close()  # gone before its answer (64 steps >= 1.6 s)
    h = _wait_idle(url, 1.0)  # was: ran all 64 tokens, holding the slot
    assert h["cancelled"] == cancelled + 1
    steps = backend.steps
    assert steps - start_steps < 40
    time.sleep(0.2)
    assert backend.steps == steps


def test_a_full_batch_runs_at_once(onnx_gen, artifacts) -> None:  # type: ignore[no-untyped-def]
    """Every request of a full batch gets its first text at once, none waits for another (with a
    thread per request, asyncio's default pool of min(32, cores + 4) threads queued those beyond)."""
    from concurrent.futures import ThreadPoolExecutor

    slots = (os.cpu_count() or 1) + 6
    gen = _never_ends(onnx_gen, artifacts)
    body = {**_LONG, "stream": True}

    def first_piece(url: str) -> float:
        """Seconds to the first text; reads the stream to its end (leaving early would free the slot)."""
        start, first = time.perf_counter(), None
        with httpx.stream(
            "POST", url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body, timeout=60
        ) as r:
            for line in r.iter_lines():
                if first is None and line.startswith("data: {"):
                    first = time.perf_counter() - start
        assert first is not None
        return first

    for url in _start(gen, max_batch=slots):
        with ThreadPoolExecutor(slots) as pool:
            waits = list(pool.map(first_piece, [url] * slots))
        # a generation of 64 steps takes >= 1.6 s: one that waited for another would be that late
        assert max(waits) - min(waits) < 1.2, waits


def test_slow_headers_are_cut_off_and_a_slow_body_is_408(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    for url in _start(onnx_gen, read_timeout=1.0):
        idle = _raw(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        start = time.perf_counter()
        assert idle.recv(100) == b""  # closed by the server
        assert 0.8 < time.perf_counter() - start < 3.0
        slow_body = _raw(
            url,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"prompt": ',
        )
        reply = b""
        while b"}}" not in reply and (part := slow_body.recv(4096)):
            reply += part
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b'"code":"request_timeout"' in reply
        assert slow_body.recv(100) == b""  # and the connection is closed with it (it stayed open)
        # a kept-alive connection gets the same deadline for its next request's headers
        kept = _raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        kept.sendall(b"GET /health HTTP/1.1\r\n")  # then trickles a header byte every 0.4 s
        start = time.perf_counter()
        closed = False
        while time.perf_counter() - start < 4.0 and not closed:
            try:
                kept.sendall(b"X")
                kept.settimeout(0.4)
                closed = kept.recv(100) == b""
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                closed = True
        assert closed and time.perf_counter() - start < 2.5  # was: open for good
        assert httpx.get(url + "/health").status_code == 200  # and the server is fine


_DRAIN_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[3])
from gptmed.inference import TextGenerator
from gptmed.inference.server import ServerConfig, build_server
from server_backends import SlowBackend

bundle, port = sys.argv[1], int(sys.argv[2])
inner = TextGenerator.from_bundle(bundle)
# 50 ms a step, EOS never wins: every request runs all its tokens
slow = SlowBackend(inner.backend, delay=0.05, eos=inner.special_ids.eos)
gen = TextGenerator(model=slow, tokenizer_path=bundle + "/tokenizer.model")
build_server(gen, ServerConfig(port=port, max_batch=4, shutdown_timeout=3.0), log_level="warning").run()
"""


def test_sigterm_ends_long_requests_with_openai_errors_not_plain_500s(artifacts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRAIN_SCRIPT, str(artifacts.bundle), str(port), os.path.dirname(__file__)],
        stdout=subprocess.PIPE,
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
        body = {"prompt": "What is fever?", "temperature": 0, "max_tokens": 80, "stop": ["zzzz"]}

        def plain() -> httpx.Response:
            return httpx.post(url + "/v1/completions", json=body, timeout=30)

        def streamed() -> list[str]:
            with httpx.stream(
                "POST", url + "/v1/completions", json={**body, "stream": True}, timeout=30
            ) as r:
                return [line for line in r.iter_lines() if line]

        quick = {**body, "max_tokens": 10}
        with ThreadPoolExecutor(3) as pool:
            long_plain, long_stream = pool.submit(plain), pool.submit(streamed)
            short = pool.submit(lambda: httpx.post(url + "/v1/completions", json=quick, timeout=30))
            with httpx.Client() as probe:  # all three running (80 steps >= 4 s; 10 steps >= 0.5 s: 2 s to go)
                while probe.get(url + "/health").json()["active"] < 3:
                    assert time.time() < deadline
                    time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            r = short.result()
            assert (
                r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
            )  # finished in time
            r = long_plain.result()
            assert r.status_code == 503, r.text  # was a plain-text "Internal Server Error"
            assert _error(r)["code"] == "server_shutting_down"
            lines = long_stream.result()
            assert lines[-1] == "data: [DONE]", lines[-3:]  # was cut off mid-answer
            assert json.loads(lines[-2][6:])["error"]["code"] == "server_shutting_down"
        assert proc.wait(timeout=10) == -signal.SIGTERM  # uvicorn re-raises the signal once drained
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _serve_cli(args: list[str], **popen: Any) -> Any:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    code = "import sys; from gptmed.inference.cli import main; sys.argv[0] = 'gptmed-infer'; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        **popen,
    )


def test_a_port_in_use_or_an_unknown_host_is_one_line_before_any_banner(artifacts) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve_cli(["--bundle", str(artifacts.bundle), "--port", str(port)])
        out, err = proc.communicate(timeout=60)
    # was "INFO: Started server process" then "ERROR: [Errno 98] ... address already in use", exit 3
    assert (proc.returncode, out) == (1, ""), err
    assert err == (
        f"Error: cannot listen on 127.0.0.1:{port}: address already in use; pass another --port "
        "(0 picks a free one)\n"
    )
    proc = _serve_cli(["--bundle", str(artifacts.bundle), "--host", "nosuchhost.invalid", "--port", "0"])
    out, err = proc.communicate(timeout=60)
    # was the "WITHOUT an API key" warning, then "ERROR: [Errno -2] Name or service not known"
    assert (proc.returncode, out) == (1, ""), err
    assert len(err.splitlines()) == 1 and err.startswith("Error: cannot listen on nosuchhost.invalid:0: "), (
        err
    )
    assert err.endswith("; pass --host 127.0.0.1 or an address of this machine\n"), err


def test_serve_on_port_0_listens_on_a_free_port_and_names_it(artifacts) -> None:  # type: ignore[no-untyped-def]
    import queue
    import re
    import signal

    proc = _serve_cli(["--bundle", str(artifacts.bundle), "--port", "0", "--api-key", KEY])
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        seen: list[str] = []
        deadline = time.time() + 60
        while not seen or "listening on" not in seen[-1]:
            assert proc.poll() is None and time.time() < deadline, seen
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+) ", seen[-1]).group(1))  # type: ignore[union-attr]
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
