"""Cleaning: normalised keys for duplicate detection, dedupe, and answer length filters."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from gptmed.core import QAPair

__all__ = [
    "DEDUPE_MODES",
    "LONG_ANSWER_WORDS",
    "SHORT_ANSWER_WORDS",
    "CleanOptions",
    "Cleaner",
    "more_words_than",
    "normalize_key",
    "word_count",
]

DEDUPE_MODES = ("none", "exact", "normalized")
#: The manual's "Data Quality Tips": avoid very short answers (< 10 words) ...
SHORT_ANSWER_WORDS = 10
#: ... and extremely long answers (> 500 words).
LONG_ANSWER_WORDS = 500

_PUNCT_WS = re.compile(r"[\W_]+", re.UNICODE)


def word_count(text: str) -> int:
    """Words as whitespace-separated tokens."""
    return len(text.split())


def more_words_than(text: str, n: int) -> bool:
    """``word_count(text) > n``, without splitting short texts (the common case)."""
    if len(text) <= 2 * n:
        return False  # n+1 words need at least 2n+1 characters
    if text.count(" ") < n and text.isprintable():
        return False  # the only whitespace is " " (isprintable() is False for every other kind)
    return len(text.split(None, n)) > n


def normalize_key(text: str) -> str:
    """The text used to find near-duplicates: NFKC, case-folded, punctuation and runs of
    whitespace turned into single spaces, trimmed. ``"What is DNA?"`` and ``"what is  dna"``
    share a key."""
    return _PUNCT_WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _plural(n: int, noun: str) -> str:
    """``"1 pair"``, ``"2 pairs"``: a count and its noun, for reports."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.digest()


@dataclass(frozen=True)
class CleanOptions:
    """What ``convert`` removes (each removal is counted in the report by reason)."""

    dedupe: str = "none"  # "none", "exact" (same question and answer) or "normalized" (same normalize_key)
    min_answer_words: int | None = None  # drop answers with fewer words
    max_answer_words: int | None = None  # drop answers with more words
    min_answer_chars: int | None = None  # drop answers with fewer characters
    max_answer_chars: int | None = None  # drop answers with more characters

    def __post_init__(self) -> None:
        if self.dedupe not in DEDUPE_MODES:
            raise ValueError(f"dedupe must be one of {DEDUPE_MODES}, got {self.dedupe!r}")
        for name in ("min_answer_words", "max_answer_words", "min_answer_chars", "max_answer_chars"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for lo, hi in (("min_answer_words", "max_answer_words"), ("min_answer_chars", "max_answer_chars")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo}={a} is greater than {hi}={b}")


@dataclass
class Cleaner:
    """Applies :class:`CleanOptions` to a stream of pairs; ``removed`` counts drops by reason and
    ``long_answers`` counts kept answers over :data:`LONG_ANSWER_WORDS` words.

    Dedupe keeps a 12-byte digest per distinct pair (about 100 bytes each in a Python set):
    the one part of conversion whose memory grows with the input.
    """

    options: CleanOptions = field(default_factory=CleanOptions)
    removed: Counter[str] = field(default_factory=Counter)
    long_answers: int = 0
    _seen: set[bytes] = field(default_factory=set, repr=False)

    def keep(self, pair: QAPair) -> bool:
        o = self.options
        if o.min_answer_words is not None or o.max_answer_words is not None:
            words = word_count(pair.answer)
            if o.min_answer_words is not None and words < o.min_answer_words:
                self.removed["answer_too_short"] += 1
                return False
            if o.max_answer_words is not None and words > o.max_answer_words:
                self.removed["answer_too_long"] += 1
                return False
        chars = len(pair.answer)
        if o.min_answer_chars is not None and chars < o.min_answer_chars:
            self.removed["answer_too_short"] += 1
            return False
        if o.max_answer_chars is not None and chars > o.max_answer_chars:
            self.removed["answer_too_long"] += 1
            return False
        if o.dedupe != "none":
            if o.dedupe == "exact":
                key = _digest(pair.question, pair.answer)
            else:
                key = _digest(normalize_key(pair.question), normalize_key(pair.answer))
            if key in self._seen:
                self.removed[f"duplicate_{o.dedupe}"] += 1
                return False
            self._seen.add(key)
        if more_words_than(pair.answer, LONG_ANSWER_WORDS):
            self.long_answers += 1
        return True
