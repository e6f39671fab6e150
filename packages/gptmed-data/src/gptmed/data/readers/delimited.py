"""CSV and TSV: the header names the columns; one record per row (quoted fields may span lines)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

from gptmed.core import DataError
from gptmed.data._textio import ByteMeter, open_text
from gptmed.data.readers.options import Invalid, RawRecord, ReadOptions, resolve_fields

__all__ = ["read_csv", "sniff_delimiter"]

_log = logging.getLogger(__name__)

_DELIMITERS = (",", ";", "\t", "|")


def sniff_delimiter(path: Path, opts: ReadOptions, source: str) -> str:
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


def read_csv(
    path: Path, opts: ReadOptions, delimiter: str, source: str, meter: ByteMeter | None = None
) -> Iterator[RawRecord]:
    """The rows of a CSV/TSV file as raw records, the columns named by its header."""
    old_limit = csv.field_size_limit(opts.max_field_chars)
    try:
        with open_text(path, opts.encoding, newline="", name=source, meter=meter) as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            start = 1  # the line of the record being read, for errors
            try:
                header = next(reader, None)
                while header is not None and not "".join(header).strip():  # blank lines before the header
                    header = next(reader, None)
                if header is None:
                    return
                header = [h.strip() for h in header]
                qf, af = resolve_fields(header, opts, f"{source}:{reader.line_num}")
                qi, ai = header.index(qf), header.index(af)
                _log.debug("%s: question column %r, answer column %r", source, qf, af)
                start = reader.line_num + 1
                for row in reader:
                    end = reader.line_num
                    if "".join(row).strip():  # not a blank line, nor an empty row (Excel's ",,,")
                        yield _row_record(row, len(header), qi, ai, source, start, end)
                    start = end + 1
            except csv.Error as exc:
                raise _csv_error(str(exc), opts, source, start, reader.line_num) from None
    finally:
        csv.field_size_limit(old_limit)


def _row_record(
    row: list[str], fields: int, qi: int, ai: int, source: str, start: int, end: int
) -> RawRecord:
    where = f"{source}:{start}"
    if len(row) == fields:
        return where, row[qi], row[ai]
    span = f" (the record runs over lines {start}-{end}: an unclosed quote?)" if end > start else ""
    return Invalid(where, "field_count", f"{len(row)} fields, the header has {fields}{span}")


def _csv_error(text: str, opts: ReadOptions, source: str, start: int, line: int) -> DataError:
    if "unexpected end of data" in text:
        return DataError(
            "unterminated quoted field: a quote opened here is never closed, so the rest of the "
            "file would be read as one field",
            where=f"{source}:{start}",
            hint='close the quote (or double it as "" inside a quoted field)',
        )
    if "field larger than field limit" in text:
        return DataError(
            f"a field longer than {opts.max_field_chars} characters (an unclosed quote?)",
            where=f"{source}:{start}",
            hint="check the quotes of this record, or raise the limit with --max-field-chars",
        )
    return DataError(f"CSV syntax error: {text}", where=f"{source}:{line}")
