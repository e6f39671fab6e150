"""``validate`` and ``stats``: what is wrong with a Q&A file, and what is in it."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptmed.core import DataError
from gptmed.data.clean import (
    LONG_ANSWER_WORDS,
    SHORT_ANSWER_WORDS,
    _digest,
    _plural,
    normalize_key,
    word_count,
)
from gptmed.data.readers import QAReader, ReadOptions, ReadProgress

__all__ = ["PERCENTILES", "LengthSummary", "StatsReport", "ValidationReport", "compute_stats", "validate"]

PERCENTILES = (10, 50, 90, 99)


@dataclass
class ValidationReport:
    """Every problem found in a file: invalid records (with place) and file-level errors."""

    path: str
    format: str = ""
    records: int = 0  # records seen
    pairs: int = 0  # valid pairs
    invalid: dict[str, int] = field(default_factory=dict)  # invalid records by reason
    problems: list[str] = field(default_factory=list)  # "where: what", the first max_problems
    fatal: str | None = None  # an error that stops reading (encoding, syntax, no records)
    cleaned: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.fatal is None and not self.invalid

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}

    def to_text(self, fatal: bool = True) -> str:
        """The report; ``fatal=False`` leaves out the error line (the CLI prints it on stderr)."""
        lines = [
            f"{self.path} ({self.format or '?'}): {_plural(self.pairs, 'valid pair')} in "
            f"{_plural(self.records, 'record')}"
        ]
        lines += [f"  {p}" for p in self.problems]
        shown = len(self.problems)
        total = sum(self.invalid.values())
        if total > shown:
            lines.append(f"  ... and {_plural(total - shown, 'more invalid record')}")
        for reason, n in sorted(self.invalid.items()):
            lines.append(f"  invalid {reason:<20} {n:>8,}")
        for reason, n in sorted(self.cleaned.items()):
            lines.append(f"  to clean {reason:<19} {n:>8,}")
        if self.fatal and fatal:
            lines.append(f"  error: {self.fatal}")
        lines.append("OK" if self.ok else "INVALID")
        return "\n".join(lines)


def validate(
    path: str | os.PathLike[str],
    *,
    max_problems: int = 50,
    progress: Callable[[ReadProgress], None] | None = None,
    **options: Any,
) -> ValidationReport:
    """Read all of ``path`` and report every invalid record (place and reason).

    ``progress`` is called now and then with a :class:`~gptmed.data.readers.ReadProgress`."""
    opts = dataclasses.replace(ReadOptions(**options), skip_invalid=True)
    report = ValidationReport(str(path))
    reader: QAReader | None = None
    try:
        reader = QAReader(Path(path), opts, keep_examples=max_problems, progress=progress)
        report.path, report.format = reader.name, reader.format
        for _ in reader:
            report.pairs += 1
    except DataError as exc:
        report.fatal = str(exc)
    if reader is None:
        return report
    report.records = reader.read
    report.invalid = dict(reader.invalid)
    report.problems = [str(e) for e in reader.examples]
    report.cleaned = dict(reader.cleaned)
    return report


@dataclass
class LengthSummary:
    """Word counts: min, mean, percentiles (nearest rank) and max."""

    min: int = 0
    mean: float = 0.0
    p10: int = 0
    p50: int = 0
    p90: int = 0
    p99: int = 0
    max: int = 0

    @classmethod
    def from_counts(cls, counts: Counter[int]) -> LengthSummary:
        n = sum(counts.values())
        if n == 0:
            return cls()
        keys = sorted(counts)
        out = cls(min=keys[0], max=keys[-1], mean=sum(k * c for k, c in counts.items()) / n)
        ranks = sorted((-(-p * n // 100), p) for p in PERCENTILES)  # nearest rank: ceil(p/100 * n)
        seen = 0
        for k in keys:
            seen += counts[k]
            while ranks and seen >= ranks[0][0]:
                setattr(out, f"p{ranks.pop(0)[1]}", k)
        return out


@dataclass
class StatsReport:
    """What is in a Q&A file, with the manual's "Data Quality Tips" thresholds."""

    path: str
    format: str
    pairs: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # records that are not pairs, by reason
    empty: int = 0  # records with an empty or whitespace-only question or answer (among invalid)
    question_words: LengthSummary = field(default_factory=LengthSummary)
    answer_words: LengthSummary = field(default_factory=LengthSummary)
    exact_duplicates: int = 0  # pairs equal to an earlier pair
    normalized_duplicates: int = (
        0  # pairs whose normalised question+answer equal an earlier one (incl. exact)
    )
    duplicate_questions: int = 0  # pairs whose normalised question appeared before (any answer)
    short_answers: int = 0  # answers under SHORT_ANSWER_WORDS words
    long_answers: int = 0  # answers over LONG_ANSWER_WORDS words
    short_threshold: int = SHORT_ANSWER_WORDS
    long_threshold: int = LONG_ANSWER_WORDS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        def row(label: str, s: LengthSummary) -> str:
            return (
                f"  {label:<16} min {s.min:>5}  p10 {s.p10:>5}  p50 {s.p50:>5}  p90 {s.p90:>5}  "
                f"p99 {s.p99:>5}  max {s.max:>6}  mean {s.mean:>7.1f}"
            )

        lines = [
            f"{self.path} ({self.format})",
            f"  pairs                  {self.pairs:>10,}",
            row("question words", self.question_words),
            row("answer words", self.answer_words),
            f"  exact duplicates       {self.exact_duplicates:>10,}",
            f"  normalised duplicates  {self.normalized_duplicates:>10,}",
            f"  repeated questions     {self.duplicate_questions:>10,}",
            f"  empty q or a           {self.empty:>10,}",
            f"  {f'answers < {self.short_threshold} words':<22} {self.short_answers:>10,}",
            f"  {f'answers > {self.long_threshold} words':<22} {self.long_answers:>10,}",
        ]
        for reason, n in sorted(self.invalid.items()):
            lines.append(f"  invalid {reason:<14} {n:>10,}")
        return "\n".join(lines)


def compute_stats(
    path: str | os.PathLike[str], *, progress: Callable[[ReadProgress], None] | None = None, **options: Any
) -> StatsReport:
    """Count pairs, length percentiles in words, duplicates, empty, short and long answers.

    Memory: one counter per distinct length and three 12-byte digests per pair (duplicates).
    The first invalid record raises :class:`DataError` (like ``convert``); with
    ``skip_invalid=True`` invalid records are counted by reason. ``progress`` is called now and
    then with a :class:`~gptmed.data.readers.ReadProgress`.
    """
    reader = QAReader(Path(path), ReadOptions(**options), keep_examples=0, progress=progress)
    report = StatsReport(reader.name, reader.format)
    qlen: Counter[int] = Counter()
    alen: Counter[int] = Counter()
    exact: set[bytes] = set()
    norm: set[bytes] = set()
    questions: set[bytes] = set()
    for pair in reader:
        report.pairs += 1
        qw, aw = word_count(pair.question), word_count(pair.answer)
        qlen[qw] += 1
        alen[aw] += 1
        if aw < SHORT_ANSWER_WORDS:
            report.short_answers += 1
        if aw > LONG_ANSWER_WORDS:
            report.long_answers += 1
        key = _digest(pair.question, pair.answer)
        if key in exact:
            report.exact_duplicates += 1
        exact.add(key)
        nq = normalize_key(pair.question)
        nkey = _digest(nq, normalize_key(pair.answer))
        if nkey in norm:
            report.normalized_duplicates += 1
        norm.add(nkey)
        qkey = _digest(nq)
        if qkey in questions:
            report.duplicate_questions += 1
        questions.add(qkey)
    report.invalid = dict(reader.invalid)
    report.empty = reader.invalid.get("empty_question", 0) + reader.invalid.get("empty_answer", 0)
    report.question_words = LengthSummary.from_counts(qlen)
    report.answer_words = LengthSummary.from_counts(alen)
    return report
