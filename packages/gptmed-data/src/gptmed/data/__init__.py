"""gptmed-data: Q&A data in any common format -> gptmed's canonical Q&A text.

Convert (txt, JSON, JSONL, CSV, TSV, SQLite; Parquet with the ``parquet`` extra), validate,
clean, count, split, and generate synthetic fact sets. Every reader streams except the
top-level-object JSON form.

Names are imported lazily (PEP 562), so ``gptmed-data --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptmed.data.clean import Cleaner, CleanOptions, normalize_key, word_count
    from gptmed.data.conversion import ConvertReport, convert
    from gptmed.data.readers import (
        FORMATS,
        Invalid,
        QAReader,
        ReadOptions,
        ReadProgress,
        detect_format,
        iter_records,
    )
    from gptmed.data.sample import SampleInfo, copy_sample, sample_info, sample_path
    from gptmed.data.splitting import SplitReport, split
    from gptmed.data.stats import LengthSummary, StatsReport, ValidationReport, compute_stats, validate
    from gptmed.data.synthetic import Fact, SynthSet, synth

_EXPORTS = {
    "gptmed.data.clean": ("CleanOptions", "Cleaner", "normalize_key", "word_count"),
    "gptmed.data.conversion": ("ConvertReport", "convert"),
    "gptmed.data.readers": (
        "FORMATS",
        "Invalid",
        "QAReader",
        "ReadOptions",
        "ReadProgress",
        "detect_format",
        "iter_records",
    ),
    "gptmed.data.sample": ("SampleInfo", "copy_sample", "sample_info", "sample_path"),
    "gptmed.data.splitting": ("SplitReport", "split"),
    "gptmed.data.stats": ("LengthSummary", "StatsReport", "ValidationReport", "compute_stats", "validate"),
    "gptmed.data.synthetic": ("Fact", "SynthSet", "synth"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "FORMATS",
    "CleanOptions",
    "Cleaner",
    "ConvertReport",
    "Fact",
    "Invalid",
    "LengthSummary",
    "QAReader",
    "ReadOptions",
    "ReadProgress",
    "SampleInfo",
    "SplitReport",
    "StatsReport",
    "SynthSet",
    "ValidationReport",
    "__version__",
    "compute_stats",
    "convert",
    "copy_sample",
    "detect_format",
    "iter_records",
    "normalize_key",
    "sample_info",
    "sample_path",
    "split",
    "synth",
    "validate",
    "word_count",
]
assert set(__all__) == {*_WHERE, "__version__"}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from gptmed.core import installed_version

        value: Any = installed_version("gptmed-data")
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'gptmed.data' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
