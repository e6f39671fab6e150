"""``convert``: any supported input -> canonical Q&A text (or JSONL), with a report."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gptmed.core import DataError, QAPair, atomic_open, format_pair
from gptmed.data.clean import LONG_ANSWER_WORDS, Cleaner, CleanOptions, _plural, more_words_than
from gptmed.data.readers import QAReader, ReadOptions, ReadProgress

__all__ = ["OUTPUT_FORMATS", "ConvertReport", "convert", "output_format_for", "split_options", "write_pairs"]

OUTPUT_FORMATS = ("txt", "jsonl")

_READ_FIELDS = {f.name for f in dataclasses.fields(ReadOptions)}
_CLEAN_FIELDS = {f.name for f in dataclasses.fields(CleanOptions)}


def split_options(options: dict[str, Any]) -> tuple[ReadOptions, CleanOptions]:
    """Sort keyword options into :class:`ReadOptions` and :class:`CleanOptions` (unknown -> TypeError)."""
    unknown = set(options) - _READ_FIELDS - _CLEAN_FIELDS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    read = ReadOptions(**{k: v for k, v in options.items() if k in _READ_FIELDS})
    clean = CleanOptions(**{k: v for k, v in options.items() if k in _CLEAN_FIELDS})
    return read, clean


def output_format_for(path: str | os.PathLike[str], output_format: str | None = None) -> str:
    """``jsonl`` for ``.jsonl``/``.ndjson`` outputs (or when asked), else canonical ``txt``.

    An output named like a format gptmed-data reads but does not write (``.json``, ``.csv``, ...)
    is refused rather than filled with Q&A text that no reader of that name would accept."""
    if str(path) == "-":
        raise DataError("output '-' (stdout) is not supported", hint="name an output file, e.g. -o qa.txt")
    if output_format is not None:
        if output_format not in OUTPUT_FORMATS:
            raise DataError(f"unknown output format {output_format!r}", hint="use txt or jsonl")
        return output_format
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".json", ".csv", ".tsv", ".tab", ".db", ".sqlite", ".sqlite3", ".parquet", ".gz"):
        raise DataError(
            f"cannot write {suffix} output: gptmed-data writes canonical Q&A text or JSON lines",
            where=str(path),
            hint=f"name it {p.with_suffix('.txt').name} or {p.with_suffix('.jsonl').name}, "
            "or pass --output-format txt to keep the name",
        )
    return "txt"


@dataclass
class ConvertReport:
    """What ``convert`` did: records read, written, skipped by reason, cleaned, warnings."""

    input: str
    output: str
    input_format: str
    output_format: str
    read: int = 0  # records seen in the input (valid or not)
    written: int = 0  # pairs written
    invalid: dict[str, int] = field(default_factory=dict)  # skipped by --skip-invalid, by reason
    removed: dict[str, int] = field(default_factory=dict)  # dropped by cleaning options, by reason
    cleaned: dict[str, int] = field(default_factory=dict)  # repaired fields (nul_removed)
    long_answers: int = 0  # kept answers over 500 words (the manual's "extremely long")
    lookalike_lines: int = 0  # txt: lines inside records that look like record starts (read as text)
    lookalikes: list[str] = field(default_factory=list)  # the first 20 of them, FILE:LINE
    examples: list[str] = field(default_factory=list)  # the first invalid records, "where: what"
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return sum(self.invalid.values()) + sum(self.removed.values())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["skipped"] = self.skipped
        return data

    def to_text(self) -> str:
        lines = [
            f"converted {self.input} ({self.input_format}) -> {self.output} ({self.output_format})",
            f"  records read     {self.read:>10,}",
            f"  pairs written    {self.written:>10,}",
            f"  skipped          {self.skipped:>10,}",
        ]
        for reason, n in sorted({**self.invalid, **self.removed}.items()):
            lines.append(f"    {reason:<22} {n:>8,}")
        for reason, n in sorted(self.cleaned.items()):
            lines.append(f"  cleaned: {reason:<17} {n:>10,}")
        if self.long_answers:
            lines.append(
                f"  note: {_plural(self.long_answers, 'answer')} {'has' if self.long_answers == 1 else 'have'} "
                f"more than {LONG_ANSWER_WORDS} words (kept; "
                "the tokenizer splits them into windows; drop them with --max-answer-words)"
            )
        if self.lookalike_lines:
            lines.append(
                f"  note: {_plural(self.lookalike_lines, 'line')} inside records "
                f"{'looks' if self.lookalike_lines == 1 else 'look'} like a record start "
                f"(indented, or lower-case q:/a:) and were read as text of the record above "
                f"(first: {self.lookalikes[0]}); a record starts with 'Q: ' at the start of a line"
            )
        for ex in self.examples[:5]:
            lines.append(f"  invalid: {ex}")
        if len(self.examples) > 5 or sum(self.invalid.values()) > len(self.examples[:5]):
            more = sum(self.invalid.values()) - min(5, len(self.examples))
            if more > 0:
                lines.append(
                    f"  ... and {_plural(more, 'more invalid record')} (gptmed-data validate lists them)"
                )
        lines.append(f"  time             {self.seconds:>10.2f} s")
        return "\n".join(lines)


def _format_txt(pair: QAPair) -> str:
    q, a = pair.question, pair.answer
    if "\n" in q or "\n" in a:
        return format_pair(pair)  # continuation lines may need escaping
    return f"Q: {q}\nA: {a}\n"


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def _format_jsonl(pair: QAPair) -> str:
    return _dumps({"question": pair.question, "answer": pair.answer}) + "\n"


def _write_txt(fh: IO[str], pair: QAPair, first: bool) -> None:
    if not first:
        fh.write("\n")
    fh.write(_format_txt(pair))


def _write_jsonl(fh: IO[str], pair: QAPair, first: bool) -> None:
    fh.write(json.dumps({"question": pair.question, "answer": pair.answer}, ensure_ascii=False))
    fh.write("\n")


def write_pairs(fh: IO[str], pairs: Iterable[QAPair], output_format: str, batch: int = 256) -> int:
    """Write ``pairs`` to an open text file in ``output_format``; return the count."""
    fmt: Callable[[QAPair], str] = _format_jsonl if output_format == "jsonl" else _format_txt
    sep = "" if output_format == "jsonl" else "\n"
    n = 0
    buf: list[str] = []
    for pair in pairs:
        buf.append(fmt(pair))
        n += 1
        if len(buf) >= batch:
            fh.write(("" if n == len(buf) else sep) + sep.join(buf))
            buf.clear()
    if buf:
        fh.write(("" if n == len(buf) else sep) + sep.join(buf))
    return n


def _write_batches(fh: IO[str], reader: QAReader, output_format: str, cleaner: Cleaner) -> int:
    """Write the reader's batches (no cleaning options: only long answers are counted)."""
    n = 0
    for qs, as_ in reader.iter_batches():
        if output_format == "jsonl":
            text = "".join(
                [_dumps({"question": q, "answer": a}) + "\n" for q, a in zip(qs, as_, strict=True)]
            )
        else:
            if "\n" in "".join(qs) or "\n" in "".join(as_):
                parts = [_format_txt(QAPair.from_normalized(q, a)) for q, a in zip(qs, as_, strict=True)]
            else:
                parts = list(map("Q: {}\nA: {}\n".format, qs, as_))
            text = ("\n" if n else "") + "\n".join(parts)
        fh.write(text)
        n += len(qs)
        cleaner.long_answers += sum(
            1 for a in as_ if len(a) > 2 * LONG_ANSWER_WORDS and more_words_than(a, LONG_ANSWER_WORDS)
        )
    return n


def _kept(reader: QAReader, cleaner: Cleaner) -> Iterator[QAPair]:
    for pair in reader:
        if cleaner.keep(pair):
            yield pair


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise DataError(f"{output} exists", hint="pass --overwrite to replace it")
    if output.is_dir():
        raise DataError(f"{output} is a folder", hint="name an output file")


def convert(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    output_format: str | None = None,
    overwrite: bool = False,
    progress: Callable[[ReadProgress], None] | None = None,
    **options: Any,
) -> ConvertReport:
    """Convert ``input`` (any supported format) to canonical Q&A text or JSONL at ``output``.

    ``options`` are :class:`~gptmed.data.readers.ReadOptions` and
    :class:`~gptmed.data.clean.CleanOptions` fields. The output is written through a temp file
    and renamed: on any error nothing is left at ``output``. An existing ``output`` is refused
    unless ``overwrite``. ``progress`` is called now and then with a
    :class:`~gptmed.data.readers.ReadProgress` (records and bytes read, the input's size).
    """
    t0 = time.perf_counter()
    read_opts, clean_opts = split_options(options)
    out = Path(output)
    fmt_out = output_format_for(out, output_format)
    check_output(out, overwrite)
    reader = QAReader(Path(input), read_opts, progress=progress)
    cleaner = Cleaner(clean_opts)
    report = ConvertReport(reader.name, str(out), reader.format, fmt_out)
    with atomic_open(out, "w", overwrite=overwrite) as fh:
        if clean_opts == CleanOptions():
            report.written = _write_batches(fh, reader, fmt_out, cleaner)
        else:
            report.written = write_pairs(fh, _kept(reader, cleaner), fmt_out)
        report.read = reader.read
        report.invalid = dict(reader.invalid)
        report.removed = dict(cleaner.removed)
        if report.written == 0:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted({**report.invalid, **report.removed}.items()))
            raise DataError(
                f"no Q&A records left to write from {reader.name} ({report.read} read; skipped: {reasons})",
                hint="check the field mapping and the cleaning options",
            )
    report.cleaned = dict(reader.cleaned)
    report.long_answers = cleaner.long_answers
    report.lookalikes, report.lookalike_lines = list(reader.lookalikes), reader.lookalike_lines
    report.examples = [str(e) for e in reader.examples]
    report.seconds = time.perf_counter() - t0
    return report
