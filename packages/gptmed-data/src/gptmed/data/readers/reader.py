"""QAReader: any supported input -> checked :class:`~gptmed.core.QAPair` records, with counts."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptmed.core import DataError, QAPair
from gptmed.data._textio import ByteMeter, decode_error
from gptmed.data.readers.checks import check_batch, check_record
from gptmed.data.readers.delimited import read_csv, sniff_delimiter
from gptmed.data.readers.detect import detect_format
from gptmed.data.readers.json_records import json_record_lines, read_json, read_jsonl
from gptmed.data.readers.options import Invalid, RawRecord, ReadOptions
from gptmed.data.readers.parquet import read_parquet
from gptmed.data.readers.spool import Spool, read_once
from gptmed.data.readers.sqlite import read_sqlite
from gptmed.data.readers.text import read_txt

__all__ = ["PROGRESS_EVERY", "QAReader", "ReadProgress", "iter_records"]

_log = logging.getLogger(__name__)

_SKIP_HINT = "fix the record, or pass --skip-invalid to skip and count such records"
_RECORD = re.compile(r": record (\d+)$")
PROGRESS_EVERY = 4096  # records between two calls of a reader's progress callback
_BY_BYTES = ("txt", "json", "jsonl", "csv", "tsv")  # formats whose progress is counted in bytes


@dataclass(frozen=True, slots=True)
class ReadProgress:
    """How far a :class:`QAReader` has got: what its ``progress`` callback is given now and then."""

    stage: str  # what the reading is for: "reading", or split's "pass 1 of 2" / "pass 2 of 2"
    records: int  # records read so far (valid or not)
    bytes_read: int | None  # bytes of the input read so far (of a .gz: compressed); None: SQLite, Parquet
    total_bytes: int | None  # the input's size in bytes (standard input: its copy's); None with bytes_read


@dataclass
class QAReader:
    """Iterate the valid pairs of ``path``; invalid records raise, or are skipped and counted.

    After iteration, ``invalid`` counts skipped records by reason, ``cleaned`` counts repairs
    (``nul_removed``), ``examples`` keeps the first ``keep_examples`` invalid records and ``read``
    is the number of records seen. ``progress``, if given, is called with a :class:`ReadProgress`
    every :data:`PROGRESS_EVERY` records and once at the end.
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
    progress: Callable[[ReadProgress], None] | None = field(default=None, repr=False)
    stage: str = "reading"  # the ReadProgress stage
    _spool: Spool | None = field(default=None, repr=False)  # the copy of a read-once input
    _file: Path = field(init=False, repr=False)  # the file read: path, or the copy
    _meter: ByteMeter = field(init=False, repr=False, default_factory=ByteMeter)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or ("<stdin>" if str(self.path) == "-" else str(self.path))
        if self._spool is None and read_once(self.path):
            self._spool = Spool(self.path)
        self._file = self.path if self._spool is None else self._spool.path  # the file read
        if not self._file.exists():
            raise DataError(f"no such file: {self.name}", hint="check the path (- reads standard input)")
        if self._file.is_dir():
            raise DataError(f"{self.name} is a folder, not a file")
        self.format = self.options.format or detect_format(self._file, self.name)
        _log.debug("reading %s as %s", self.name, self.format)

    def reopen(self, stage: str | None = None) -> QAReader:
        """A new reader of the same input with the same options and progress callback (standard
        input or a pipe is not read again: both readers read its copy)."""
        return QAReader(
            self.path,
            self.options,
            self.keep_examples,
            name=self.name,
            progress=self.progress,
            stage=self.stage if stage is None else stage,
            _spool=self._spool,
        )

    def position(self) -> ReadProgress:
        """How far this reader has got."""
        if self.format not in _BY_BYTES:
            return ReadProgress(self.stage, self.read, None, None)
        return ReadProgress(self.stage, self.read, self._meter.position(), self._file.stat().st_size)

    def _report(self, final: bool = False) -> None:
        if self.progress is None:
            return
        now = self.position()
        if final and now.total_bytes is not None:  # all read (the file is closed by now)
            now = dataclasses.replace(now, bytes_read=now.total_bytes)
        self.progress(now)

    def _lookalike(self, where: str) -> None:
        self.lookalike_lines += 1
        if len(self.lookalikes) < 20:
            self.lookalikes.append(where)

    def _raw(self) -> Iterator[RawRecord]:
        fmt, opts, path, name, meter = self.format, self.options, self._file, self.name, self._meter
        if fmt == "txt":
            return read_txt(path, opts, name, self._lookalike, meter)
        if fmt == "jsonl":
            return read_jsonl(path, opts, name, meter)
        if fmt == "json":
            return read_json(path, opts, name, meter)
        if fmt in ("csv", "tsv"):
            delimiter = opts.delimiter or ("\t" if fmt == "tsv" else sniff_delimiter(path, opts, name))
            return read_csv(path, opts, delimiter, name, meter)
        if fmt == "sqlite":
            return read_sqlite(path, opts, name)
        return read_parquet(path, opts, name)

    def _items(self) -> Iterator[RawRecord]:
        try:
            yield from self._raw()
        except UnicodeDecodeError:
            raise decode_error(self._file, self.options.encoding, self.name) from None

    def _no_records(self) -> DataError:
        return DataError(
            f"no Q&A records in {self.name}",
            hint="the file is empty, has only blank lines or only a header",
        )

    def _finish(self) -> None:
        if self.read == 0:
            raise self._no_records()
        self.examples = self._locate(self.examples)
        self._report(final=True)

    def __iter__(self) -> Iterator[QAPair]:
        norm, cleaned, progress = self.options.unicode_normalize, self.cleaned, self.progress
        for item in self._items():
            self.read += 1
            if progress is not None and self.read % PROGRESS_EVERY == 0:
                self._report()
            pair = item if isinstance(item, Invalid) else check_record(*item, norm, cleaned)
            if isinstance(pair, Invalid):
                self._reject(pair)
                continue
            yield pair
        self._finish()

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
            if self.progress is not None and self.read % PROGRESS_EVERY < len(chunk):
                self._report()
            fast = check_batch(chunk) if norm is None else None
            if fast is not None:
                yield fast
                continue
            qs: list[str] = []
            as_: list[str] = []
            for item in chunk:
                pair = item if isinstance(item, Invalid) else check_record(*item, norm, self.cleaned)
                if isinstance(pair, Invalid):
                    self._reject(pair)
                    continue
                qs.append(pair.question)
                as_.append(pair.answer)
            if qs:
                yield qs, as_
        self._finish()

    def _locate(self, bads: list[Invalid]) -> list[Invalid]:
        """Add the line to invalid JSON-array records (``FILE: record N`` -> ``... (line L)``)."""
        if self.format != "json" or not bads:
            return bads
        found = {b.where: int(m.group(1)) for b in bads if (m := _RECORD.search(b.where))}
        if not found:
            return bads
        lines = json_record_lines(self._file, self.options.encoding, set(found.values()), self.name)
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


def iter_records(input: str | os.PathLike[str], **options: Any) -> Iterator[QAPair]:
    """Stream the Q&A pairs of ``input`` in any supported format (keyword args: :class:`ReadOptions`)."""
    return iter(QAReader(Path(input), ReadOptions(**options)))
