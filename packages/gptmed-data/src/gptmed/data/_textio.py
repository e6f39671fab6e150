"""Opening input files as text: gzip, BOM handling, UTF-16 sniffing, decode errors with offsets.

Decoding runs in C (``io.TextIOWrapper``, strict errors). When it fails, the file is scanned
again in binary to name the line and byte offset of the first bad byte; bytes are never dropped
silently (no ``errors="ignore"``).
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from gptmed.core import DataError, utf16_codec

__all__ = ["ByteMeter", "decode_error", "open_binary", "open_text"]

_ENCODING_HINT = 'pass --encoding (e.g. --encoding cp1252 for Windows/Excel "ANSI" files, latin-1, utf-16), or convert the file to UTF-8'


_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class _GzipFile(gzip.GzipFile):
    """A gzip reader whose decompression errors are a :class:`DataError` naming the file.

    gzip raises ``EOFError`` for a truncated file, which click reports as a bare "Aborted!", and
    ``BadGzipFile`` without the file's name."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(path, "rb")
        self._source = name

    def _error(self, exc: Exception) -> DataError:
        hint = "decompress it and check it (gzip -t)"
        if isinstance(exc, gzip.BadGzipFile) and str(exc).startswith("Not a gzipped file"):
            hint += ", or drop the .gz from the name of a file that is not compressed"
        return DataError(f"corrupt or truncated gzip file ({exc})", where=self._source, hint=hint)

    def _guarded(self, call: Callable[..., bytes], *args: Any) -> bytes:
        try:
            return call(*args)
        except _GZIP_ERRORS as exc:
            raise self._error(exc) from None

    # every way TextIOWrapper, the csv and json readers and peek-based sniffing pull bytes
    def read(self, size: int | None = -1) -> bytes:
        return self._guarded(super().read, size)

    def read1(self, size: int = -1) -> bytes:
        return self._guarded(super().read1, size)

    def peek(self, n: int = 0) -> bytes:
        return self._guarded(super().peek, n)

    def readline(self, size: int | None = -1) -> bytes:
        return self._guarded(super().readline, size)

    def compressed_position(self) -> int:
        """Bytes of the compressed file read so far."""
        return self.myfileobj.tell() if self.myfileobj is not None else 0


class ByteMeter:
    """How far a reader has got into the file it opened with :func:`open_text`: bytes of the file
    on disk (compressed bytes of a ``.gz``), for progress bars. The last position stays after close."""

    def __init__(self) -> None:
        self._raw: IO[bytes] | None = None
        self._last = 0

    def watch(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def position(self) -> int:
        raw = self._raw
        if raw is not None and not raw.closed:
            self._last = raw.compressed_position() if isinstance(raw, _GzipFile) else raw.tell()
        return self._last


def open_binary(path: str | os.PathLike[str], name: str | None = None) -> IO[bytes]:
    """Open ``path`` for binary reading; ``.gz`` files are decompressed on the fly (a corrupt or
    truncated one raises :class:`DataError` naming ``name``, by default ``path``)."""
    p = Path(path)
    if p.suffix.lower() == ".gz":
        return cast(IO[bytes], _GzipFile(p, name or str(p)))
    return open(p, "rb")


def _codec_name(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(
            f"unknown encoding {encoding!r}", hint="pass a Python codec name such as utf-8, latin-1, utf-16"
        ) from None


def _sniff(raw: IO[bytes], source: str, codec: str) -> None:
    """Refuse UTF-16/32 input read as UTF-8 with a precise hint (the head is peeked, not consumed)."""
    if codec != "utf-8":
        return
    head = raw.peek(4096)[:4096] if hasattr(raw, "peek") else b""  # BufferedReader and GzipFile peek
    utf16 = utf16_codec(head)
    if utf16 == "utf-16":
        bom = "FF FE" if head.startswith(codecs.BOM_UTF16_LE) else "FE FF"
        raise DataError(
            f"not valid UTF-8: the file starts with a UTF-16 byte-order mark ({bom}) at byte offset 0",
            where=f"{source}:1",
            hint="pass --encoding utf-16",
        )
    if utf16 is not None:
        first = head.index(b"\x00")
        raise DataError(
            f"not valid UTF-8 text: NUL bytes at every other position from byte offset {first} "
            "(UTF-16 without a byte-order mark?)",
            where=f"{source}:1",
            hint=f"pass --encoding {utf16}",
        )


def open_text(
    path: str | os.PathLike[str],
    encoding: str = "utf-8",
    newline: str | None = None,
    name: str | None = None,
    meter: ByteMeter | None = None,
) -> IO[str]:
    """Open ``path`` as text with strict decoding; a UTF-8 BOM is stripped.

    ``newline=None`` turns CRLF and CR into LF (universal newlines); ``newline=""`` keeps line
    endings for the csv module. Decoding errors surface as ``UnicodeDecodeError`` while
    iterating; :func:`decode_error` turns one into a :class:`DataError` with line and offset.
    Errors name the file ``name`` (by default ``path``); ``meter`` follows how far it is read.
    """
    codec = _codec_name(encoding)
    raw = open_binary(path, name)
    if meter is not None:
        meter.watch(raw)
    try:
        _sniff(raw, name or str(path), codec)
    except BaseException:
        raw.close()
        raise
    text_codec = "utf-8-sig" if codec == "utf-8" else encoding
    return io.TextIOWrapper(raw, encoding=text_codec, errors="strict", newline=newline)


def decode_error(path: str | os.PathLike[str], encoding: str, name: str | None = None) -> DataError:
    """Locate the first byte of ``path`` that is not valid ``encoding``: line and byte offset."""
    source = name or str(path)
    codec = _codec_name(encoding)
    decoder = codecs.getincrementaldecoder("utf-8-sig" if codec == "utf-8" else encoding)(errors="strict")
    offset = 0
    line = 1
    prev_cr = False
    with open_binary(path, source) as fh:
        while True:
            chunk = fh.read(1 << 16)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                # ``exc.start`` indexes the bytes handed to this call; pending bytes of an
                # incomplete sequence from the previous chunk can make it negative.
                bad = max(exc.start, 0)
                before = chunk[:bad]
                line += _count_lines(before, prev_cr)
                value = exc.object[exc.start] if 0 <= exc.start < len(exc.object) else chunk[bad]
                return DataError(
                    f"not valid {encoding}: byte 0x{value:02x} at byte offset {offset + bad}",
                    where=f"{source}:{line}",
                    hint=_ENCODING_HINT,
                )
            if not chunk:
                break
            line += _count_lines(chunk, prev_cr)
            prev_cr = chunk.endswith(b"\r")
            offset += len(chunk)
    return DataError(f"not valid {encoding}", where=source, hint=_ENCODING_HINT)  # pragma: no cover


def _count_lines(data: bytes, prev_cr: bool) -> int:
    """Line breaks in ``data`` (LF, CRLF or lone CR), for error positions."""
    n = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    if prev_cr and data.startswith(b"\n"):
        n -= 1
    return n
