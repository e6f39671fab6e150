"""JSON: an array of objects (streamed), a top-level object holding one (``--records-key``,
loaded whole), and JSON lines (one object per line)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptmed.core import DataError
from gptmed.data._textio import ByteMeter, open_text
from gptmed.data.readers.checks import describe
from gptmed.data.readers.json_stream import ArrayStream, DupDict, decoder, json_problem
from gptmed.data.readers.options import Invalid, RawRecord, ReadOptions, resolve_fields, show_names

__all__ = ["json_record_lines", "read_json", "read_jsonl", "records_at"]

_log = logging.getLogger(__name__)

_MISSING = object()


class _Fields:
    """Resolves the question/answer fields from the first record and extracts them later."""

    def __init__(self, opts: ReadOptions, source: str) -> None:
        self.opts = opts
        self.source = source
        self.names: tuple[str, str] | None = None

    def extract(self, obj: Any, where: str) -> tuple[str, object, object] | Invalid:
        if not isinstance(obj, dict):
            return Invalid(where, "not_object", f"expected a JSON object, found {describe(obj)}")
        if self.names is None:
            self.names = resolve_fields(list(obj), self.opts, where)
            _log.debug("%s: question field %r, answer field %r", self.source, *self.names)
        qf, af = self.names
        if isinstance(obj, DupDict):
            clash = sorted(obj.dups & {qf, af})
            if clash:
                return Invalid(where, "duplicate_key", f"duplicate key {clash[0]!r} in one object")
        q = obj.get(qf, _MISSING)
        a = obj.get(af, _MISSING)
        for name, value in ((qf, q), (af, a)):
            if value is _MISSING:
                return Invalid(
                    where, "missing_field", f"no field {name!r}; the fields found are {show_names(list(obj))}"
                )
        return where, q, a


def read_jsonl(
    path: Path, opts: ReadOptions, source: str, meter: ByteMeter | None = None
) -> Iterator[RawRecord]:
    """One object per line; a line that is not JSON is an invalid record (``bad_json``)."""
    decode = decoder().decode
    fields = _Fields(opts, source)
    with open_text(path, opts.encoding, name=source, meter=meter) as fh:
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
                    where, "bad_json", f"invalid JSON{cut}: {json_problem(exc.msg)} (column {exc.colno})"
                )
                continue
            except RecursionError:
                yield Invalid(where, "bad_json", "JSON nested too deeply")
                continue
            yield fields.extract(obj, where)


def read_json(
    path: Path, opts: ReadOptions, source: str, meter: ByteMeter | None = None
) -> Iterator[RawRecord]:
    """A JSON array of objects, streamed; or a top-level object with the array under ``--records-key``."""
    fields = _Fields(opts, source)
    with open_text(path, opts.encoding, name=source, meter=meter) as fh:
        stream = ArrayStream(fh, source)
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
        top = stream.value()  # a top-level object: loaded whole (the list inside it is what we need)
    records = records_at(top, opts.records_key, source)
    del top
    for index, obj in enumerate(records, start=1):
        yield fields.extract(obj, f"{source}: {opts.records_key}[{index - 1}]")


def records_at(top: dict[str, Any], key: str | None, source: str) -> list[Any]:
    """The list under ``key`` of the top-level object; a dotted key (``payload.items``) walks into
    nested objects when no top-level key has that exact name. No key: an error that names the
    lists the object holds."""
    if key is None:
        raise _needs_records_key(top, source)
    path = [key] if key in top else key.split(".")
    node: Any = top
    for depth, part in enumerate(path):
        at = "the top-level object" if depth == 0 else f"{'.'.join(path[:depth])!r}"
        if not isinstance(node, dict):
            raise DataError(f"{at} holds {describe(node)}, not an object with key {part!r}", where=source)
        if part not in node:
            raise DataError(f"no key {part!r} in {at}; keys: {show_names(list(node))}", where=source)
        node = node[part]
    if isinstance(node, dict):
        lists = [k for k, v in node.items() if isinstance(v, list)]
        hint = f"pass --records-key {key}.{lists[0]}" if lists else None
        raise DataError(
            f"key {key!r} holds an object with keys {show_names(list(node))}, not an array of records",
            where=source,
            hint=hint,
        )
    if not isinstance(node, list):
        raise DataError(f"key {key!r} holds {describe(node)}, not an array of records", where=source)
    return node


def _needs_records_key(top: dict[str, Any], source: str) -> DataError:
    keys = list(top)
    lists = [k for k in keys if isinstance(top[k], list)]
    hint = (
        f"pass --records-key {lists[0]} to read the list under that key"
        if lists
        else "wrap the object in [ ] (a list of records), or write one object per line as .jsonl"
    )
    return DataError(
        f"expected a JSON array of objects, found a single object with keys {show_names(keys)}",
        where=source,
        hint=hint,
    )


def json_record_lines(path: Path, encoding: str, wanted: set[int], source: str) -> dict[int, int]:
    """The lines where the JSON array records numbered ``wanted`` (1-based) start: a second,
    element-by-element pass, made only to name the place of invalid records."""
    lines: dict[int, int] = {}
    try:
        with open_text(path, encoding, name=source) as fh:
            stream = ArrayStream(fh, source)
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
