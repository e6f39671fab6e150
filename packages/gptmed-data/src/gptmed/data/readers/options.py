"""What every reader shares: the read options, the invalid-record value and the field mapping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from gptmed.core import DataError

__all__ = [
    "ANSWER_FIELD_NAMES",
    "FORMATS",
    "QUESTION_FIELD_NAMES",
    "Invalid",
    "RawRecord",
    "ReadOptions",
    "resolve_fields",
    "show_names",
]

FORMATS: tuple[str, ...] = ("txt", "json", "jsonl", "csv", "tsv", "sqlite", "parquet")

#: Field names tried (case-insensitively, in this order) when no --question-field is given.
QUESTION_FIELD_NAMES: tuple[str, ...] = ("question", "q", "input", "prompt", "query", "instruction")
#: Field names tried (case-insensitively, in this order) when no --answer-field is given.
ANSWER_FIELD_NAMES: tuple[str, ...] = ("answer", "a", "output", "response", "completion", "reply")


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot become a Q&A pair."""

    where: str  # "data.csv:12", "data.json: record 3 (line 40)"
    reason: str  # short key counted in reports: "not_string", "empty_answer", "bad_json", ...
    message: str  # what is wrong, for people

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


#: What a format reader yields per record: ``(where, question, answer)`` with the fields as read
#: (not yet checked: any type), or an :class:`Invalid`.
RawRecord: TypeAlias = tuple[str, object, object] | Invalid


@dataclass(frozen=True)
class ReadOptions:
    """How to read an input file (the ``convert`` / ``validate`` / ``stats`` input options)."""

    format: str | None = None  # one of FORMATS; None = detect from extension, then content
    question_field: str | None = None  # field / column holding the question; None = auto-detect
    answer_field: str | None = None  # field / column holding the answer; None = auto-detect
    table: str | None = None  # SQLite table; None = the one table with question/answer columns
    query: str | None = None  # SQLite query (its result columns are mapped like a table's)
    records_key: str | None = None  # JSON: the key of a top-level object that holds the list
    encoding: str = "utf-8"  # text encoding of txt/json/jsonl/csv/tsv input (strict decoding)
    skip_invalid: bool = False  # skip and count invalid records instead of stopping at the first
    unicode_normalize: Literal["NFC", "NFKC"] | None = None  # None, "NFC" or "NFKC"
    max_field_chars: int = 1_000_000  # CSV/TSV: the csv module's field size limit
    delimiter: str | None = None  # CSV/TSV field separator; None = "\t" for TSV, detected for CSV

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r}", hint=f"use one of {', '.join(FORMATS)}")
        if self.unicode_normalize not in (None, "NFC", "NFKC"):
            raise DataError(
                f"unknown unicode normalisation {self.unicode_normalize!r}", hint="use NFC or NFKC"
            )
        if self.max_field_chars < 1:
            raise ValueError(f"max_field_chars must be >= 1, got {self.max_field_chars}")
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise DataError(
                f"the delimiter must be one character other than a quote or newline, got {self.delimiter!r}",
                hint="e.g. --delimiter ';' (Excel in many locales) or --delimiter '|'",
            )


def show_names(names: Sequence[str]) -> str:
    """Field, table or key names for a message: the first 30, quoted."""
    if not names:
        return "(none)"
    shown = ", ".join(repr(n) for n in names[:30])
    return shown + (f" and {len(names) - 30} more" if len(names) > 30 else "")


def _pick_field(names: Sequence[str], wanted: str | None, candidates: tuple[str, ...], role: str) -> str:
    """Resolve the question/answer field among ``names`` (exact, then case-insensitive)."""
    if wanted is not None:
        if wanted in names:
            return wanted
        folded = [n for n in names if n.casefold() == wanted.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise DataError(
            f"no {role} field {wanted!r}; the fields found are {show_names(names)}",
            hint=f"pass --{role}-field with one of them",
        )
    lowered = {n.casefold(): n for n in reversed(names)}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    raise DataError(
        f"cannot tell which field holds the {role}; the fields found are {show_names(names)}",
        hint=f"pass --{role}-field NAME (tried {', '.join(candidates)})",
    )


def resolve_fields(names: Sequence[str], opts: ReadOptions, where: str) -> tuple[str, str]:
    """The question and answer field among ``names`` (the options' names, else the usual ones)."""
    try:
        q = _pick_field(names, opts.question_field, QUESTION_FIELD_NAMES, "question")
        a = _pick_field(names, opts.answer_field, ANSWER_FIELD_NAMES, "answer")
    except DataError as exc:
        raise DataError(exc.message, where=where, hint=exc.hint) from None
    if q == a:
        raise DataError(
            f"the question and the answer field are both {q!r}",
            where=where,
            hint="pass different --question-field and --answer-field",
        )
    return q, a
