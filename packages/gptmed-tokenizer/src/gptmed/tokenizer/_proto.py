"""A minimal reader of SentencePiece ``.model`` files (a serialised ``ModelProto``).

SentencePiece's own loader accepts some damaged files (a protobuf message cut at a field boundary
still parses). This reader walks the whole message so that a truncated or garbage file is caught
before it is used, and pulls out the few trainer/normalizer facts ``inspect`` shows. It needs no
``protobuf`` package: only varints and length-delimited fields are involved.

Field numbers are those of sentencepiece's ``sentencepiece_model.proto``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelInfo", "ProtoError", "parse_model"]

_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

# TrainerSpec fields shown by ``inspect``: number -> (name, kind)
_TRAINER_FIELDS: dict[int, tuple[str, str]] = {
    3: ("model_type", "enum"),
    4: ("vocab_size", "int"),
    10: ("character_coverage", "float"),
    16: ("num_threads", "int"),
    18: ("max_sentence_length", "int"),
    25: ("split_digits", "bool"),
    35: ("byte_fallback", "bool"),
    40: ("unk_id", "int"),
    41: ("bos_id", "int"),
    42: ("eos_id", "int"),
    43: ("pad_id", "int"),
}
_NORMALIZER_FIELDS: dict[int, tuple[str, str]] = {
    1: ("name", "str"),
    3: ("add_dummy_prefix", "bool"),
    4: ("remove_extra_whitespaces", "bool"),
    5: ("escape_whitespaces", "bool"),
}


class ProtoError(ValueError):
    """The bytes are not a well-formed SentencePiece model."""


@dataclass
class ModelInfo:
    """What :func:`parse_model` found in a ``.model`` file."""

    num_pieces: int = 0  # entries of ModelProto.pieces
    trainer: dict[str, Any] = field(default_factory=dict)  # selected TrainerSpec fields that are set
    normalizer: dict[str, Any] = field(default_factory=dict)  # selected NormalizerSpec fields that are set
    has_trainer_spec: bool = False
    has_normalizer_spec: bool = False


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoError(f"truncated varint at byte {pos}")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError(f"varint too long at byte {pos}")


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field in data[start:end]; value is an int or a slice."""
    out: list[tuple[int, int, Any]] = []
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(data, pos, end)
            out.append((number, wire, value))
        elif wire == 1:
            if pos + 8 > end:
                raise ProtoError(f"truncated 64-bit field at byte {pos}")
            out.append((number, wire, data[pos : pos + 8]))
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise ProtoError(f"field {number} runs past the end ({pos + length} > {end})")
            out.append((number, wire, (pos, pos + length)))
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise ProtoError(f"truncated 32-bit field at byte {pos}")
            out.append((number, wire, data[pos : pos + 4]))
            pos += 4
        else:
            raise ProtoError(f"unknown wire type {wire} at byte {pos}")
    return out


def _select(data: bytes, span: tuple[int, int], wanted: dict[int, tuple[str, str]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for number, wire, value in _fields(data, *span):
        if number not in wanted:
            continue
        name, kind = wanted[number]
        if kind == "enum" and wire == 0:
            found[name] = _MODEL_TYPES.get(value, str(value))
        elif kind == "int" and wire == 0:
            found[name] = value - (1 << 64) if value >= 1 << 63 else value
        elif kind == "bool" and wire == 0:
            found[name] = bool(value)
        elif kind == "float" and wire == 5:
            found[name] = round(struct.unpack("<f", value)[0], 6)
        elif kind == "str" and wire == 2:
            found[name] = data[value[0] : value[1]].decode("utf-8", "replace")
    return found


def parse_model(data: bytes) -> ModelInfo:
    """Walk a serialised ModelProto; raise :class:`ProtoError` if it is not well formed."""
    if not data:
        raise ProtoError("the file is empty")
    info = ModelInfo()
    for number, wire, value in _fields(data, 0, len(data)):
        if wire != 2 or number > 5:
            raise ProtoError(f"unexpected top-level field {number} (wire type {wire})")
        if number == 1:
            # A SentencePiece: piece (1, string), score (2, float), type (3, enum). Walk it to check it.
            _fields(data, *value)
            info.num_pieces += 1
        elif number == 2:
            info.has_trainer_spec = True
            info.trainer = _select(data, value, _TRAINER_FIELDS)
        elif number == 3:
            info.has_normalizer_spec = True
            info.normalizer = _select(data, value, _NORMALIZER_FIELDS)
    if not info.num_pieces:
        raise ProtoError("no vocabulary pieces")
    return info
