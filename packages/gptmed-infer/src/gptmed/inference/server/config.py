"""The server's settings (``gptmed-infer serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass

from gptmed.core import ConfigError

__all__ = ["LOCAL_HOSTS", "ServerConfig"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # interface to bind; anything else is public
    port: int = 8000
    api_key: str | None = None  # clients must send "Authorization: Bearer <key>"
    max_batch: int = 16  # requests generating at once, decoded together in one batch
    max_queue: int = 32  # requests waiting for a row; beyond that: 429
    max_tokens: int = 256  # cap on max_tokens per request
    max_body: int = 65536  # request body cap in bytes (413 above)
    read_timeout: float = 10.0  # seconds for a connection's request headers, then for its body
    shutdown_timeout: float = 30.0  # seconds running generations get after SIGTERM/SIGINT
    kv_cache_mb: float = 1024.0  # KV cache the running batch may hold; requests beyond it wait
    prefill_chunk: int = 64  # prompt tokens prefilled between two decode steps of the running rows
    workers: int = 1  # threads that each decode their own batch (max_batch and kv_cache_mb are shared out)
    stream_interval: int = 1  # answer tokens per streamed event after the first (1: every token)
    model_name: str = "gptmed"

    def __post_init__(self) -> None:
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            # HTTP headers are Latin-1 at best, and clients (the openai one too) send ASCII only
            raise ConfigError("the API key must be printable ASCII (clients cannot send other characters)")
        if self.api_key is not None and self.api_key != self.api_key.strip():
            # HTTP drops trailing whitespace from a header, the key check strips the token: none would match
            raise ConfigError(
                "the API key must not begin or end with whitespace (headers lose it: no client could send it)"
            )
        for name, low in (
            ("max_batch", 1),
            ("max_queue", 0),
            ("max_tokens", 1),
            ("prefill_chunk", 1),
            ("workers", 1),
            ("stream_interval", 1),
        ):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.kv_cache_mb > 0:
            raise ConfigError(f"kv_cache_mb must be > 0, got {self.kv_cache_mb}")
