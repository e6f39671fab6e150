"""The gptmed error hierarchy and the one-line CLI error contract.

Every error a user can cause derives from :class:`GptmedError`. Its ``str()`` is the one line a
CLI prints: *what* went wrong, *where* (``file:line``, record, field) and *what to do*.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = [
    "BundleError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GptmedError",
    "ManifestError",
    "TokenizerError",
    "cli_errors",
]


class GptmedError(Exception):
    """Base class of every error gptmed raises on bad input.

    ``where`` names the place (``data.txt:12``, ``record 7, field 'answer'``) and ``hint`` says
    what to do; both are optional and appended to the message in ``str()``.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text = f"{self.where}: {text}"
        if self.hint:
            text = f"{text}; {self.hint}"
        return text


class DataError(GptmedError):
    """Q&A input that cannot be read: bad encoding, bad syntax, missing fields, no records."""


class ConfigError(GptmedError, ValueError):
    """An invalid configuration value (also a ``ValueError``, so plain callers can catch that)."""


class ManifestError(GptmedError):
    """A manifest (metadata.json, gptmed.json, checkpoint facts) that is missing, corrupt or contradicts another."""


class TokenizerError(GptmedError):
    """A tokenizer that cannot be trained, loaded or used as asked."""


class CheckpointError(GptmedError):
    """A checkpoint that is corrupt, unsafe, or does not match the run resuming from it."""


class BundleError(GptmedError):
    """An exported bundle that fails verification (sha256, I/O names, external data)."""


_log = logging.getLogger(__name__)


@contextlib.contextmanager
def cli_errors(debug: bool = False) -> Iterator[None]:
    """Turn gptmed and OS errors into the CLI contract: ``Error: ...`` on stderr, exit 1.

    With ``debug`` the exception propagates with its traceback. ``KeyboardInterrupt`` exits 130.
    Click's own usage errors are raised outside command bodies and keep their exit code 2.
    """
    try:
        yield
    except (GptmedError, OSError) as exc:
        if debug:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, GptmedError):
            name = f" {exc.filename}" if exc.filename else ""
            msg = f"{exc.strerror or exc}{':' if name else ''}{name}"
        else:
            msg = str(exc)
        print(f"Error: {msg}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
