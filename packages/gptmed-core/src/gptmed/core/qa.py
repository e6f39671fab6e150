"""The Q&A record and the canonical text format (``Q: ...`` / ``A: ...``).

The grammar is written down in ``docs/qa-format.md``. In short:

* A record is a ``Q:`` line, optional question continuation lines, an ``A:`` line and optional
  answer continuation lines. Records are separated by a blank line (a ``Q:`` line directly after
  an answer also starts a new record).
* A blank line inside a field is kept when the next non-blank line is not a ``Q:`` line.
* A continuation line that would start with ``Q:``, ``A:`` or ``\\`` is written with one leading
  ``\\``, which the reader removes. So any text round-trips.
* Reading strips a UTF-8 BOM and turns CRLF and CR into LF; fields are stripped of surrounding
  whitespace (the same normalisation :class:`QAPair` applies).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gptmed.core.errors import DataError
from gptmed.core.io import atomic_open

__all__ = [
    "QAPair",
    "format_pair",
    "iter_qa_lines",
    "normalize_text",
    "read_qa_text",
    "utf16_codec",
    "write_qa_text",
]

_Q = "Q:"
_A = "A:"
_ESC = "\\"


def normalize_text(text: str) -> str:
    """CRLF and CR become LF; surrounding whitespace is stripped."""
    if "\r" in text:  # rare: skipping the two replaces makes reading ~40% faster
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


@dataclass(frozen=True, slots=True)
class QAPair:
    """One question and its answer, normalised (LF newlines, no surrounding whitespace).

    Construction normalises; both fields must be non-empty afterwards (``ValueError``).
    """

    question: str  # the question text, may span lines
    answer: str  # the answer text, may span lines and contain blank lines

    def __post_init__(self) -> None:
        for name in ("question", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"QAPair.{name} must be str, got {type(value).__name__}")
            clean = normalize_text(value)
            if not clean:
                raise ValueError(f"QAPair.{name} is empty")
            if clean != value:
                object.__setattr__(self, name, clean)

    @classmethod
    def from_normalized(cls, question: str, answer: str) -> QAPair:
        """A pair from fields the caller has already normalised, without checking them again.

        The trusted constructor for readers that validate fields in bulk (gptmed-data's
        conversion): both must be ``str``, non-empty, with LF newlines only and no surrounding
        whitespace, i.e. ``normalize_text(f) == f != ""``. Anything else: use ``QAPair(q, a)``.
        """
        pair = object.__new__(cls)
        object.__setattr__(pair, "question", question)
        object.__setattr__(pair, "answer", answer)
        return pair


def _escape(line: str) -> str:
    if line.startswith((_Q, _A, _ESC)):
        return _ESC + line
    return line


def format_pair(pair: QAPair) -> str:
    """The canonical text of one record, ending with a newline (no separator)."""
    q_first, *q_rest = pair.question.split("\n")
    a_first, *a_rest = pair.answer.split("\n")
    lines = [f"Q: {q_first}", *(_escape(x) for x in q_rest), f"A: {a_first}", *(_escape(x) for x in a_rest)]
    return "\n".join(lines) + "\n"


def write_qa_text(path: str | os.PathLike[str], pairs: Iterable[QAPair], *, overwrite: bool = False) -> int:
    """Write ``pairs`` to ``path`` atomically in the canonical format; return the count.

    Nothing is left at ``path`` if writing fails (a ``DataError`` with no records included).
    """
    count = 0
    with atomic_open(path, "w", overwrite=overwrite) as fh:
        for pair in pairs:
            if count:
                fh.write("\n")
            fh.write(format_pair(pair))
            count += 1
        if count == 0:
            raise DataError("no Q&A records to write", where=str(path))
    return count


def iter_qa_lines(lines: Iterable[str], source: str = "<text>") -> Iterator[tuple[int, QAPair]]:
    """Parse canonical text given as lines (LF-terminated or not); yield ``(line_no, pair)``.

    ``line_no`` is the 1-based line of the record's ``Q:`` line. Errors name ``source:line``.
    """
    question: list[str] | None = None
    answer: list[str] | None = None
    start = 0  # line of the record's Q:
    a_line = 0  # line of its A:
    blanks = 0
    lineno = 0

    def finish() -> tuple[int, QAPair] | None:
        if question is None:
            return None
        if answer is None:
            raise DataError(
                "question without an answer",
                where=f"{source}:{start}",
                hint="add an 'A: ' line after the question",
            )
        q, a = "\n".join(question), "\n".join(answer)
        if not normalize_text(q):
            raise DataError("empty question", where=f"{source}:{start}", hint="write text after 'Q: '")
        if not normalize_text(a):
            raise DataError("empty answer", where=f"{source}:{a_line}", hint="write text after 'A: '")
        return start, QAPair(q, a)

    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n").replace("\r", "")
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if line == "" or (question is None and not line.strip()):
            blanks += 1
            continue
        if line.startswith(_Q):
            done = finish()
            if done:
                yield done
            question, answer, start, blanks = [line[2:].removeprefix(" ")], None, lineno, 0
            continue
        if question is None:
            what = "an answer before any question" if line.startswith(_A) else "a line outside any Q&A record"
            raise DataError(
                f"{what}: {line[:60]!r}",
                where=f"{source}:{lineno}",
                hint="every record starts with a 'Q: ' line; fix the file (gptmed-data convert --skip-invalid skips such records)",
            )
        if line.startswith(_A) and answer is None:
            if blanks:
                question.extend([""] * blanks)
            answer, a_line, blanks = [line[2:].removeprefix(" ")], lineno, 0
            continue
        if line.startswith(_A):
            raise DataError(
                "a second 'A:' line in one record",
                where=f"{source}:{lineno}",
                hint="start the next record with a 'Q: ' line, or escape the line as '\\A:'",
            )
        if line.startswith(_ESC):
            line = line[1:]
        target = answer if answer is not None else question
        target.extend([""] * blanks)
        blanks = 0
        target.append(line)
    done = finish()
    if done:
        yield done


def utf16_codec(head: bytes) -> str | None:
    """The UTF-16 codec the first bytes of a file are in (``utf-16`` with a byte-order mark,
    ``utf-16-le``/``-be`` when NUL bytes fill every other position), or None. UTF-16 text read as
    UTF-8 decodes without error, so readers ask this first."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if len(head) >= 16 and head.count(b"\x00") * 4 >= len(head):
        return "utf-16-le" if head.index(b"\x00") % 2 == 1 else "utf-16-be"
    return None


def _refuse_utf16(head: bytes, source: str) -> None:
    """Name UTF-16 text read as UTF-8, which would otherwise fail as 'a line outside any Q&A record'."""
    codec = utf16_codec(head)
    if codec is None:
        return
    nul = head.find(b"\x00")
    evidence = (
        "a UTF-16 byte-order mark"
        if codec == "utf-16"
        else f"NUL bytes at every other position from byte offset {nul}"
    )
    raise DataError(
        f"this looks like UTF-16 text, not UTF-8 ({evidence})",
        where=f"{source}:1",
        hint=f"convert it to UTF-8 first: gptmed-data convert {source} -o qa.txt --encoding {codec}",
    )


def _decoded_lines(fh: IO[bytes], source: str, encoding: str) -> Iterator[str]:
    """Decode ``fh`` incrementally, yielding LF-normalised lines; bad bytes name line and offset."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    pending = ""
    offset = 0
    lineno = 1
    while True:
        chunk = fh.read(1 << 16)
        final = not chunk
        if offset == 0 and codecs.lookup(encoding).name == "utf-8":
            _refuse_utf16(chunk, source)
        try:
            text = decoder.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            bad = max(exc.start, 0)
            line = lineno + chunk[:bad].count(b"\n")
            raise DataError(
                f"not valid {encoding} (byte 0x{exc.object[exc.start]:02x} at byte offset {offset + bad})",
                where=f"{source}:{line}",
                hint=f"convert it to UTF-8 with its encoding named: gptmed-data convert {source} -o qa.txt "
                '--encoding cp1252 (Windows "ANSI" text; or the encoding the file has)',
            ) from None
        offset += len(chunk)
        pending += text
        if "\r" in pending:
            # Keep a trailing CR back: it may be the first half of a CRLF split across chunks.
            hold = pending.endswith("\r") and not final
            body = pending[:-1] if hold else pending
            body = body.replace("\r\n", "\n").replace("\r", "\n")
            pending = body + ("\r" if hold else "")
        *complete, pending = pending.split("\n")
        for text_line in complete:
            lineno += 1
            yield text_line
        if final:
            if pending:
                yield pending
            return


def read_qa_text(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> Iterator[QAPair]:
    """Stream the records of a canonical Q&A text file (constant memory).

    Raises :class:`DataError` naming ``file:line`` for bad syntax or bytes that are not
    ``encoding``, and ``no Q&A records in FILE`` for a file without any record.
    """
    for _, pair in read_qa_records(path, encoding=encoding):
        yield pair


def read_qa_records(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> Iterator[tuple[int, QAPair]]:
    """Like :func:`read_qa_text`, with each record's line number (its ``Q:`` line, 1-based)."""
    source = str(path)
    count = 0
    with open(Path(path), "rb") as fh:
        for line, pair in iter_qa_lines(_decoded_lines(fh, source, encoding), source):
            count += 1
            yield line, pair
    if count == 0:
        raise DataError(f"no Q&A records in {source}", hint="the file is empty or has only blank lines")
