"""What gptmed reads of a SentencePiece ``.model`` file (a serialised ``ModelProto``).

SentencePiece's own loader accepts some damaged files (a protobuf message cut at a field boundary
still parses). :func:`parse_model` walks the whole message so that a truncated or garbage file is
caught before it is used, and pulls out the few trainer/normalizer facts ``inspect`` shows.

By hand, with gptmed-core's wire-format walk: importing protobuf for sentencepiece's
``sentencepiece_model_pb2`` costs several times this walk's import + parse of an 8000-piece model and
would add a dependency (``bench/protobuf_readers.py``).

Field numbers are those of sentencepiece's ``sentencepiece_model.proto``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from gptmed.core.protowire import FIXED32, LEN, VARINT, WireError, fields

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


def _select(message: memoryview, wanted: dict[int, tuple[str, str]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for number, wire, value in fields(message):
        if number not in wanted:
            continue
        name, kind = wanted[number]
        if isinstance(value, int):
            if kind == "enum" and wire == VARINT:
                found[name] = _MODEL_TYPES.get(value, str(value))
            elif kind == "int" and wire == VARINT:
                found[name] = value - (1 << 64) if value >= 1 << 63 else value
            elif kind == "bool" and wire == VARINT:
                found[name] = bool(value)
        elif kind == "float" and wire == FIXED32:
            found[name] = round(struct.unpack("<f", value)[0], 6)
        elif kind == "str" and wire == LEN:
            found[name] = bytes(value).decode("utf-8", "replace")
    return found


def parse_model(data: bytes) -> ModelInfo:
    """Walk a serialised ModelProto; raise :class:`ProtoError` if it is not well formed."""
    if not data:
        raise ProtoError("the file is empty")
    info = ModelInfo()
    try:
        for number, wire, value in fields(data):
            if wire != LEN or number > 5 or isinstance(value, int):
                raise ProtoError(f"unexpected top-level field {number} (wire type {wire})")
            if number == 1:
                # A SentencePiece: piece (1, string), score (2, float), type (3, enum). Walk it to check it.
                for _ in fields(value):
                    pass
                info.num_pieces += 1
            elif number == 2:
                info.has_trainer_spec = True
                info.trainer = _select(value, _TRAINER_FIELDS)
            elif number == 3:
                info.has_normalizer_spec = True
                info.normalizer = _select(value, _NORMALIZER_FIELDS)
    except WireError as exc:
        raise ProtoError(str(exc)) from None
    if not info.num_pieces:
        raise ProtoError("no vocabulary pieces")
    return info
