"""``split``: train / val / test files by normalised question, seeded.

All pairs whose questions share :func:`~gptmed.data.clean.normalize_key` go to the same split,
so no question is in two splits. Groups of questions (not pairs) are shuffled with
``random.Random(seed)`` and cut at the requested fractions. Two passes over the input; memory is
one 12-byte digest per distinct question.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gptmed.core import DataError, atomic_open
from gptmed.data.clean import _digest, _plural, normalize_key
from gptmed.data.conversion import _write_jsonl, _write_txt, check_output, output_format_for
from gptmed.data.readers import QAReader, ReadOptions, ReadProgress

__all__ = ["SplitReport", "split"]


@dataclass
class SplitReport:
    """Pairs and distinct questions per split, and the files written."""

    input: str
    seed: int
    pairs: dict[str, int] = field(default_factory=dict)
    questions: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        lines = [f"split {self.input} (seed {self.seed}) by normalised question"]
        for name, path in self.files.items():
            pairs = "pair " if self.pairs[name] == 1 else "pairs"
            questions = "question " if self.questions[name] == 1 else "questions"
            lines.append(
                f"  {name:<6} {self.pairs[name]:>9,} {pairs} {self.questions[name]:>9,} {questions} -> {path}"
            )
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {reason:<16} {n:>8,}")
        return "\n".join(lines)


def _count(fraction: float, n: int) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(fraction * n))


def split(
    input: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    val: float = 0.1,
    test: float = 0.0,
    seed: int = 42,
    output_format: str = "txt",
    overwrite: bool = False,
    progress: Callable[[ReadProgress], None] | None = None,
    **options: Any,
) -> SplitReport:
    """Write ``out_dir/train.txt``, ``val.txt`` (if ``val`` > 0) and ``test.txt`` (if ``test`` > 0).

    ``val`` and ``test`` are fractions of the distinct questions (each non-empty split gets at
    least one). ``options`` are :class:`~gptmed.data.readers.ReadOptions` fields. ``progress`` is
    called now and then with a :class:`~gptmed.data.readers.ReadProgress` (stage ``pass 1 of 2``,
    then ``pass 2 of 2``).
    """
    for name, frac in (("val", val), ("test", test)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if val + test >= 1.0:
        raise ValueError(f"val + test must be < 1, got {val} + {test} = {val + test}")
    fmt = output_format_for(f"x.{output_format}", output_format)
    opts = ReadOptions(**options)
    ext = "jsonl" if fmt == "jsonl" else "txt"
    names = ["train"] + (["val"] if val > 0 else []) + (["test"] if test > 0 else [])
    out = Path(out_dir)
    paths = {n: out / f"{n}.{ext}" for n in names}
    for p in paths.values():
        check_output(p, overwrite)

    # Pass 1: the distinct questions, in order of first appearance.
    order: dict[bytes, None] = {}
    first = QAReader(Path(input), opts, progress=progress, stage="pass 1 of 2")
    for pair in first:
        order.setdefault(_digest(normalize_key(pair.question)), None)
    keys = list(order)
    del order
    random.Random(seed).shuffle(keys)
    n = len(keys)
    n_test, n_val = _count(test, n), _count(val, n)
    if n - n_test - n_val < 1:
        raise DataError(
            f"{_plural(n, 'distinct question')} {'is' if n == 1 else 'are'} too few for val={val} test={test}",
            where=first.name,
            hint="use smaller fractions or more data",
        )
    assign: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        assign[k] = 2 if i < n_test else 1 if i < n_test + n_val else 0
    del keys
    index = {"train": 0, "val": 1, "test": 2}

    # Pass 2: stream the pairs into their files (all renamed into place only on success).
    report = SplitReport(first.name, seed, {n_: 0 for n_ in names}, {n_: 0 for n_ in names})
    report.questions = {
        "train": n - n_test - n_val,
        **({"val": n_val} if "val" in names else {}),
        **({"test": n_test} if "test" in names else {}),
    }
    writer = _write_jsonl if fmt == "jsonl" else _write_txt
    with contextlib.ExitStack() as stack:
        handles: dict[int, tuple[str, IO[str]]] = {}
        for name in names:
            handles[index[name]] = (
                name,
                stack.enter_context(atomic_open(paths[name], "w", overwrite=overwrite)),
            )
        reader = first.reopen(stage="pass 2 of 2")  # standard input or a pipe: its copy, not read twice
        for pair in reader:
            name, fh = handles[assign[_digest(normalize_key(pair.question))]]
            writer(fh, pair, report.pairs[name] == 0)
            report.pairs[name] += 1
        report.skipped = dict(reader.invalid)
    report.files = {n_: str(p) for n_, p in paths.items()}
    return report
