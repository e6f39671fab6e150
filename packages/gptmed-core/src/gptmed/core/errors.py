"""The gptmed error hierarchy and the one-line CLI error contract.

Every error a user can cause derives from :class:`GptmedError`. Its ``str()`` is the one line a
CLI prints: *what* went wrong, *where* (``file:line``, record, field) and *what to do*.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "BundleError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GptmedError",
    "ManifestError",
    "Terminated",
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
    SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so the same
    cleanup runs (temp files, staging folders) before exit 143; a handler the command installs
    itself (the trainer, the server) takes precedence while it is installed.
    Click's own usage errors are raised outside command bodies and keep their exit code 2.
    """
    previous = _catch_sigterm()
    try:
        yield
    except BrokenPipeError:
        # whoever read our output went away (`gptmed-infer export ... | head -1`): stop quietly, as
        # Unix tools do, and keep Python from complaining when it flushes stdout at exit
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except (GptmedError, OSError) as exc:
        if debug:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, GptmedError):
            name = f" {exc.filename}" if exc.filename else ""
            msg = f"{exc.strerror or exc}{':' if name else ''}{name}"
            if isinstance(exc, PermissionError):
                msg += "; check its permissions or choose another path"
        else:
            msg = str(exc)
        print(f"Error: {msg}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        terminated = isinstance(exc, Terminated)
        print("Terminated." if terminated else "Interrupted.", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM during a command run under :func:`cli_errors`: unwinds like Ctrl-C (exit 143)."""


class _Hold:
    """SIGTERMs held by :func:`sigterm_held`: how deep the holds nest, and whether one came."""

    depth = 0
    pending = False


def _raise_terminated(signum: int, frame: object) -> None:
    if _Hold.depth:
        _Hold.pending = True  # raised when the outermost hold ends
        return
    raise Terminated()


@contextlib.contextmanager
def sigterm_held() -> Iterator[None]:
    """Hold a SIGTERM that :func:`cli_errors` turns into :class:`Terminated` until the block ends,
    then raise it (the cleanup still runs, just after the block).

    For native code that may run Python inside a call: onnx's C++ checker (nanobind) aborted the
    whole process when the handler raised there ("terminate called after throwing an instance of
    'nanobind::python_error'", exit -6, the staging folder left behind; once in a fresh-clone CI
    run of export's SIGTERM test). Keep the block short: the signal waits for it."""
    _Hold.depth += 1
    try:
        yield
    finally:
        _Hold.depth -= 1
    if not _Hold.depth and _Hold.pending:
        _Hold.pending = False
        raise Terminated()


def _catch_sigterm() -> Any:
    """Install the SIGTERM -> :class:`Terminated` handler (main thread, default disposition only);
    returns the handler to restore, or None when nothing was installed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)
