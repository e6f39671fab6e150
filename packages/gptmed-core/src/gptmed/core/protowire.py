"""The one protobuf reader of gptmed: a strict walk over the wire format (standard library only).

gptmed reads two protobuf files without their schema packages: a SentencePiece ``.model``
(gptmed-tokenizer checks it is whole and reads its trainer facts) and a bundle's ``model.onnx``
(gptmed-infer refuses tensors stored in external files). Both need only field numbers, varints
and length-delimited fields, which this module walks; the callers name the fields.

Why by hand (measured by ``bench/protobuf_readers.py``): importing protobuf costs several times
this walk's import + parse of a tokenizer, its schema-less walk copies every nested message of a
graph (~100x slower here, where values are ``memoryview`` slices), and onnx is no runtime dependency.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["FIXED32", "FIXED64", "LEN", "VARINT", "WireError", "fields"]

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5  # the wire types gptmed's files use (3 and 4, groups, are refused)


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (the message says at which byte)."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[pos]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"varint too long at byte {pos}")


def fields(message: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)`` for each field of one serialised message, in order.

    ``value`` is an ``int`` for a varint and a ``memoryview`` of the bytes otherwise (a nested
    message or string for :data:`LEN`; 4 or 8 raw little-endian bytes for :data:`FIXED32` /
    :data:`FIXED64`). Raises :class:`WireError` on a truncated field, a field number 0, or a group.
    Byte offsets in messages count from the start of ``message``.
    """
    buf = message if isinstance(message, memoryview) else memoryview(message)
    pos, end = 0, len(buf)
    while pos < end:
        key = buf[pos]
        if key < 0x80:  # one-byte key: field numbers up to 15, the common case
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
            continue
        if wire == LEN:
            size, pos = _varint(buf, pos, end)
        elif wire == FIXED64:
            size = 8
        elif wire == FIXED32:
            size = 4
        else:
            raise WireError(f"unsupported wire type {wire} at byte {pos}")
        if pos + size > end:
            raise WireError(f"field {number} runs past the end of its message ({pos + size} > {end})")
        yield number, wire, buf[pos : pos + size]
        pos += size
