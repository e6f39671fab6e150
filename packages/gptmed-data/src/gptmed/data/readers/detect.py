"""The input format of a file: from its name (``.gz`` looks at the inner suffix), else its first bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptmed.core import DataError
from gptmed.data._textio import open_binary
from gptmed.data.readers.options import FORMATS

__all__ = ["SQLITE_MAGIC", "detect_format"]

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
SQLITE_MAGIC = b"SQLite format 3\x00"


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
    found = _format_of(head)
    if found is None:
        raise DataError(
            "cannot tell the input format from the file name or its first bytes",
            where=name or str(path),
            hint=f"pass --format ({', '.join(FORMATS)})",
        )
    return found


def _format_of(head: bytes) -> str | None:
    """The format the first bytes of a file look like, or None."""
    if head.startswith(SQLITE_MAGIC):
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
    return None
