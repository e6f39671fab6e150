"""The OpenAI-compatible server, on a real uvicorn on 127.0.0.1, with the official openai client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from gptmed.inference.server import ServerConfig, check_bind, create_app  # noqa: E402

KEY = "sk-test-0123456789"


def _start(gen, max_queue: int = 0) -> Iterator[str]:  # type: ignore[no-untyped-def]
    cfg = ServerConfig(api_key=KEY, max_concurrency=1, max_queue=max_queue, max_tokens=64, max_body=8192)
    config = uvicorn.Config(
        create_app(gen, cfg), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    srv = uvicorn.Server(config)
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


@pytest.fixture(scope="module")
def server(onnx_gen) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield from _start(onnx_gen)


class _SlowBackend:
    """The real onnxruntime backend, 25 ms slower per decode step (so a stream is still running)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.config, self.name = inner, inner.config, "slow-onnxruntime"
        self.steps = 0

    def prefill(self, ids, mask, capacity=None):  # type: ignore[no-untyped-def]
        return self.inner.prefill(ids, mask, capacity)

    def decode(self, state, tokens):  # type: ignore[no-untyped-def]
        self.steps += 1
        time.sleep(0.025)
        return self.inner.decode(state, tokens)

    def forward(self, ids, mask):  # type: ignore[no-untyped-def]
        return self.inner.forward(ids, mask)


@pytest.fixture(scope="module")
def slow(onnx_gen, artifacts):  # type: ignore[no-untyped-def]
    from gptmed.inference import TextGenerator

    backend = _SlowBackend(onnx_gen.backend)
    gen = TextGenerator(model=backend, tokenizer_path=str(artifacts.bundle / "tokenizer.model"))
    for url in _start(gen):
        yield url, backend


def _client(url: str, key: str = KEY):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _post(url: str, path: str, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=content, headers=h, timeout=30)


def _error(r: httpx.Response) -> dict[str, object]:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


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
        ("/v1/completions", '{"prompt": "' + "fever " * 150 + '"}', "context_length_exceeded", "messages"),
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
    ],
)
def test_bad_requests_are_400_never_500(server, path, body, code, param) -> None:  # type: ignore[no-untyped-def]
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["code"] == code and err["param"] == param


def test_context_length_exceeded_by_max_tokens(server) -> None:  # type: ignore[no-untyped-def]
    r = _post(server, "/v1/completions", json.dumps({"prompt": "fever " * 40, "max_tokens": 64}))
    assert r.status_code == 400 and _error(r)["code"] == "context_length_exceeded"


def test_body_over_the_cap_is_413_before_parsing(server) -> None:  # type: ignore[no-untyped-def]
    r = _post(server, "/v1/completions", b"x" * 10_000)  # not even JSON: the size check comes first
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"


def test_over_the_concurrency_limit_is_fast_429_and_disconnect_stops_generation(slow) -> None:  # type: ignore[no-untyped-def]
    url, backend = slow
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "prompt": "What is fever?",
            "stream": True,
            "temperature": 1.5,
            "top_k": 0,
            "max_tokens": 64,
            "stop": ["zzzz"],
            "seed": 0,
        }
    ).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"200 OK" in sock.recv(4096)  # headers sent: the stream holds the only slot (64 steps >= 1.6 s)
    start = time.perf_counter()
    r = _post(url, "/v1/completions", json.dumps({"prompt": "What is fever?", "max_tokens": 5}))
    assert r.status_code == 429 and _error(r)["code"] == "rate_limit_exceeded"
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

    from gptmed.inference import TextGenerator

    class NeverEnds(_SlowBackend):
        """EOS never wins: every request generates all its max_tokens, 25 ms a step."""

        def prefill(self, ids, mask, capacity=None):  # type: ignore[no-untyped-def]
            logits, state = super().prefill(ids, mask, capacity)
            return self._no_eos(logits), state

        def decode(self, state, tokens):  # type: ignore[no-untyped-def]
            return self._no_eos(super().decode(state, tokens))

        @staticmethod
        def _no_eos(logits):  # type: ignore[no-untyped-def]
            logits = logits.copy()
            logits[:, onnx_gen.special_ids.eos] = -1e9
            return logits

    tokenizer = str(artifacts.bundle / "tokenizer.model")
    gen = TextGenerator(model=NeverEnds(onnx_gen.backend), tokenizer_path=tokenizer)
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
