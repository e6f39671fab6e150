"""Fixtures of the gptmed-train tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import write_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A tiny tokenized dataset (48 train rows, 8 val rows, vocab 48, max_length 32) in tmp_path/data."""
    return write_dataset(tmp_path / "data")
