"""Reading and checking requests: the API key, the body, and the OpenAI fields -> a :class:`Completion`.

Every problem is an :class:`~gptmed.inference.server.errors.APIError` with a 4xx status that names
the field (``param``) and a ``code``; nothing here runs the model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from gptmed.core import ConfigError, GenerationConfig, GptmedError
from gptmed.inference.sampling import make_config
from gptmed.inference.server.config import ServerConfig
from gptmed.inference.server.errors import APIError
from starlette.requests import Request

__all__ = ["Completion", "check_key", "parse_completion", "read_body"]


@dataclass(frozen=True)
class Completion:
    """A checked ``/v1/completions`` or ``/v1/chat/completions`` request."""

    chat: bool
    prompt: str  # the question (a chat request: its last user message)
    ids: list[int]  # the encoded prompt (BOS + template)
    config: GenerationConfig  # the bundle's defaults with the request's fields; max_length set
    stream: bool
    include_usage: bool  # stream_options.include_usage


def check_key(request: Request, api_key: str | None) -> None:
    """401 unless the request carries ``Authorization: Bearer KEY`` (compared in constant time)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = api_key.encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), expected
    ):
        raise APIError(
            401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
        )


async def read_body(request: Request, cfg: ServerConfig) -> dict[str, Any]:
    """The JSON object of the body: 413 over ``max_body`` (before parsing), 408 when it does not
    arrive within ``read_timeout``, 400 for anything that is not a JSON object in UTF-8."""
    cap = cfg.max_body
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
        await asyncio.wait_for(read(), cfg.read_timeout)
    except asyncio.TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {cfg.read_timeout:g} s", code="request_timeout"
        ) from None
    return _json_object(b"".join(chunks))


def _json_object(raw: bytes) -> dict[str, Any]:
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


def _json_type(value: Any) -> str:
    """What JSON calls ``value``'s type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    for kind, name in ((str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _check_str(value: Any, name: str, param: str | None = None) -> str:
    """``value`` if it is a string of valid Unicode, else a 400 naming ``name`` (the error's
    ``param``: ``param``, default ``name``)."""
    param = param or name
    if not isinstance(value, str):
        raise APIError(
            400, f"'{name}' must be a string, got {_json_type(value)}", param=param, code="invalid_type"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            400, f"'{name}' is not valid Unicode (lone surrogate)", param=param, code="invalid_unicode"
        ) from None
    return value


def _message_text(message: dict[str, Any], index: int) -> str:
    """The text of ``messages[index]``: a string, or the text of its content parts."""
    where = f"messages[{index}].content"
    content = message.get("content")
    if content is None and message["role"] != "user":  # e.g. an assistant turn with tool_calls
        return ""
    if not isinstance(content, list):
        return _check_str(content, where, "messages")
    texts = []
    for j, part in enumerate(content):  # content parts: keep the text ones
        if not isinstance(part, dict):
            raise APIError(
                400,
                f'\'{where}[{j}]\' must be a content part such as {{"type": "text", "text": "..."}}',
                param="messages",
                code="invalid_type",
            )
        texts.append(_check_str(part.get("text", ""), f"{where}[{j}].text", "messages"))
    return "".join(texts)


def _number(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(
            400, f"'{name}' must be {what}, got {_json_type(value)}", param=name, code="invalid_type"
        )
    if isinstance(value, int) and value.bit_length() > 64:  # float() of it may overflow, repr() may raise
        raise APIError(400, f"'{name}' is out of range", param=name, code="invalid_value")
    if not math.isfinite(value) or (kind is int and not float(value).is_integer()):
        raise APIError(400, f"'{name}' must be {what}, got {value!r}", param=name, code="invalid_value")
    return kind(value)


def _chat_prompt(body: dict[str, Any]) -> str:
    """The last user message of ``messages`` (the model answers one question)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    prompt = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise APIError(
                400, f"messages[{i}] needs a 'role' and 'content'", param="messages", code="invalid_value"
            )
        content = _message_text(m, i)
        if m["role"] == "user":
            prompt = content  # the template is one question -> one answer: the last user turn
    if prompt is None:
        raise APIError(400, "'messages' has no user message", param="messages", code="invalid_value")
    return prompt


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = _number(body, "n", int)
    if n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
    for name, allowed in (("echo", (None, False)), ("logprobs", (None, False)), ("suffix", (None, ""))):
        value = body.get(name)
        if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            raise APIError(400, f"'{name}' is not supported", param=name, code="unsupported_parameter")


def _stops(body: dict[str, Any]) -> tuple[str, ...] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise APIError(
            400, "'stop' must be a non-empty string or a list of up to 4", param="stop", code="invalid_value"
        )
    return tuple(_check_str(s, "stop") for s in stops)


def _max_tokens(body: dict[str, Any], cap: int, context: int, n_prompt: int) -> int:
    """The request's ``max_tokens`` (or ``max_completion_tokens``; default: the room the context
    leaves, up to ``cap``), checked against the cap and the context."""
    max_tokens: int | None = _number(body, "max_tokens", int)
    newer: int | None = _number(body, "max_completion_tokens", int)  # OpenAI's newer name
    if max_tokens is not None and newer is not None and max_tokens != newer:
        raise APIError(
            400,
            f"max_tokens ({max_tokens}) and max_completion_tokens ({newer}) disagree; send one of them",
            param="max_completion_tokens",
            code="invalid_value",
        )
    if max_tokens is None:
        max_tokens = newer
    if max_tokens is not None and not 1 <= max_tokens <= cap:
        raise APIError(
            400,
            f"max_tokens must be in [1, {cap}], got {max_tokens}",
            param="max_tokens",
            code="invalid_value",
        )
    room = context - n_prompt
    if room <= 0:
        raise APIError(
            400,
            f"this model's maximum context length is {context} tokens and the prompt has {n_prompt}: "
            "no room for an answer; shorten the prompt",
            param="messages" if "messages" in body else "prompt",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        return min(cap, room)
    if max_tokens > room:
        raise APIError(
            400,
            f"this model's maximum context length is {context} tokens; the prompt has {n_prompt} and "
            f"max_tokens is {max_tokens} (at most {room} here)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def parse_completion(body: dict[str, Any], chat: bool, generator: Any, cfg: ServerConfig) -> Completion:
    """Check ``body`` (a ``/v1/chat/completions`` request when ``chat``) for ``generator``."""
    if chat:
        prompt = _chat_prompt(body)
    else:
        raw = body.get("prompt")
        prompt = _check_str(raw[0] if isinstance(raw, list) and len(raw) == 1 else raw, "prompt")
    _refuse_unsupported(body)
    where = "messages" if "messages" in body else "prompt"
    params: dict[str, Any] = {
        "temperature": _number(body, "temperature", float),
        "top_p": _number(body, "top_p", float),
        "top_k": _number(body, "top_k", int),
        "seed": _number(body, "seed", int),
        "repetition_penalty": _number(body, "repetition_penalty", float),
        "frequency_penalty": _number(body, "frequency_penalty", float),
        "presence_penalty": _number(body, "presence_penalty", float),
        "no_repeat_ngram_size": _number(body, "no_repeat_ngram_size", int),
    }
    params["stop"] = _stops(body)
    if not prompt.strip():
        raise APIError(400, "the prompt is empty", param=where, code="invalid_value")
    try:
        ids = generator.encode_prompt(prompt)
    except (ValueError, GptmedError) as exc:
        raise APIError(400, str(exc), param="prompt", code="invalid_value") from None
    params["max_length"] = _max_tokens(body, cfg.max_tokens, generator.config.max_seq_len, len(ids))
    try:
        config = make_config(generator.defaults, **params)
    except ConfigError as exc:
        name = next((k for k in params if k in str(exc)), None)
        raise APIError(400, str(exc), param=name, code="invalid_value") from None
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options", code="invalid_type")
    include_usage = bool((options or {}).get("include_usage"))
    return Completion(chat, prompt, list(ids), config, bool(stream), include_usage)
