"""Binding and running: sockets bound before anything is logged, uvicorn with a header deadline,
and the shutdown drain."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from typing import Any

from gptmed.core import GptmedError
from gptmed.inference.server.app import Api, create_app
from gptmed.inference.server.config import LOCAL_HOSTS, ServerConfig

__all__ = ["bind_sockets", "build_server", "check_bind", "serve"]

_log = logging.getLogger(__name__)


def check_bind(config: ServerConfig) -> None:
    """Warn loudly about a public bind without an API key."""
    if config.host not in LOCAL_HOSTS and not config.api_key:
        _log.warning(
            "!!! serving on %s WITHOUT an API key: anyone who can reach this port can use the model. "
            "Pass --api-key (or GPTMED_API_KEY) or bind 127.0.0.1. !!!",
            config.host,
        )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_error(where: str, exc: OSError, port: int) -> GptmedError:
    problem = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EADDRINUSE:
        hint = "pass another --port (0 picks a free one)"
    elif exc.errno == errno.EACCES and port < 1024:
        hint = "ports below 1024 need privileges; pass --port 1024 or above"
    else:
        hint = "pass --host 127.0.0.1 or an address of this machine"
    return GptmedError(f"cannot listen on {where}: {problem}", hint=hint)


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
                raise _bind_error(where, exc, port) from None
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
    api: Api = app.state.api

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
                api.scheduler.close()  # the generation thread ends with the server

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
