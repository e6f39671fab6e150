"""gptmed-core's protobuf wire-format walk (the one hand-written protobuf reader of gptmed)."""

from __future__ import annotations

import struct

import pytest
from gptmed.core.protowire import FIXED32, FIXED64, LEN, VARINT, WireError, fields


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 values are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == LEN else payload)


NESTED = _field(1, LEN, "pièce".encode()) + _field(2, FIXED32, struct.pack("<f", 0.5))
MESSAGE = (
    _field(1, LEN, NESTED)
    + _field(4, VARINT, _varint(8000))
    + _field(40, VARINT, _varint(-1))  # a two-byte key and a ten-byte varint
    + _field(3, FIXED64, struct.pack("<d", 2.25))
    + _field(1000, LEN, b"")
)


def _plain(message: bytes) -> list[tuple[int, int, object]]:
    return [(n, w, v if isinstance(v, int) else bytes(v)) for n, w, v in fields(message)]


def test_walks_every_wire_type_gptmed_reads() -> None:
    assert _plain(MESSAGE) == [
        (1, LEN, NESTED),
        (4, VARINT, 8000),
        (40, VARINT, (1 << 64) - 1),
        (3, FIXED64, struct.pack("<d", 2.25)),
        (1000, LEN, b""),
    ]
    nested = next(v for _, _, v in fields(MESSAGE))
    assert isinstance(nested, memoryview)
    assert _plain(nested) == [(1, LEN, "pièce".encode()), (2, FIXED32, struct.pack("<f", 0.5))]


def test_values_are_views_of_the_message_not_copies() -> None:
    data = bytearray(MESSAGE)
    nested = next(v for _, _, v in fields(data))
    assert isinstance(nested, memoryview) and nested.obj is data


def test_every_cut_inside_a_field_is_an_error_and_every_cut_between_fields_a_prefix() -> None:
    whole = _plain(MESSAGE)
    ends = {0}
    pos = 0
    for n, w, v in fields(MESSAGE):
        pos += len(_field(n, w, _varint(v) if isinstance(v, int) else bytes(v)))
        ends.add(pos)
    for cut in range(len(MESSAGE)):
        if cut in ends:
            assert _plain(MESSAGE[:cut]) == whole[: sorted(ends).index(cut)]
        else:
            with pytest.raises(WireError):
                _plain(MESSAGE[:cut])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01", "field number 0"),
        (b"\x0b\x0c", "unsupported wire type 3"),  # a group
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint too long"),
        (b"\x0a\x05abc", "runs past the end"),
        (b"\x08\x80", "truncated varint"),
    ],
)
def test_malformed_messages_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        _plain(data)
    assert issubclass(WireError, ValueError)
