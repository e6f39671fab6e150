"""The Q&A record checks: a raw record's fields -> a :class:`~gptmed.core.QAPair`, or why not.

Type checks (no ``None``/number/NaN written as text), lone surrogates, NUL bytes (removed and
counted), empty fields, optional unicode normalisation, and the normalisation
:class:`~gptmed.core.QAPair` applies (CRLF/CR -> LF, strip), done once here; the pair is then
built by the trusted constructor. :func:`check_batch` checks a batch of plain records with a few
C-level scans (the fast path of ``convert``).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Literal

from gptmed.core import QAPair
from gptmed.data.readers.json_stream import Constant
from gptmed.data.readers.options import Invalid, RawRecord

__all__ = ["check_batch", "check_record", "describe"]


def describe(value: object) -> str:
    """What a value that should have been a string is, for messages: ``a number (3)``."""
    if value is None:
        return "null"
    if isinstance(value, Constant):
        return f"{value.name} (not valid JSON)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


def _lone_surrogate(where: str, q: str, a: str) -> Invalid | None:
    for name, value in (("question", q), ("answer", a)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return Invalid(
                where,
                "lone_surrogate",
                f"the {name} has a lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start}",
            )
    return None


def check_record(
    where: str,
    q: object,
    a: object,
    norm: Literal["NFC", "NFKC"] | None,
    cleaned: Counter[str],
) -> QAPair | Invalid:
    """The pair of one raw record, or why it is invalid; NUL bytes removed are counted in ``cleaned``."""
    if type(q) is not str:
        return Invalid(where, "not_string", f"the question is {describe(q)}, not a string")
    if type(a) is not str:
        return Invalid(where, "not_string", f"the answer is {describe(a)}, not a string")
    if not (q.isascii() and a.isascii()):
        bad = _lone_surrogate(where, q, a)
        if bad is not None:
            return bad
        if norm is not None:
            q, a = unicodedata.normalize(norm, q), unicodedata.normalize(norm, a)
    if "\x00" in q:
        q = q.replace("\x00", "")
        cleaned["nul_removed"] += 1
    if "\x00" in a:
        a = a.replace("\x00", "")
        cleaned["nul_removed"] += 1
    # The normalisation QAPair applies (CRLF/CR -> LF, strip), done here once.
    if "\r" in q:
        q = q.replace("\r\n", "\n").replace("\r", "\n")
    if "\r" in a:
        a = a.replace("\r\n", "\n").replace("\r", "\n")
    q, a = q.strip(), a.strip()
    if not q:
        return Invalid(where, "empty_question", "the question is empty or only whitespace")
    if not a:
        return Invalid(where, "empty_answer", "the answer is empty or only whitespace")
    return QAPair.from_normalized(q, a)


def check_batch(chunk: list[RawRecord]) -> tuple[list[str], list[str]] | None:
    """Stripped fields of ``chunk`` if every record passes :func:`check_record` unchanged but for
    surrounding whitespace (no unicode normalisation asked); None when any record needs the
    per-record path."""
    try:
        _, qs, as_ = zip(*chunk, strict=True)  # an Invalid is not iterable: TypeError
    except (TypeError, ValueError):
        return None
    if set(map(type, qs)) != {str} or set(map(type, as_)) != {str}:
        return None
    jq, ja = "\x01".join(qs), "\x01".join(as_)
    if "\x00" in jq or "\x00" in ja or "\r" in jq or "\r" in ja:
        return None
    if not (jq.isascii() and ja.isascii()):
        try:
            jq.encode("utf-8")
            ja.encode("utf-8")
        except UnicodeEncodeError:
            return None
    sq, sa = list(map(str.strip, qs)), list(map(str.strip, as_))
    if not (all(sq) and all(sa)):
        return None
    return sq, sa
