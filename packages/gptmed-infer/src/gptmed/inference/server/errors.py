"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

__all__ = ["APIError", "outcome", "rate_limited", "shutting_down", "usage"]


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


def shutting_down() -> APIError:
    return APIError(
        503,
        "the server is shutting down; retry on another instance",
        "server_error",
        None,
        "server_shutting_down",
    )


def rate_limited() -> APIError:
    return APIError(
        429, "too many concurrent requests; retry shortly", "requests", None, "rate_limit_exceeded"
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def outcome(status: int) -> str:
    """The ``outcome`` label of /metrics' request counter for a response status."""
    if status < 400:
        return "ok"
    return {401: "unauthorized", 429: "rate_limited", 499: "cancelled", 503: "shutting_down"}.get(
        status, "error" if status >= 500 else "bad_request"
    )
