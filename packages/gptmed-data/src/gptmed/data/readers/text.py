"""Canonical Q&A text (``Q: ...`` / ``A: ...``), read record by record with gptmed-core's grammar."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from gptmed.core import DataError, iter_qa_lines
from gptmed.data._textio import ByteMeter, open_text
from gptmed.data.readers.options import Invalid, RawRecord, ReadOptions

__all__ = ["read_txt"]

_LOOKALIKE = re.compile(r"(?:\s+[QA]|[qa]):\s")  # "  Q: ", "q: " ...: not a record start (qa-format.md)
_REASONS = {
    "question without an answer": "missing_answer",
    "empty question": "empty_question",
    "empty answer": "empty_answer",
}


def read_txt(
    path: Path,
    opts: ReadOptions,
    source: str,
    lookalike: Callable[[str], None] | None = None,
    meter: ByteMeter | None = None,
) -> Iterator[RawRecord]:
    """``lookalike(FILE:LINE)`` is called for each line inside a record that looks like a record start."""
    with open_text(path, opts.encoding, name=source, meter=meter) as fh:
        block: list[str] = []
        start = 0
        stray_start = 0
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            if line.startswith("Q:"):
                if block:
                    yield from _txt_block(block, start, source)
                block, start, stray_start = [line], lineno, 0
            elif block:
                block.append(line)
                if lookalike is not None and _LOOKALIKE.match(line):
                    lookalike(f"{source}:{lineno}")
            elif line.strip() and not stray_start:
                stray_start = lineno
                what = (
                    "an answer before any question"
                    if line.startswith("A:")
                    else "a line outside any Q&A record"
                )
                yield Invalid(f"{source}:{lineno}", "stray_text", f"{what}: {line[:60]!r}")
        if block:
            yield from _txt_block(block, start, source)


def _txt_block(block: list[str], start: int, source: str) -> Iterator[RawRecord]:
    # A block is one Q: line and the lines up to the next Q: line; the core parser reads it.
    # Fast path: the common one-line question, one-line answer record (same result).
    if len(block) >= 2 and block[1].startswith("A:") and not any(block[2:]):
        q, a = block[0][2:].removeprefix(" "), block[1][2:].removeprefix(" ")
        if q and a and not q.isspace() and not a.isspace():
            yield f"{source}:{start}", q, a
            return
    try:
        for _, pair in iter_qa_lines(block, ""):
            yield f"{source}:{start}", pair.question, pair.answer
    except DataError as exc:
        rel = int(str(exc.where).rsplit(":", 1)[-1]) if exc.where else 1
        msg = exc.message
        yield Invalid(f"{source}:{start + rel - 1}", _REASONS.get(msg, "syntax"), msg)
