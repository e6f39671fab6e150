"""The embedded sample dataset (package data): path, info, copy."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from gptmed.core import DataError, atomic_open, read_qa_text

__all__ = ["SampleInfo", "copy_sample", "sample_info", "sample_path"]

_SAMPLES = Path(__file__).resolve().parent / "samples"


def sample_path() -> Path:
    """The path of the embedded sample (canonical Q&A text, UTF-8) inside the installed package."""
    path = _SAMPLES / "sample_qa.txt"
    if not path.is_file():
        raise DataError(
            f"the embedded sample is missing: {path}", hint="reinstall gptmed-data (the wheel ships it)"
        )
    return path


@dataclass(frozen=True)
class SampleInfo:
    """Facts about the embedded sample."""

    path: str
    pairs: int
    license: str  # the license name, e.g. "CC0 1.0 Universal (public domain dedication)"
    license_path: str

    def to_text(self) -> str:
        return (
            f"embedded sample: {self.pairs} Q&A pairs\n"
            f"  path:    {self.path}\n"
            f"  license: {self.license} (see {self.license_path})"
        )


def sample_info() -> SampleInfo:
    """Count the sample's pairs and read its license name from ``samples/LICENSE.md``."""
    path = sample_path()
    lic_path = _SAMPLES / "LICENSE.md"
    license_name = "see LICENSE.md"
    if lic_path.is_file():
        text = lic_path.read_text(encoding="utf-8")
        heads = [h for h in re.findall(r"^##\s+(.+)$", text, flags=re.M) if "advice" not in h.lower()]
        if heads:
            license_name = heads[0].strip()
    return SampleInfo(str(path), sum(1 for _ in read_qa_text(path)), license_name, str(lic_path))


def copy_sample(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Copy the embedded sample to ``out`` (atomically; an existing file needs ``overwrite``)."""
    target = Path(out)
    if target.exists() and not overwrite:
        raise DataError(f"{target} exists", hint="pass --overwrite to replace it")
    with open(sample_path(), "rb") as src, atomic_open(target, "wb", overwrite=overwrite) as dst:
        shutil.copyfileobj(src, dst)
    return target
