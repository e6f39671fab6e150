"""Streaming readers: any supported input format -> :class:`~gptmed.core.QAPair` records.

Every format reader yields either a raw record ``(where, question, answer)`` or an
:class:`Invalid` (a record that cannot become a pair, with its place and reason).
:class:`QAReader` turns raw records into pairs (:mod:`.checks`: type checks, NUL bytes, lone
surrogates, empty fields, unicode normalisation) and either raises on the first invalid record
or skips and counts it.

Modules: :mod:`.options` (read options, field mapping), :mod:`.detect` (format detection),
:mod:`.text` (canonical Q&A text), :mod:`.json_records` (JSON arrays and JSON lines, on the
incremental parser of :mod:`.json_stream`), :mod:`.delimited` (CSV, TSV), :mod:`.sqlite`,
:mod:`.parquet`, :mod:`.checks` (the Q&A record checks), :mod:`.spool` (standard input and
pipes) and :mod:`.reader` (:class:`QAReader`). The names below are the public surface.

Memory: txt, jsonl, csv, tsv and sqlite inputs are read one record at a time. JSON arrays are
parsed incrementally element by element; only a top-level *object* (``--records-key``) is
loaded whole.
"""

from __future__ import annotations

from gptmed.data.readers.detect import detect_format
from gptmed.data.readers.options import (
    ANSWER_FIELD_NAMES,
    FORMATS,
    QUESTION_FIELD_NAMES,
    Invalid,
    ReadOptions,
)
from gptmed.data.readers.reader import QAReader, ReadProgress, iter_records

__all__ = [
    "ANSWER_FIELD_NAMES",
    "FORMATS",
    "QUESTION_FIELD_NAMES",
    "Invalid",
    "QAReader",
    "ReadOptions",
    "ReadProgress",
    "detect_format",
    "iter_records",
]
