"""``gptmed-infer serve``: an OpenAI-compatible HTTP API over a bundle (the ``[serve]`` extra).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), and ``GET /`` (a chat page). Starlette + uvicorn.

* :mod:`.scheduler`: continuous batching; worker threads each own a batch and its KV cache and
  take requests from one queue; requests join a running batch between decode steps and leave on
  their own (:mod:`.runners`: the model
  side, batched on onnxruntime, row by row on torch);
* :mod:`.validation`: the API key (constant-time), the body (413 over the cap, 408 when slow),
  the OpenAI fields (400 with the field named, ``context_length_exceeded``);
* :mod:`.app`: routes, SSE streaming, the chat page (``static/``), /metrics (:mod:`.metrics`);
* :mod:`.run`: sockets bound before anything is logged, a deadline for request headers, and the
  drain on SIGTERM/SIGINT (new requests 503, running ones until ``shutdown_timeout``).

Beyond ``max_batch`` running and ``max_queue`` waiting requests: a fast 429 with ``Retry-After``.
A client that disconnects frees its row before the next step, streamed or not.
"""

from gptmed.inference.server.app import create_app
from gptmed.inference.server.config import ServerConfig
from gptmed.inference.server.run import bind_sockets, build_server, check_bind, serve

__all__ = ["ServerConfig", "bind_sockets", "build_server", "check_bind", "create_app", "serve"]
