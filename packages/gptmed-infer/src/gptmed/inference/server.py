"""``gptmed-infer serve``: an OpenAI-compatible HTTP API over a bundle (the ``[serve]`` extra).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``. Starlette + uvicorn. Guarantees (docs/deployment.md, "HTTP server"):

* binds 127.0.0.1 by default; a public bind without an API key logs a loud warning; a port in use
  or a host that does not resolve is a one-line error before anything is logged;
* ``Authorization: Bearer KEY`` compared in constant time (``hmac.compare_digest``);
* every error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status: body over
  the cap -> 413 before parsing; non-JSON, invalid UTF-8 or lone surrogates, empty ``messages``,
  ``max_tokens`` above the cap, NaN/negative temperature, ``top_p`` outside (0, 1] -> 400;
  prompt + ``max_tokens`` over the context -> 400 ``context_length_exceeded``;
* at most ``max_concurrency`` generations run (each on a thread of the server's own pool of that
  size) and ``max_queue`` wait; more get a fast 429 with ``Retry-After``;
* streaming is OpenAI SSE (``data: {...}`` chunks, then ``data: [DONE]``); a client that
  disconnects stops its generation within one token, streamed or not;
* a connection must deliver its request headers, and then its body, within ``read_timeout``
  seconds (slow clients would otherwise hold sockets forever); the body's lateness is a 408;
* on SIGTERM/SIGINT new requests get 503 ``server_shutting_down``; running generations finish
  if they can within ``shutdown_timeout``, else end with that error (a stream: an error event and
  ``[DONE]``), never a plain-text 500.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gptmed.core import ConfigError, GptmedError
from gptmed.inference.sampling import make_config
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["ServerConfig", "bind_sockets", "build_server", "create_app", "serve"]

_log = logging.getLogger(__name__)

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # interface to bind; anything else is public
    port: int = 8000
    api_key: str | None = None  # clients must send "Authorization: Bearer <key>"
    max_concurrency: int = 4  # generations running at once
    max_queue: int = 4  # requests waiting for a slot; beyond that: 429
    max_tokens: int = 256  # cap on max_tokens per request
    max_body: int = 65536  # request body cap in bytes (413 above)
    read_timeout: float = 10.0  # seconds for a connection's request headers, then for its body
    shutdown_timeout: float = 30.0  # seconds running generations get after SIGTERM/SIGINT
    model_name: str = "gptmed"

    def __post_init__(self) -> None:
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            # HTTP headers are Latin-1 at best, and clients (the openai one too) send ASCII only
            raise ConfigError("the API key must be printable ASCII (clients cannot send other characters)")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {
            401: {"WWW-Authenticate": "Bearer"},
            429: {"Retry-After": "1"},
            # the rest of a slow or oversized body is not read: end the connection with the reply
            408: {"Connection": "close"},
            413: {"Connection": "close"},
        }.get(self.status)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _shutting_down() -> APIError:
    return APIError(
        503,
        "the server is shutting down; retry on another instance",
        "server_error",
        None,
        "server_shutting_down",
    )


class _Slots:
    """A concurrency limit with a bounded wait queue; over the bound: fast 429."""

    def __init__(self, running: int, queue: int) -> None:
        self._sem = asyncio.Semaphore(running)
        self._limit = running + queue
        self.inside = 0  # running + waiting
        self.active = 0
        self.cancelled = 0  # generations stopped because the client went away

    async def acquire(self) -> None:
        if self.inside >= self._limit:
            raise APIError(
                429, "too many concurrent requests; retry shortly", "requests", None, "rate_limit_exceeded"
            )
        self.inside += 1
        await self._sem.acquire()
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self.inside -= 1
        self._sem.release()


def _check_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise APIError(400, f"'{name}' must be a string", param=name, code="invalid_type")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            400, f"'{name}' is not valid Unicode (lone surrogate)", param=name, code="invalid_unicode"
        ) from None
    return value


def _number(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(
            400, f"'{name}' must be {what}, got {type(value).__name__}", param=name, code="invalid_type"
        )
    if isinstance(value, int) and value.bit_length() > 64:  # float() of it may overflow, repr() may raise
        raise APIError(400, f"'{name}' is out of range", param=name, code="invalid_value")
    if not math.isfinite(value) or (kind is int and not float(value).is_integer()):
        raise APIError(400, f"'{name}' must be {what}, got {value!r}", param=name, code="invalid_value")
    return kind(value)


class _Api:
    def __init__(self, generator: Any, config: ServerConfig) -> None:
        self.gen = generator
        self.cfg = config
        self.slots: _Slots | None = None
        # generations run here, one thread per slot (asyncio's default pool has min(32, cores + 4)
        # threads, so on 2 cores a --max-concurrency above 6 only queued)
        self.pool = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="gptmed-generate")
        self._drain_deadline: float | None = None

    def _slots(self) -> _Slots:
        if self.slots is None:  # created inside the server's event loop
            self.slots = _Slots(self.cfg.max_concurrency, self.cfg.max_queue)
        return self.slots

    # -------------------------------------------------------------------------- request parsing
    def _auth(self, request: Request) -> None:
        if not self.cfg.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.cfg.api_key.encode("utf-8")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), expected
        ):
            raise APIError(
                401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
            )

    async def _body(self, request: Request) -> dict[str, Any]:
        cap = self.cfg.max_body
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            raise APIError(413, f"request body is larger than {cap} bytes", code="request_too_large")
        chunks: list[bytes] = []

        async def read() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise APIError(413, f"request body is larger than {cap} bytes", code="request_too_large")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.cfg.read_timeout)
        except asyncio.TimeoutError:
            raise APIError(
                408,
                f"the request body did not arrive within {self.cfg.read_timeout:g} s",
                code="request_timeout",
            ) from None
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise APIError(
                400, f"request body is not valid UTF-8 (byte offset {exc.start})", code="invalid_unicode"
            ) from None
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise APIError(
                400, f"request body is not valid JSON ({exc.msg} at line {exc.lineno})", code="invalid_json"
            ) from None
        except ValueError:  # an integer literal over Python's 4,300-digit limit
            raise APIError(400, "request body holds a number too long to read", code="invalid_json") from None
        except RecursionError:
            raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        return body

    def _params(self, body: dict[str, Any], prompt: str) -> tuple[dict[str, Any], int]:
        n = _number(body, "n", int)
        if n not in (None, 1):
            raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
        for field, unsupported in (
            ("echo", (None, False)),
            ("logprobs", (None, False)),
            ("suffix", (None, "")),
        ):
            value = body.get(field)
            if not any(value is u or (type(value) is type(u) and value == u) for u in unsupported):
                raise APIError(400, f"'{field}' is not supported", param=field, code="unsupported_parameter")
        max_tokens = _number(body, "max_tokens", int)
        if max_tokens is None:
            max_tokens = _number(body, "max_completion_tokens", int)
        cap = self.cfg.max_tokens
        if max_tokens is not None and not 1 <= max_tokens <= cap:
            raise APIError(
                400,
                f"max_tokens must be in [1, {cap}], got {max_tokens}",
                param="max_tokens",
                code="invalid_value",
            )
        stop = body.get("stop")
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else stop
            if (
                not isinstance(stops, list)
                or not all(isinstance(s, str) and s for s in stops)
                or len(stops) > 4
            ):
                raise APIError(
                    400,
                    "'stop' must be a non-empty string or a list of up to 4",
                    param="stop",
                    code="invalid_value",
                )
            stop = tuple(_check_str(s, "stop") for s in stops)
        params = {
            "temperature": _number(body, "temperature", float),
            "top_p": _number(body, "top_p", float),
            "top_k": _number(body, "top_k", int),
            "seed": _number(body, "seed", int),
            "repetition_penalty": _number(body, "repetition_penalty", float),
            "stop": stop,
        }
        if not prompt.strip():
            raise APIError(
                400,
                "the prompt is empty",
                param="messages" if "messages" in body else "prompt",
                code="invalid_value",
            )
        try:
            n_prompt = len(self.gen.encode_prompt(prompt))
        except (ValueError, GptmedError) as exc:
            raise APIError(400, str(exc), param="prompt", code="invalid_value") from None
        ctx = self.gen.config.max_seq_len
        room = ctx - n_prompt
        if max_tokens is None:
            max_tokens = min(cap, room)
        if room <= 0:
            raise APIError(
                400,
                f"this model's maximum context length is {ctx} tokens and the prompt has {n_prompt}: "
                "no room for an answer; shorten the prompt",
                param="messages" if "messages" in body else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens > room:
            raise APIError(
                400,
                f"this model's maximum context length is {ctx} tokens; the prompt has {n_prompt} and "
                f"max_tokens is {max_tokens} (at most {room} here)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        params["max_length"] = max_tokens
        try:
            make_config(self.gen.defaults, **params)
        except ConfigError as exc:
            name = next((k for k in params if k in str(exc)), None)
            raise APIError(400, str(exc), param=name, code="invalid_value") from None
        return {k: v for k, v in params.items() if v is not None}, n_prompt

    # -------------------------------------------------------------------------- generation
    async def _run(self, request: Request, chat: bool) -> Response:
        self._auth(request)
        body = await self._body(request)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise APIError(
                    400, "'messages' must be a non-empty list", param="messages", code="invalid_value"
                )
            prompt = None
            for m in messages:
                if not isinstance(m, dict) or "role" not in m:
                    raise APIError(
                        400,
                        "each message needs a 'role' and 'content'",
                        param="messages",
                        code="invalid_value",
                    )
                content = m.get("content")
                if content is None and m["role"] != "user":  # e.g. an assistant turn with tool_calls
                    content = ""
                if isinstance(content, list):  # content parts: keep the text ones
                    texts = (p.get("text", "") for p in content if isinstance(p, dict))
                    content = "".join(_check_str(t, "messages") for t in texts)
                content = _check_str(content, "messages")
                if m["role"] == "user":
                    prompt = content  # the template is one question -> one answer: the last user turn
            if prompt is None:
                raise APIError(400, "'messages' has no user message", param="messages", code="invalid_value")
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            prompt = _check_str(prompt, "prompt")
        params, n_prompt = self._params(body, prompt)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise APIError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise APIError(
                400, "'stream_options' must be an object", param="stream_options", code="invalid_type"
            )
        include_usage = bool((options or {}).get("include_usage"))
        if self.draining:
            raise _shutting_down()
        slots = self._slots()
        await slots.acquire()
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if stream:
            return StreamingResponse(
                self._sse(prompt, params, n_prompt, chat, ident, slots, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        result = await self._generate(request, prompt, params, slots)
        finish = "length" if result.finish_reason == "length" else "stop"
        usage = _usage(n_prompt, len(result.token_ids))
        base = {"id": ident, "created": int(time.time()), "model": self.cfg.model_name, "usage": usage}
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": finish,
            }
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice]})
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
        return JSONResponse({**base, "object": "text_completion", "choices": [choice]})

    # -------------------------------------------------------------------------- shutdown
    def begin_drain(self, timeout: float) -> None:
        """Called on SIGTERM/SIGINT: refuse new requests, stop running ones after ``timeout`` s
        (1 s before the server's own deadline, so each can still send its error)."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + max(timeout - 1.0, 0.0)

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def _out_of_time(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() >= self._drain_deadline

    def _stopper(self, stop: threading.Event) -> Callable[[], bool]:
        return lambda: stop.is_set() or self._out_of_time()

    async def _generate(self, request: Request, prompt: str, params: dict[str, Any], slots: _Slots) -> Any:
        """A non-streamed generation on the pool; it stops within a token when the client
        disconnects (then ClientDisconnect) or the shutdown deadline passes (then 503)."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        call = functools.partial(self.gen.generate_results, [prompt], cancel=self._stopper(stop), **params)
        work = loop.run_in_executor(self.pool, call)
        watcher = asyncio.ensure_future(self._watch_disconnect(request, stop))
        try:
            (result,) = await asyncio.shield(work)
        finally:
            watcher.cancel()
            stop.set()
            try:
                await asyncio.shield(work)
            except Exception:
                pass
            finally:
                slots.release()
        if watcher.done() and not watcher.cancelled() and watcher.result():
            slots.cancelled += 1
            raise ClientDisconnect()
        if self._out_of_time():
            raise _shutting_down()
        return result

    @staticmethod
    async def _watch_disconnect(request: Request, stop: threading.Event) -> bool:
        """True (and ``stop`` set) when the client goes away while its request runs."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stop.set()
                return True

    async def _sse(
        self,
        prompt: str,
        params: dict[str, Any],
        n_prompt: int,
        chat: bool,
        ident: str,
        slots: _Slots,
        include_usage: bool = False,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        stopped = self._stopper(stop)
        created = int(time.time())
        cfg = make_config(self.gen.defaults, **params)

        def produce() -> None:
            try:
                for _row, piece, stream in self.gen._answers(self.gen._encode_all([prompt]), cfg, stopped):
                    if stream is not None:
                        n = len(stream.ids)
                        reason = "length" if (not stream.stopped and n >= cfg.max_length) else "stop"
                        loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                        if self._out_of_time():
                            loop.call_soon_threadsafe(queue.put_nowait, ("error", _shutting_down()))
                        else:
                            loop.call_soon_threadsafe(queue.put_nowait, ("end", (reason, n)))
                    elif piece:
                        loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                    if stop.is_set():
                        break
            except Exception as exc:  # surfaced to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        def event(obj: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

        def envelope(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            kind = "chat.completion.chunk" if chat else "text_completion"
            return {
                "id": ident,
                "object": kind,
                "created": created,
                "model": self.cfg.model_name,
                "choices": choices,
                **extra,
            }

        def chunk(delta: dict[str, Any] | str, finish: str | None) -> bytes:
            choice = {
                "index": 0,
                "delta" if chat else "text": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            return event(envelope([choice]))

        worker = loop.run_in_executor(self.pool, produce)
        finished = False
        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""}, None)
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    if value:
                        yield chunk({"content": value} if chat else value, None)
                elif kind == "end":
                    reason, n = value
                    yield chunk({} if chat else "", reason)
                    if include_usage:  # OpenAI: one more chunk with no choices and the usage
                        yield event(envelope([], usage=_usage(n_prompt, n)))
                    yield b"data: [DONE]\n\n"
                    finished = True
                    return
                else:
                    error = (
                        value if isinstance(value, APIError) else APIError(500, str(value), "server_error")
                    )
                    yield event(error.body())
                    yield b"data: [DONE]\n\n"
                    finished = True
                    return
        finally:
            if not finished:
                slots.cancelled += 1
            stop.set()
            try:
                await asyncio.shield(worker)
            finally:
                slots.release()

    # -------------------------------------------------------------------------- routes
    async def chat(self, request: Request) -> Response:
        return await self._guard(self._run(request, chat=True))

    async def completions(self, request: Request) -> Response:
        return await self._guard(self._run(request, chat=False))

    async def _guard(self, coro: Any) -> Response:
        try:
            result: Response = await coro
            return result
        except APIError as exc:
            return exc.response()
        except ClientDisconnect:
            return Response(status_code=499)

    async def models(self, request: Request) -> Response:
        try:
            self._auth(request)
        except APIError as exc:
            return exc.response()
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "gptmed"}],
            }
        )

    async def health(self, request: Request) -> Response:
        s = self._slots()
        return JSONResponse(
            {"status": "ok", "active": s.active, "waiting": s.inside - s.active, "cancelled": s.cancelled}
        )


def create_app(generator: Any, config: ServerConfig | None = None) -> Starlette:
    """The ASGI app serving ``generator`` (a :class:`~gptmed.inference.TextGenerator`)."""
    cfg = config or ServerConfig()
    api = _Api(generator, cfg)

    async def not_found(request: Request, exc: Exception) -> Response:
        return APIError(404, f"no route {request.url.path}", code="not_found").response()

    async def bad_method(request: Request, exc: Exception) -> Response:
        return APIError(
            405, f"method {request.method} not allowed on {request.url.path}", code="method_not_allowed"
        ).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        _log.exception("unhandled error")
        return APIError(500, "internal error", "server_error").response()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: bad_method, 500: server_error},
    )
    app.state.api = api
    return app


def check_bind(config: ServerConfig) -> None:
    """Warn loudly about a public bind without an API key."""
    if config.host not in _LOCAL_HOSTS and not config.api_key:
        _log.warning(
            "!!! serving on %s WITHOUT an API key: anyone who can reach this port can use the model. "
            "Pass --api-key (or GPTMED_API_KEY) or bind 127.0.0.1. !!!",
            config.host,
        )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for every address ``host`` resolves to, as asyncio would
    bind them; ``port`` 0 picks a free port (the same one for every address).

    Raises :class:`gptmed.core.GptmedError` with one line for a port in use, a host that does not
    resolve or is not an address of this machine, so that ``serve`` fails before its banner."""
    where = _address(host, port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise GptmedError(
            f"cannot listen on {where}: {exc.strerror}",
            hint="pass --host 127.0.0.1 or an address of this machine",
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # the port the first address got
                addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
            try:
                sock.bind(addr)
            except OSError as exc:
                problem = (exc.strerror or str(exc)).lower()
                if exc.errno == errno.EADDRINUSE:
                    hint = "pass another --port (0 picks a free one)"
                elif exc.errno == errno.EACCES and port < 1024:
                    hint = "ports below 1024 need privileges; pass --port 1024 or above"
                else:
                    hint = "pass --host 127.0.0.1 or an address of this machine"
                raise GptmedError(f"cannot listen on {where}: {problem}", hint=hint) from None
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def build_server(generator: Any, config: ServerConfig | None = None, log_level: str = "info") -> Any:
    """The ``uvicorn.Server`` that :func:`serve` runs: the app, header read timeout, and the
    shutdown drain (SIGTERM/SIGINT -> 503 for new requests, a deadline for running ones)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    cfg = config or ServerConfig()
    app = create_app(generator, cfg)
    api: _Api = app.state.api

    class TimedH11(H11Protocol):  # type: ignore[misc,unused-ignore]  # Any when uvicorn is absent (typecheck env)
        """h11 with a deadline for each request's headers: a connection that has not started a new
        request ``read_timeout`` s after it opened, or after its last response, is closed. Bytes
        that trickle in cancel uvicorn's own keep-alive timer; they do not move this deadline."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override,unused-ignore]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            waiting_after = self.cycle  # the request a new one must come after (None: the first)
            self.loop.call_later(cfg.read_timeout, self._headers_due, waiting_after)

        def _headers_due(self, waiting_after: Any) -> None:
            idle = self.cycle is None or self.cycle.response_complete  # not inside a request
            if idle and self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()  # no new request began in time

    class Server(uvicorn.Server):  # type: ignore[misc,unused-ignore]
        def handle_exit(self, sig: int, frame: Any) -> None:
            api.begin_drain(cfg.shutdown_timeout)
            super().handle_exit(sig, frame)

        def run(self, sockets: Any = None) -> None:
            try:
                super().run(sockets)
            finally:
                api.pool.shutdown(wait=False, cancel_futures=True)  # its threads end with the server

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if sockets is not None and self.started:  # uvicorn only announces sockets it bound itself
                for sock in sockets:
                    host, port = sock.getsockname()[:2]
                    _log.info("listening on http://%s (Ctrl-C to stop)", _address(host, port))

    uv_config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        http=TimedH11,
        log_level=log_level,
        lifespan="off",
        timeout_graceful_shutdown=max(1, math.ceil(cfg.shutdown_timeout)),
    )
    return Server(uv_config)


def serve(
    generator: Any, config: ServerConfig | None = None, sockets: list[socket.socket] | None = None
) -> None:
    """Run the server until interrupted (uvicorn) on ``sockets`` (default: :func:`bind_sockets`
    of the config's host and port, bound before anything is logged)."""
    cfg = config or ServerConfig()
    bound = sockets if sockets is not None else bind_sockets(cfg.host, cfg.port)
    try:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        check_bind(cfg)
        build_server(generator, cfg).run(sockets=bound)
    finally:
        for sock in bound:
            sock.close()
