"""The ASGI app: OpenAI routes over the scheduler, the chat page, /metrics and /health."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from gptmed.inference.server.config import ServerConfig
from gptmed.inference.server.errors import APIError, outcome, shutting_down, usage
from gptmed.inference.server.metrics import CONTENT_TYPE, Metrics
from gptmed.inference.server.scheduler import Job, Scheduler
from gptmed.inference.server.validation import Completion, check_key, parse_completion, read_body
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["Api", "create_app"]

_log = logging.getLogger(__name__)

_PAGE_TYPES = {"chat.js": "text/javascript; charset=utf-8", "chat.css": "text/css; charset=utf-8"}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # the page loads its own script and style only, and talks to this server only
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


class _EventStream(StreamingResponse):
    """SSE whose ``on_close`` runs however the response ends (also when the client left before
    the first event, when the body iterator never started)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _event(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


class Api:
    def __init__(self, generator: Any, config: ServerConfig) -> None:
        self.gen = generator
        self.cfg = config
        self.metrics = Metrics()
        self.scheduler = Scheduler(generator, config, self.metrics)
        self.metrics.watch(lambda: self.scheduler.waiting, lambda: self.scheduler.active)
        self.draining = False

    def begin_drain(self, timeout: float) -> None:
        """SIGTERM/SIGINT: refuse new requests; running ones get until ``timeout - 1`` s."""
        self.draining = True
        self.scheduler.begin_drain(timeout)

    # -------------------------------------------------------------------------- completions
    async def chat(self, request: Request) -> Response:
        return await self._guard(self._run(request, chat=True))

    async def completions(self, request: Request) -> Response:
        return await self._guard(self._run(request, chat=False))

    async def _guard(self, coro: Any) -> Response:
        """The response, or the APIError's; counts the outcome of all but streams (they count
        their own when they end)."""
        try:
            response: Response = await coro
        except APIError as exc:
            response = exc.response()
        except ClientDisconnect:
            response = Response(status_code=499)
        if not isinstance(response, _EventStream):
            self.metrics.requests.labels(outcome(response.status_code)).inc()
        return response

    async def _run(self, request: Request, chat: bool) -> Response:
        check_key(request, self.cfg.api_key)
        body = await read_body(request, self.cfg)
        req = parse_completion(body, chat, self.gen, self.cfg)
        if self.draining:
            raise shutting_down()
        job = self.scheduler.submit(req.ids, req.config)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            state = {"outcome": "cancelled"}  # until the stream says otherwise

            def closed() -> None:
                self.scheduler.cancel(job)
                self.metrics.requests.labels(state["outcome"]).inc()

            return _EventStream(self._sse(job, req, ident, state), closed)
        text, reason = await self._answer(request, job)
        base = {"id": ident, "created": int(time.time()), "model": self.cfg.model_name}
        base["usage"] = usage(len(req.ids), job.tokens)
        if chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice]})
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return JSONResponse({**base, "object": "text_completion", "choices": [choice]})

    async def _answer(self, request: Request, job: Job) -> tuple[str, str]:
        """The whole answer and its finish reason; ClientDisconnect (and the row freed) when the
        client leaves first."""

        async def collect() -> tuple[str, str]:
            pieces = []
            while True:
                for kind, value in await job.next_events():
                    if kind == "piece":
                        pieces.append(value)
                    elif kind == "end":
                        return "".join(pieces), value[0]
                    else:
                        raise value

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        answer = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not answer.done():
                answer.cancel()
                self.scheduler.cancel(job)
        if not answer.done() or answer.cancelled():
            raise ClientDisconnect()
        return answer.result()

    async def _sse(
        self, job: Job, req: Completion, ident: str, state: dict[str, str]
    ) -> AsyncIterator[bytes]:
        created = int(time.time())

        def envelope(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            kind = "chat.completion.chunk" if req.chat else "text_completion"
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
                "delta" if req.chat else "text": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            return _event(envelope([choice]))

        if req.chat:
            yield chunk({"role": "assistant", "content": ""}, None)
        while True:
            for kind, value in await job.next_events():
                if kind == "piece":
                    yield chunk({"content": value} if req.chat else value, None)
                elif kind == "end":
                    state["outcome"] = "ok"
                    yield chunk({} if req.chat else "", value[0])
                    if req.include_usage:  # OpenAI: one more chunk with no choices and the usage
                        yield _event(envelope([], usage=usage(len(req.ids), value[1])))
                    yield b"data: [DONE]\n\n"
                    return
                else:
                    state["outcome"] = outcome(value.status)
                    yield _event(value.body())
                    yield b"data: [DONE]\n\n"
                    return

    # -------------------------------------------------------------------------- the rest
    async def models(self, request: Request) -> Response:
        """``GET /v1/models`` (the list: this one model) and ``GET /v1/models/{model}`` (retrieve)."""
        try:
            check_key(request, self.cfg.api_key)
            model = {"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "gptmed"}
            asked = request.path_params.get("model")
            if not asked:  # /v1/models, or /v1/models/ with the slash
                return JSONResponse({"object": "list", "data": [model]})
            if asked != self.cfg.model_name:
                message = f"no model {asked!r}: this server has {self.cfg.model_name!r}"
                raise APIError(404, message, param="model", code="model_not_found")
            return JSONResponse(model)
        except APIError as exc:
            return exc.response()

    async def health(self, request: Request) -> Response:
        s = self.scheduler
        return JSONResponse(
            {
                "status": "ok",
                "active": s.active,
                "waiting": s.waiting,
                "batch": s.batch,
                "cancelled": s.cancelled,
            }
        )

    async def metrics_page(self, request: Request) -> Response:
        try:
            check_key(request, self.cfg.api_key)
        except APIError as exc:
            return exc.response()
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def page(self, request: Request) -> Response:
        """The chat page, with what it needs to know written into it as JSON."""
        html = _static("index.html")
        name = Path(str(getattr(self.gen, "source", "") or "")).name or self.cfg.model_name
        d = self.gen.defaults
        settings = {
            "bundle": name,
            "model": self.cfg.model_name,
            "auth": bool(self.cfg.api_key),
            "max_tokens": self.cfg.max_tokens,
            "defaults": {
                "temperature": d.temperature,
                "top_p": d.top_p,
                "top_k": d.top_k,
                "repetition_penalty": d.repetition_penalty,
                "frequency_penalty": d.frequency_penalty,
                "presence_penalty": d.presence_penalty,
                "no_repeat_ngram_size": d.no_repeat_ngram_size,
            },
        }
        data = json.dumps(settings).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        html = html.replace("{{settings}}", data)
        return Response(html, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.url.path.lstrip("/")
        return Response(_static(name), media_type=_PAGE_TYPES[name], headers=_PAGE_HEADERS)


def _static(name: str) -> str:
    """A file of the chat page, shipped inside the package."""
    return (resources.files("gptmed.inference.server") / "static" / name).read_text(encoding="utf-8")


def create_app(generator: Any, config: ServerConfig | None = None) -> Starlette:
    """The ASGI app serving ``generator`` (a :class:`~gptmed.inference.TextGenerator`)."""
    cfg = config or ServerConfig()
    api = Api(generator, cfg)

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
            Route("/v1/models/{model:path}", api.models, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", api.metrics_page, methods=["GET"]),
            Route("/", api.page, methods=["GET"]),
            *(Route(f"/{name}", api.asset, methods=["GET"]) for name in _PAGE_TYPES),
        ],
        exception_handlers={404: not_found, 405: bad_method, 500: server_error},
    )
    app.state.api = api
    return app
