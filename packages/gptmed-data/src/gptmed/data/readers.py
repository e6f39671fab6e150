"""Streaming readers: any supported input format -> :class:`~gptmed.core.QAPair` records.

Every reader yields either a raw record ``(where, question, answer)`` or an :class:`Invalid`
(a record that cannot become a pair, with its place and reason). :class:`QAReader` turns raw
records into pairs (type checks, NUL bytes, lone surrogates, empty fields, unicode
normalisation) and either raises on the first invalid record or skips and counts it.

Memory: txt, jsonl, csv, tsv and sqlite inputs are read one record at a time. JSON arrays are
parsed incrementally element by element (``json.JSONDecoder.raw_decode`` on a sliding buffer);
only a top-level *object* (``--records-key``) is loaded whole.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import sys
import tempfile
import unicodedata
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from gptmed.core import DataError, QAPair, iter_qa_lines
from gptmed.data._textio import decode_error, open_binary, open_text

__all__ = [
    "ANSWER_FIELD_NAMES",
    "FORMATS",
    "QUESTION_FIELD_NAMES",
    "Invalid",
    "QAReader",
    "ReadOptions",
    "detect_format",
    "iter_records",
]

_log = logging.getLogger(__name__)

Format = Literal["txt", "json", "jsonl", "csv", "tsv", "sqlite", "parquet"]
FORMATS: tuple[str, ...] = ("txt", "json", "jsonl", "csv", "tsv", "sqlite", "parquet")

#: Field names tried (case-insensitively, in this order) when no --question-field is given.
QUESTION_FIELD_NAMES: tuple[str, ...] = ("question", "q", "input", "prompt", "query", "instruction")
#: Field names tried (case-insensitively, in this order) when no --answer-field is given.
ANSWER_FIELD_NAMES: tuple[str, ...] = ("answer", "a", "output", "response", "completion", "reply")

_EXTENSIONS: dict[str, str] = {
    ".txt": "txt",
    ".qa": "txt",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".parquet": "parquet",
}
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SKIP_HINT = "fix the record, or pass --skip-invalid to skip and count such records"
_RECORD = re.compile(r": record (\d+)$")


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot become a Q&A pair."""

    where: str  # "data.csv:12", "data.json: record 3 (line 40)"
    reason: str  # short key counted in reports: "not_string", "empty_answer", "bad_json", ...
    message: str  # what is wrong, for people

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class ReadOptions:
    """How to read an input file (the ``convert`` / ``validate`` / ``stats`` input options)."""

    format: str | None = None  # one of FORMATS; None = detect from extension, then content
    question_field: str | None = None  # field / column holding the question; None = auto-detect
    answer_field: str | None = None  # field / column holding the answer; None = auto-detect
    table: str | None = None  # SQLite table; None = the one table with question/answer columns
    query: str | None = None  # SQLite query (its result columns are mapped like a table's)
    records_key: str | None = None  # JSON: the key of a top-level object that holds the list
    encoding: str = "utf-8"  # text encoding of txt/json/jsonl/csv/tsv input (strict decoding)
    skip_invalid: bool = False  # skip and count invalid records instead of stopping at the first
    unicode_normalize: Literal["NFC", "NFKC"] | None = None  # None, "NFC" or "NFKC"
    max_field_chars: int = 1_000_000  # CSV/TSV: the csv module's field size limit
    delimiter: str | None = None  # CSV/TSV field separator; None = "\t" for TSV, detected for CSV

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r}", hint=f"use one of {', '.join(FORMATS)}")
        if self.unicode_normalize not in (None, "NFC", "NFKC"):
            raise DataError(
                f"unknown unicode normalisation {self.unicode_normalize!r}", hint="use NFC or NFKC"
            )
        if self.max_field_chars < 1:
            raise ValueError(f"max_field_chars must be >= 1, got {self.max_field_chars}")
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise DataError(
                f"the delimiter must be one character other than a quote or newline, got {self.delimiter!r}",
                hint="e.g. --delimiter ';' (Excel in many locales) or --delimiter '|'",
            )


def detect_format(path: str | os.PathLike[str], name: str | None = None) -> str:
    """The input format from the file name (``.gz`` looks at the inner suffix), else its content.

    ``name`` is the name errors give the file (by default ``path``)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    with open_binary(p, name) as fh:
        head = fh.read(4096)
    if head.startswith(_SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        first = text.split(b"\n", 1)[0]
        try:
            return "jsonl" if isinstance(json.loads(first), dict) else "json"
        except ValueError:
            return "json"
    if text.startswith(b"Q:"):
        return "txt"
    first_line = text.split(b"\n", 1)[0]
    if b"\t" in first_line:
        return "tsv"
    if b"," in first_line:
        return "csv"
    raise DataError(
        "cannot tell the input format from the file name or its first bytes",
        where=name or str(path),
        hint=f"pass --format ({', '.join(FORMATS)})",
    )


def _pick_field(names: Sequence[str], wanted: str | None, candidates: tuple[str, ...], role: str) -> str:
    """Resolve the question/answer field among ``names`` (exact, then case-insensitive)."""
    if wanted is not None:
        if wanted in names:
            return wanted
        folded = [n for n in names if n.casefold() == wanted.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise DataError(
            f"no {role} field {wanted!r}; the fields found are {_show(names)}",
            hint=f"pass --{role}-field with one of them",
        )
    lowered = {n.casefold(): n for n in reversed(names)}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    raise DataError(
        f"cannot tell which field holds the {role}; the fields found are {_show(names)}",
        hint=f"pass --{role}-field NAME (tried {', '.join(candidates)})",
    )


def _show(names: Sequence[str]) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(repr(n) for n in names[:30])
    return shown + (f" and {len(names) - 30} more" if len(names) > 30 else "")


def _resolve(names: Sequence[str], opts: ReadOptions, where: str) -> tuple[str, str]:
    try:
        q = _pick_field(names, opts.question_field, QUESTION_FIELD_NAMES, "question")
        a = _pick_field(names, opts.answer_field, ANSWER_FIELD_NAMES, "answer")
    except DataError as exc:
        raise DataError(exc.message, where=where, hint=exc.hint) from None
    if q == a:
        raise DataError(
            f"the question and the answer field are both {q!r}",
            where=where,
            hint="pass different --question-field and --answer-field",
        )
    return q, a


# ---------------------------------------------------------------------------------------------
# JSON helpers


class _Constant:
    """Stands for a NaN / Infinity token, which is not valid JSON and never a string."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _DupDict(dict[str, Any]):
    """A JSON object that had duplicate keys (``dups`` names them)."""

    dups: frozenset[str] = frozenset()


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        out = _DupDict(obj)
        out.dups = frozenset(k for k, c in counts.items() if c > 1)
        return out
    return obj


def _decoder() -> json.JSONDecoder:
    """A JSON decoder that keeps NaN/Infinity as :class:`_Constant` and marks duplicate keys."""
    return json.JSONDecoder(parse_constant=_Constant, object_pairs_hook=_object_hook)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, _Constant):
        return f"{value.name} (not valid JSON)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


_MISSING = object()


class _Fields:
    """Resolves the question/answer fields from the first record and extracts them later."""

    def __init__(self, opts: ReadOptions, source: str) -> None:
        self.opts = opts
        self.source = source
        self.names: tuple[str, str] | None = None

    def extract(self, obj: Any, where: str) -> tuple[str, object, object] | Invalid:
        if not isinstance(obj, dict):
            return Invalid(where, "not_object", f"expected a JSON object, found {_describe(obj)}")
        if self.names is None:
            self.names = _resolve(list(obj), self.opts, where)
            _log.debug("%s: question field %r, answer field %r", self.source, *self.names)
        qf, af = self.names
        if isinstance(obj, _DupDict):
            clash = sorted(obj.dups & {qf, af})
            if clash:
                return Invalid(where, "duplicate_key", f"duplicate key {clash[0]!r} in one object")
        q = obj.get(qf, _MISSING)
        a = obj.get(af, _MISSING)
        for name, value in ((qf, q), (af, a)):
            if value is _MISSING:
                return Invalid(
                    where, "missing_field", f"no field {name!r}; the fields found are {_show(list(obj))}"
                )
        return where, q, a


class _ArrayStream:
    """Incremental parser of a top-level JSON array: one element in memory at a time."""

    _WS = re.compile(r"[ \t\n\r]*")
    chunk_chars = 1 << 16  # first read size; later reads double with the buffer (tests shrink it)
    batch = True  # parse runs of complete elements in one C call (element by element when False)
    min_batch_chars = 4096  # a run shorter than this is parsed element by element

    def __init__(self, fh: IO[str], source: str) -> None:
        self.fh = fh
        self.source = source
        self.decoder = _decoder()
        self._scan = self.decoder.scan_once  # type: ignore[attr-defined]  # raw_decode minus its wrapper
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line number of buf[mark]
        self.mark = 0
        self.last_line: int | None = None  # line of the last element parsed element by element
        self._batch_ok = True  # False after a failed batch attempt, until the next read

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(max(self.chunk_chars, len(self.buf) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.line_at(self.pos)
        self._batch_ok = True
        self.buf = self.buf[self.pos :] + chunk
        self.mark -= self.pos
        self.pos = 0
        return True

    def line_at(self, p: int) -> int:
        """Line of ``buf[p]``; positions must be asked in increasing order."""
        if p > self.mark:
            self.line += self.buf.count("\n", self.mark, p)
            self.mark = p
        return self.line

    def _skip_ws(self) -> None:
        if self.pos < len(self.buf) and self.buf[self.pos] not in " \t\n\r":
            return  # the common case: no whitespace to skip
        while True:
            m = self._WS.match(self.buf, self.pos)
            assert m is not None
            self.pos = m.end()
            if self.pos < len(self.buf) or not self._fill():
                return

    def _error(self, msg: str, p: int, hint: str | None = None) -> DataError:
        return DataError(msg, where=f"{self.source}:{self.line_at(p)}", hint=hint)

    def start(self) -> str:
        """Skip to the first token; return it ('[' consumed, or the other first char)."""
        self._skip_ws()
        if self.pos >= len(self.buf):
            return ""
        ch = self.buf[self.pos]
        if ch == "[":
            self.pos += 1
        return ch

    def elements(self) -> Iterator[Any]:
        """Yield the array's elements until the closing bracket; errors for bad or truncated JSON.

        Runs of complete elements in the buffer are parsed by one ``scan_once`` call on
        ``"[" + run + "]"`` (the cut is a ``}`` followed by ``,``; a wrong guess fails to parse and
        the elements are then parsed one by one, so the values are always the same).
        """
        self._skip_ws()
        if self.pos >= len(self.buf):
            raise self._error(
                "the JSON array is not closed (truncated file?)",
                self.pos,
                hint="the file ends before its closing ']'",
            )
        if self.buf[self.pos] != "]":
            while True:
                values = self._batch() if self.batch and self._batch_ok else None
                if values is not None:
                    self.last_line = None
                    yield from values
                else:
                    self.last_line = self.line_at(self.pos)
                    yield self._element()
                self._skip_ws()
                if self.pos >= len(self.buf):
                    raise self._error("the JSON array is not closed (truncated file?)", self.pos)
                ch = self.buf[self.pos]
                self.pos += 1
                if ch == "]":
                    break
                if ch != ",":
                    raise self._error(
                        f"invalid JSON: expected ',' or ']' after an element, found {ch!r}", self.pos - 1
                    )
                self._skip_ws()
        else:
            self.pos += 1
        self._skip_ws()
        if self.pos < len(self.buf):
            raise self._error("invalid JSON: extra data after the closing ']'", self.pos)

    def _batch(self) -> list[Any] | None:
        buf, start = self.buf, self.pos
        brace = len(buf)
        for _ in range(16):  # the last "}" followed by "," (a "}" is rare inside text)
            brace = buf.rfind("}", start, brace)
            if brace - start < self.min_batch_chars:
                return None
            m = self._WS.match(buf, brace + 1)
            assert m is not None
            cut = m.end()
            if cut < len(buf) and buf[cut] == ",":
                break
        else:
            return None
        text = "[" + buf[start:cut] + "]"
        try:
            values, end = self._scan(text, 0)
        except (ValueError, StopIteration, RecursionError):  # JSONDecodeError is a ValueError
            self._batch_ok = False
            return None
        if end != len(text):
            self._batch_ok = False
            return None
        self.pos = cut
        return values  # type: ignore[no-any-return]

    def _element(self) -> Any:
        while True:
            try:
                try:
                    value, end = self._scan(self.buf, self.pos)
                except StopIteration as err:
                    raise json.JSONDecodeError("Expecting value", self.buf, err.value) from None
            except json.JSONDecodeError as exc:
                # Incomplete data at the end of the buffer: read more and parse again (the
                # read size doubles, so a large element costs linear time).
                near_end = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if near_end and self._fill():
                    continue
                raise self._error(
                    f"invalid JSON: {_json_problem(exc.msg)} (column {exc.colno})"
                    if exc.lineno == 1
                    else f"invalid JSON: {_json_problem(exc.msg)}",
                    exc.pos,
                    hint="the file may be truncated or not JSON" if self.eof else None,
                ) from None
            except RecursionError:
                raise self._error(
                    "JSON nested too deeply", self.pos, hint="records must be flat objects of strings"
                ) from None
            if end >= len(self.buf) and self._fill():
                continue  # a number may go on in the next chunk: parse again with lookahead
            self.pos = end
            return value


# ---------------------------------------------------------------------------------------------
# Readers: each yields (where, question, answer) or Invalid


def _json_problem(msg: str) -> str:
    """json's message, whole: "Unterminated string starting at" has its position cut off."""
    if msg.startswith("Unterminated string"):
        return "a string that starts here is never closed"
    return msg


_LOOKALIKE = re.compile(r"(?:\s+[QA]|[qa]):\s")  # "  Q: ", "q: " ...: not a record start (qa-format.md)


def _read_txt(
    path: Path, opts: ReadOptions, source: str, lookalike: Callable[[str], None] | None = None
) -> Iterator[tuple[str, object, object] | Invalid]:
    """``lookalike(FILE:LINE)`` is called for each line inside a record that looks like a record start."""
    with open_text(path, opts.encoding, name=source) as fh:
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


def _txt_block(block: list[str], start: int, source: str) -> Iterator[tuple[str, object, object] | Invalid]:
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
        reason = {
            "question without an answer": "missing_answer",
            "empty question": "empty_question",
            "empty answer": "empty_answer",
        }.get(msg, "syntax")
        yield Invalid(f"{source}:{start + rel - 1}", reason, msg)


def _read_jsonl(path: Path, opts: ReadOptions, source: str) -> Iterator[tuple[str, object, object] | Invalid]:
    decode = _decoder().decode
    fields = _Fields(opts, source)
    with open_text(path, opts.encoding, name=source) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{source}:{lineno}"
            try:
                obj = decode(line)
            except json.JSONDecodeError as exc:
                truncated = (
                    not line.endswith("\n")
                    or exc.msg.startswith("Unterminated")
                    or exc.pos >= len(line.rstrip())
                )
                cut = " (truncated line?)" if truncated else ""
                yield Invalid(
                    where, "bad_json", f"invalid JSON{cut}: {_json_problem(exc.msg)} (column {exc.colno})"
                )
                continue
            except RecursionError:
                yield Invalid(where, "bad_json", "JSON nested too deeply")
                continue
            yield fields.extract(obj, where)


def _read_json(path: Path, opts: ReadOptions, source: str) -> Iterator[tuple[str, object, object] | Invalid]:
    fields = _Fields(opts, source)
    with open_text(path, opts.encoding, name=source) as fh:
        stream = _ArrayStream(fh, source)
        first = stream.start()
        if first == "[":
            if opts.records_key is not None:
                raise DataError(
                    "--records-key was given but the file is a JSON array",
                    where=source,
                    hint="drop --records-key",
                )
            for index, obj in enumerate(stream.elements(), start=1):
                yield fields.extract(obj, f"{source}: record {index}")  # the line is added on error
            return
        if first == "":
            return
        if first != "{":
            raise DataError(
                f"expected a JSON array of objects, the file starts with {first!r}",
                where=f"{source}:1",
                hint="write the records as [ {...}, ... ] or as JSON lines (.jsonl)",
            )
        # A top-level object: loaded whole (the list inside it is what we need).
        top = stream._element()
        stream._skip_ws()
        if stream.pos < len(stream.buf):
            raise stream._error("invalid JSON: extra data after the top-level object", stream.pos)
    keys = list(top)
    if opts.records_key is None:
        lists = [k for k in keys if isinstance(top[k], list)]
        hint = (
            f"pass --records-key {lists[0]} to read the list under that key"
            if lists
            else "wrap the object in [ ] (a list of records), or write one object per line as .jsonl"
        )
        raise DataError(
            f"expected a JSON array of objects, found a single object with keys {_show(keys)}",
            where=source,
            hint=hint,
        )
    records = _records_at(top, opts.records_key, source)
    del top
    for index, obj in enumerate(records, start=1):
        yield fields.extract(obj, f"{source}: {opts.records_key}[{index - 1}]")


def _records_at(top: dict[str, Any], key: str, source: str) -> list[Any]:
    """The list under ``key`` of the top-level object; a dotted key (``payload.items``) walks into
    nested objects when no top-level key has that exact name."""
    path = [key] if key in top else key.split(".")
    node: Any = top
    for depth, part in enumerate(path):
        at = "the top-level object" if depth == 0 else f"{'.'.join(path[:depth])!r}"
        if not isinstance(node, dict):
            raise DataError(f"{at} holds {_describe(node)}, not an object with key {part!r}", where=source)
        if part not in node:
            raise DataError(f"no key {part!r} in {at}; keys: {_show(list(node))}", where=source)
        node = node[part]
    if isinstance(node, dict):
        lists = [k for k, v in node.items() if isinstance(v, list)]
        hint = f"pass --records-key {key}.{lists[0]}" if lists else None
        raise DataError(
            f"key {key!r} holds an object with keys {_show(list(node))}, not an array of records",
            where=source,
            hint=hint,
        )
    if not isinstance(node, list):
        raise DataError(f"key {key!r} holds {_describe(node)}, not an array of records", where=source)
    return node


def _json_record_lines(path: Path, encoding: str, wanted: set[int], source: str) -> dict[int, int]:
    """The lines where the JSON array records numbered ``wanted`` (1-based) start: a second,
    element-by-element pass, made only to name the place of invalid records."""
    lines: dict[int, int] = {}
    try:
        with open_text(path, encoding, name=source) as fh:
            stream = _ArrayStream(fh, source)
            stream.batch = False
            if stream.start() != "[":
                return lines
            top = max(wanted)
            for index, _ in enumerate(stream.elements(), start=1):
                if index in wanted and stream.last_line is not None:
                    lines[index] = stream.last_line
                if index >= top:
                    break
    except (DataError, UnicodeDecodeError):
        pass
    return lines


_DELIMITERS = (",", ";", "\t", "|")


def _sniff_delimiter(path: Path, opts: ReadOptions, source: str) -> str:
    """The CSV separator: of ``, ; TAB |``, the one that splits the header line into the most
    fields (Excel writes ``;`` where the decimal mark is a comma); ``,`` on a tie."""
    try:
        with open_text(path, opts.encoding, newline="", name=source) as fh:
            header = next((line for line in fh if line.strip()), "")
    except (DataError, UnicodeDecodeError, StopIteration):
        return ","  # the reader reports the real problem
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: (counts[d], d == ","))
    if best != ",":
        _log.info("%s: the header is %r-separated; reading it so (--delimiter sets it)", source, best)
    return best


def _read_csv(
    path: Path, opts: ReadOptions, delimiter: str, source: str
) -> Iterator[tuple[str, object, object] | Invalid]:
    old_limit = csv.field_size_limit(opts.max_field_chars)
    try:
        with open_text(path, opts.encoding, newline="", name=source) as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            start = 1
            try:
                header = next(reader, None)
                while header is not None and not "".join(header).strip():  # blank lines before the header
                    header = next(reader, None)
                if header is None:
                    return
                header = [h.strip() for h in header]
                qf, af = _resolve(header, opts, f"{source}:{reader.line_num}")
                qi, ai = header.index(qf), header.index(af)
                _log.debug("%s: question column %r, answer column %r", source, qf, af)
                start = reader.line_num + 1
                for row in reader:
                    end = reader.line_num
                    if not "".join(row).strip():  # a blank line, or an empty row (Excel's ",,,")
                        start = end + 1
                        continue
                    where = f"{source}:{start}"
                    if len(row) != len(header):
                        span = (
                            f" (the record runs over lines {start}-{end}: an unclosed quote?)"
                            if end > start
                            else ""
                        )
                        yield Invalid(
                            where, "field_count", f"{len(row)} fields, the header has {len(header)}{span}"
                        )
                    else:
                        yield where, row[qi], row[ai]
                    start = end + 1
            except csv.Error as exc:
                text = str(exc)
                if "unexpected end of data" in text:
                    raise DataError(
                        "unterminated quoted field: a quote opened here is never closed, so the rest of the "
                        "file would be read as one field",
                        where=f"{source}:{start}",
                        hint='close the quote (or double it as "" inside a quoted field)',
                    ) from None
                if "field larger than field limit" in text:
                    raise DataError(
                        f"a field longer than {opts.max_field_chars} characters (an unclosed quote?)",
                        where=f"{source}:{start}",
                        hint="check the quotes of this record, or raise the limit with --max-field-chars",
                    ) from None
                raise DataError(f"CSV syntax error: {text}", where=f"{source}:{reader.line_num}") from None
    finally:
        csv.field_size_limit(old_limit)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_sqlite(
    path: Path, opts: ReadOptions, source: str
) -> Iterator[tuple[str, object, object] | Invalid]:
    with open(path, "rb") as fh:
        magic = fh.read(len(_SQLITE_MAGIC))
    if magic != _SQLITE_MAGIC:
        raise DataError("not an SQLite database (bad header)", where=source, hint="pass the right --format")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.text_factory = _sqlite_text
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table','view') ORDER BY name"
            )
        ]
        if opts.query is not None:
            if opts.table is not None:
                raise DataError("pass --table or --query, not both", where=source)
            try:
                cursor = conn.execute(opts.query)
            except sqlite3.Error as exc:
                raise DataError(
                    f"the query failed: {exc}", where=source, hint=f"tables in the database: {_show(tables)}"
                ) from None
            if cursor.description is None:
                raise DataError("the query returns no columns (not a SELECT?)", where=source)
            names = [d[0] for d in cursor.description]
            qf, af = _resolve(names, opts, f"{source}: query")
            label = "query row"
        else:
            table = opts.table
            if table is None:
                table = _guess_table(conn, tables, opts, source)
            elif table not in tables:
                raise DataError(
                    f"no table {table!r}; the tables are {_show(tables)}",
                    where=source,
                    hint="pass --table NAME",
                )
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({_quote_ident(table)})")]
            qf, af = _resolve(cols, opts, f"{source}: table {table!r}")
            cursor = conn.execute(f"SELECT {_quote_ident(qf)}, {_quote_ident(af)} FROM {_quote_ident(table)}")
            names = [qf, af]
            label = f"table {table!r} row"
        qi, ai = names.index(qf), names.index(af)
        try:
            for index, row in enumerate(cursor, start=1):
                yield f"{source}: {label} {index}", row[qi], row[ai]
        except sqlite3.Error as exc:
            raise DataError(f"reading the database failed: {exc}", where=source) from None
    except sqlite3.DatabaseError as exc:
        raise DataError(f"cannot read the SQLite database: {exc}", where=source) from None
    finally:
        conn.close()


def _sqlite_text(data: bytes) -> str | bytes:
    # TEXT that is not UTF-8 comes back as bytes, which the record check reports (never dropped).
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _guess_table(conn: sqlite3.Connection, tables: list[str], opts: ReadOptions, source: str) -> str:
    if not tables:
        raise DataError("the database has no tables", where=source)
    found: list[str] = []
    described: list[str] = []
    for t in tables:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({_quote_ident(t)})")]
        described.append(f"{t}({', '.join(cols)})")
        try:
            _resolve(cols, opts, source)
        except DataError:
            continue
        found.append(t)
    if len(found) == 1:
        return found[0]
    what = "several tables could hold" if found else "no table has recognisable"
    raise DataError(
        f"{what} question/answer columns; tables: {'; '.join(described)}",
        where=source,
        hint="pass --table NAME (and --question-field/--answer-field), or --query SQL",
    )


def _read_parquet(
    path: Path, opts: ReadOptions, source: str
) -> Iterator[tuple[str, object, object] | Invalid]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise DataError(
            "reading Parquet needs pyarrow", where=source, hint='pip install "gptmed-data[parquet]"'
        ) from None
    pf = pq.ParquetFile(path)
    names = list(pf.schema_arrow.names)
    qf, af = _resolve(names, opts, source)
    index = 0
    for batch in pf.iter_batches(columns=[qf, af], batch_size=4096):
        qs, as_ = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for q, a in zip(qs, as_, strict=True):
            index += 1
            yield f"{source}: row {index}", q, a


# ---------------------------------------------------------------------------------------------


def _read_once(path: Path) -> bool:
    """Standard input (``-``), a pipe or FIFO, a terminal: inputs that can be read only once."""
    if str(path) == "-":
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


class _Spool:
    """A temp copy of an input that can be read only once (:func:`_read_once`).

    Format detection, CSV separator sniffing, error positions and ``split`` read their input more
    than once; a second ``open`` of a drained pipe reads nothing, and of a FIFO waits forever for
    a writer. The copy keeps the input's last suffixes (``.csv.gz``) for format detection and is
    removed when the last reader holding it is gone.
    """

    def __init__(self, path: Path) -> None:
        stdin = str(path) == "-"
        fd, tmp = tempfile.mkstemp(
            prefix="gptmed-data-input-", suffix="" if stdin else "".join(path.suffixes[-2:])
        )
        self.path = Path(tmp)
        self._remove = weakref.finalize(self, self.path.unlink, missing_ok=True)
        try:
            with os.fdopen(fd, "wb") as out:
                if stdin:
                    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
                else:
                    with open(path, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            self._remove()
            raise
        _log.debug("copied %s to %s (%d bytes)", path, tmp, self.path.stat().st_size)


@dataclass
class QAReader:
    """Iterate the valid pairs of ``path``; invalid records raise, or are skipped and counted.

    After iteration, ``invalid`` counts skipped records by reason, ``cleaned`` counts repairs
    (``nul_removed``), ``examples`` keeps the first ``keep_examples`` invalid records and ``read``
    is the number of records seen.
    """

    path: Path
    options: ReadOptions = field(default_factory=ReadOptions)
    keep_examples: int = 20
    format: str = ""
    read: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    cleaned: Counter[str] = field(default_factory=Counter)
    examples: list[Invalid] = field(default_factory=list)
    # txt: lines inside a record that look like a record start but are not one by the grammar
    # (an indented "  Q: ..." or a lower-case "q: ..."): read as text of the record before them
    lookalikes: list[str] = field(default_factory=list)  # the first 20 places (FILE:LINE)
    lookalike_lines: int = 0  # all of them
    # what messages call the input: ``path``, or "<stdin>" for "-" (standard input)
    name: str = ""
    _spool: _Spool | None = field(default=None, repr=False)  # the copy of a read-once input
    _file: Path = field(init=False, repr=False)  # the file read: path, or the copy

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or ("<stdin>" if str(self.path) == "-" else str(self.path))
        if self._spool is None and _read_once(self.path):
            self._spool = _Spool(self.path)
        self._file = self.path if self._spool is None else self._spool.path  # the file read
        if not self._file.exists():
            raise DataError(f"no such file: {self.name}", hint="check the path (- reads standard input)")
        if self._file.is_dir():
            raise DataError(f"{self.name} is a folder, not a file")
        self.format = self.options.format or detect_format(self._file, self.name)
        _log.debug("reading %s as %s", self.name, self.format)

    def reopen(self) -> QAReader:
        """A new reader of the same input with the same options (standard input or a pipe is not
        read again: both readers read its copy)."""
        return QAReader(self.path, self.options, self.keep_examples, name=self.name, _spool=self._spool)

    def _lookalike(self, where: str) -> None:
        self.lookalike_lines += 1
        if len(self.lookalikes) < 20:
            self.lookalikes.append(where)

    def _raw(self) -> Iterator[tuple[str, object, object] | Invalid]:
        fmt, opts, path, name = self.format, self.options, self._file, self.name
        if fmt == "txt":
            return _read_txt(path, opts, name, self._lookalike)
        if fmt == "jsonl":
            return _read_jsonl(path, opts, name)
        if fmt == "json":
            return _read_json(path, opts, name)
        if fmt in ("csv", "tsv"):
            delimiter = opts.delimiter or ("\t" if fmt == "tsv" else _sniff_delimiter(path, opts, name))
            return _read_csv(path, opts, delimiter, name)
        if fmt == "sqlite":
            return _read_sqlite(path, opts, name)
        return _read_parquet(path, opts, name)

    def _items(self) -> Iterator[tuple[str, object, object] | Invalid]:
        try:
            yield from self._raw()
        except UnicodeDecodeError:
            raise decode_error(self._file, self.options.encoding, self.name) from None

    def _no_records(self) -> DataError:
        return DataError(
            f"no Q&A records in {self.name}",
            hint="the file is empty, has only blank lines or only a header",
        )

    def __iter__(self) -> Iterator[QAPair]:
        norm = self.options.unicode_normalize
        for item in self._items():
            self.read += 1
            pair = item if isinstance(item, Invalid) else self._pair(*item, norm)
            if isinstance(pair, Invalid):
                self._reject(pair)
                continue
            yield pair
        if self.read == 0:
            raise self._no_records()
        self.examples = self._locate(self.examples)

    def iter_batches(self, size: int = 256) -> Iterator[tuple[list[str], list[str]]]:
        """The valid pairs as ``(questions, answers)`` lists of up to ``size`` normalised fields.

        Same records, checks and counts as iterating the reader, but a batch of plain records
        (all strings; no NUL, CR or lone surrogate; no empty field) is checked with a few C-level
        scans instead of one Python call per record: the fast path of ``convert``.
        """
        norm = self.options.unicode_normalize
        items = self._items()
        while chunk := list(itertools.islice(items, size)):
            self.read += len(chunk)
            fast = self._fast_batch(chunk) if norm is None else None
            if fast is not None:
                yield fast
                continue
            qs: list[str] = []
            as_: list[str] = []
            for item in chunk:
                pair = item if isinstance(item, Invalid) else self._pair(*item, norm)
                if isinstance(pair, Invalid):
                    self._reject(pair)
                    continue
                qs.append(pair.question)
                as_.append(pair.answer)
            if qs:
                yield qs, as_
        if self.read == 0:
            raise self._no_records()
        self.examples = self._locate(self.examples)

    @staticmethod
    def _fast_batch(chunk: list[tuple[str, object, object] | Invalid]) -> tuple[list[str], list[str]] | None:
        """Stripped fields of ``chunk`` if every record passes :meth:`_pair` unchanged but for
        surrounding whitespace; None when any record needs the per-record path."""
        try:
            _, qs, as_ = zip(*chunk, strict=True)  # an Invalid is not iterable: TypeError
        except (TypeError, ValueError):
            return None
        if set(map(type, qs)) != {str} or set(map(type, as_)) != {str}:
            return None
        jq, ja = "\x01".join(qs), "\x01".join(as_)
        if "\x00" in jq or "\x00" in ja or "\r" in jq or "\r" in ja:
            return None
        if not (jq.isascii() and ja.isascii()):
            try:
                jq.encode("utf-8")
                ja.encode("utf-8")
            except UnicodeEncodeError:
                return None
        sq, sa = list(map(str.strip, qs)), list(map(str.strip, as_))
        if not (all(sq) and all(sa)):
            return None
        return sq, sa

    def _locate(self, bads: list[Invalid]) -> list[Invalid]:
        """Add the line to invalid JSON-array records (``FILE: record N`` -> ``... (line L)``)."""
        if self.format != "json" or not bads:
            return bads
        found = {b.where: int(m.group(1)) for b in bads if (m := _RECORD.search(b.where))}
        if not found:
            return bads
        lines = _json_record_lines(self._file, self.options.encoding, set(found.values()), self.name)
        return [
            Invalid(f"{b.where} (line {lines[found[b.where]]})", b.reason, b.message)
            if b.where in found and found[b.where] in lines
            else b
            for b in bads
        ]

    def _reject(self, bad: Invalid) -> None:
        if not self.options.skip_invalid:
            bad = self._locate([bad])[0]
            raise DataError(bad.message, where=bad.where, hint=_SKIP_HINT)
        self.invalid[bad.reason] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(bad)

    def _pair(
        self, where: str, q: object, a: object, norm: Literal["NFC", "NFKC"] | None
    ) -> QAPair | Invalid:
        if type(q) is not str:
            return Invalid(where, "not_string", f"the question is {_describe(q)}, not a string")
        if type(a) is not str:
            return Invalid(where, "not_string", f"the answer is {_describe(a)}, not a string")
        if not (q.isascii() and a.isascii()):
            for name, value in (("question", q), ("answer", a)):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return Invalid(
                        where,
                        "lone_surrogate",
                        f"the {name} has a lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start}",
                    )
            if norm is not None:
                q, a = unicodedata.normalize(norm, q), unicodedata.normalize(norm, a)
        if "\x00" in q:
            q = q.replace("\x00", "")
            self.cleaned["nul_removed"] += 1
        if "\x00" in a:
            a = a.replace("\x00", "")
            self.cleaned["nul_removed"] += 1
        # The normalisation QAPair applies (CRLF/CR -> LF, strip), done here once.
        if "\r" in q:
            q = q.replace("\r\n", "\n").replace("\r", "\n")
        if "\r" in a:
            a = a.replace("\r\n", "\n").replace("\r", "\n")
        q, a = q.strip(), a.strip()
        if not q:
            return Invalid(where, "empty_question", "the question is empty or only whitespace")
        if not a:
            return Invalid(where, "empty_answer", "the answer is empty or only whitespace")
        return _trusted_pair(q, a)


def _trusted_pair(question: str, answer: str) -> QAPair:
    """A :class:`QAPair` from fields already known to be normalised (no CR, no surrounding
    whitespace, non-empty), without re-running the normalisation (the hot path of conversion)."""
    pair = _new_pair(QAPair)
    _set_question(pair, question)
    _set_answer(pair, answer)
    return pair


# Slot descriptors of the frozen QAPair: setting through them skips the frozen __setattr__.
_new_pair = object.__new__
_set_question = vars(QAPair)["question"].__set__
_set_answer = vars(QAPair)["answer"].__set__


def iter_records(input: str | os.PathLike[str], **options: Any) -> Iterator[QAPair]:
    """Stream the Q&A pairs of ``input`` in any supported format (keyword args: :class:`ReadOptions`)."""
    return iter(QAReader(Path(input), ReadOptions(**options)))
