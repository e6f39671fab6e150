"""Reading the tokenizer's input: canonical Q&A text (optionally gzip-compressed), nothing else.

Other formats (JSON, JSONL, CSV, TSV, SQLite, Parquet) are refused with an error that points at
``gptmed-data convert``, which turns them into canonical Q&A text.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path

from gptmed.core import DataError, QAPair, iter_qa_lines, read_qa_text, sha256_file

__all__ = ["convert_hint", "input_sha256", "iter_pairs", "read_pairs"]

_OTHER_FORMATS = {
    ".json": "JSON",
    ".jsonl": "JSON Lines",
    ".ndjson": "JSON Lines",
    ".csv": "CSV",
    ".tsv": "TSV",
    ".sqlite": "SQLite",
    ".sqlite3": "SQLite",
    ".db": "SQLite",
    ".parquet": "Parquet",
    ".xlsx": "Excel",
}


def convert_hint(path: str | os.PathLike[str]) -> str:
    name = Path(path).name
    stem = name.split(".")[0] or "data"
    return f"convert it to canonical Q&A text first: gptmed-data convert {name} -o {stem}.qa.txt"


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _sniff(path: Path, head: bytes) -> None:
    """Refuse input that is evidently another format (by extension or first bytes)."""
    fmt = _OTHER_FORMATS.get(_suffix(path))
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if fmt is None:
        if text.startswith((b"[", b"{")):
            fmt = "JSON"
        elif head.startswith(b"SQLite format 3\x00"):
            fmt = "SQLite"
        elif head.startswith(b"PAR1"):
            fmt = "Parquet"
        elif head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataError(
                "the file is UTF-16, not UTF-8",
                where=str(path),
                hint=f"re-encode it as UTF-8, or {convert_hint(path)} --encoding utf-16",
            )
    if fmt is not None:
        raise DataError(
            f"this looks like {fmt}, not canonical Q&A text ('Q: ...' / 'A: ...' records)",
            where=str(path),
            hint=convert_hint(path),
        )


def _read_gzip(path: Path, encoding: str) -> Iterator[QAPair]:
    count = 0
    try:
        with gzip.open(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline=None)
            for _, pair in iter_qa_lines(text, str(path)):
                count += 1
                yield pair
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not valid {encoding} after decompression ({exc.reason})",
            where=str(path),
            hint=f"convert it to UTF-8 with its encoding named: gptmed-data convert {path} -o qa.txt --encoding cp1252 "
            "(or the encoding the file has)",
        ) from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(
            f"corrupt gzip file ({exc})", where=str(path), hint="decompress it and check it"
        ) from None
    if count == 0:
        raise DataError(f"no Q&A records in {path}", hint="the file is empty or has only blank lines")


def iter_pairs(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> Iterator[QAPair]:
    """Stream the Q&A pairs of a canonical Q&A text file (``.gz`` is decompressed on the fly).

    Raises :class:`DataError` for a missing file, another format (with a ``gptmed-data convert``
    hint), bad syntax (``file:line``) or bad bytes.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("input file not found", where=str(p), hint="check the --input path")
    if p.is_dir():
        raise DataError("input is a folder, not a file", where=str(p), hint="pass a Q&A text file")
    gz = p.suffix.lower() == ".gz"
    with gzip.open(p, "rb") if gz else open(p, "rb") as fh:
        try:
            head = fh.read(64)
        except (gzip.BadGzipFile, EOFError) as exc:
            raise DataError(f"corrupt gzip file ({exc})", where=str(p)) from None
    _sniff(p, head)
    records = _read_gzip(p, encoding) if gz else read_qa_text(p, encoding=encoding)
    first = True
    try:
        for pair in records:
            first = False
            yield pair
    except DataError as exc:
        if first and exc.hint and "outside any Q&A record" in exc.message:
            # The first line is not a Q: line: most likely another format.
            raise DataError(
                exc.message, where=exc.where, hint=f"{exc.hint}; if it is another format, {convert_hint(p)}"
            ) from None
        raise


def read_pairs(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> list[QAPair]:
    """All pairs of ``path`` as a list (see :func:`iter_pairs`)."""
    return list(iter_pairs(path, encoding=encoding))


def input_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the input file as stored (compressed bytes for ``.gz``)."""
    return sha256_file(path)
