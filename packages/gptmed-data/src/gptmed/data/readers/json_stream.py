"""An incremental parser of a top-level JSON array: one element in memory at a time.

The stdlib's C scanner (``json.JSONDecoder.scan_once``) parses elements out of a sliding text
buffer that grows only as long as the longest element; runs of complete elements are parsed in
one C call. Errors name the line (``data.json:40``). A decoder that keeps ``NaN``/``Infinity`` as
:class:`Constant` (reported per record, not fatal) and marks objects with duplicate keys
(:class:`DupDict`) is shared with the JSON-lines reader.

Measured against ijson's C backend (yajl2_c) on the 1 GB array of ``bench/convert.py``: the
same peak memory, and with the duplicate-key check both need about the same CPU time (see
``docs/bench/data.md``), so this parser stays: it also keeps NaN records and error lines.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

from gptmed.core import DataError

__all__ = ["ArrayStream", "Constant", "DupDict", "decoder", "json_problem"]


class Constant:
    """Stands for a NaN / Infinity token, which is not valid JSON and never a string."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class DupDict(dict[str, Any]):
    """A JSON object that had duplicate keys (``dups`` names them)."""

    dups: frozenset[str] = frozenset()


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        out = DupDict(obj)
        out.dups = frozenset(k for k, c in counts.items() if c > 1)
        return out
    return obj


def decoder() -> json.JSONDecoder:
    """A JSON decoder that keeps NaN/Infinity as :class:`Constant` and marks duplicate keys."""
    return json.JSONDecoder(parse_constant=Constant, object_pairs_hook=_object_hook)


def json_problem(msg: str) -> str:
    """json's message, whole: "Unterminated string starting at" has its position cut off."""
    if msg.startswith("Unterminated string"):
        return "a string that starts here is never closed"
    return msg


class ArrayStream:
    """Incremental parser of a top-level JSON array: one element in memory at a time."""

    _WS = re.compile(r"[ \t\n\r]*")
    chunk_chars = 1 << 16  # first read size; later reads double with the buffer (tests shrink it)
    batch = True  # parse runs of complete elements in one C call (element by element when False)
    min_batch_chars = 4096  # a run shorter than this is parsed element by element

    def __init__(self, fh: IO[str], source: str) -> None:
        self.fh = fh
        self.source = source
        self.decoder = decoder()
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
        self._expect_end("the closing ']'")

    def value(self) -> Any:
        """The one JSON value at the current position, whole (the top-level object form), which
        must end the file."""
        value = self._element()
        self._expect_end("the top-level object")
        return value

    def _expect_end(self, after: str) -> None:
        self._skip_ws()
        if self.pos < len(self.buf):
            raise self._error(f"invalid JSON: extra data after {after}", self.pos)

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
                    f"invalid JSON: {json_problem(exc.msg)} (column {exc.colno})"
                    if exc.lineno == 1
                    else f"invalid JSON: {json_problem(exc.msg)}",
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
