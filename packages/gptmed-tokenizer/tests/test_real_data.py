"""Real corpora: the embedded sample of gptmed-data and a slice of MedQuAD (each skipped when absent)."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import MEDQUAD
from gptmed.core import SPECIAL_IDS, write_qa_text
from gptmed.tokenizer import Tokenizer, iter_pairs, load_split, tokenize_dataset, train_tokenizer

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "packages" / "gptmed-data" / "src" / "gptmed" / "data" / "samples" / "sample_qa.txt"


def _check_dataset(out: Path, tok: Tokenizer, pairs: int) -> None:
    train, train_mask = load_split(out, "train")
    val, _ = load_split(out, "val")
    assert train.shape[0] > 0 and val.shape[0] > 0
    assert SPECIAL_IDS.unk not in np.unique(train)
    first = tok.decode(train[0])
    assert first.startswith("Q: ") and "\nA: " in first
    assert train_mask[train == SPECIAL_IDS.eos].all()


@pytest.mark.skipif(not SAMPLE.exists(), reason="gptmed-data's embedded sample is not in this checkout")
def test_embedded_sample(tmp_path: Path) -> None:
    result = train_tokenizer(SAMPLE, tmp_path / "tokenizer" / "sample", vocab_size=2000)
    tok = Tokenizer(result.model_path)
    manifest = tokenize_dataset(SAMPLE, result.model_path, tmp_path / "tokenized", max_length=512)
    assert manifest.train_pairs + manifest.val_pairs == result.pairs
    _check_dataset(tmp_path / "tokenized", tok, result.pairs)


@pytest.mark.skipif(not (MEDQUAD / "train.qa.txt.gz").exists(), reason="../shared/datasets/medquad is absent")
def test_medquad_slice(tmp_path: Path) -> None:
    pairs = list(itertools.islice(iter_pairs(MEDQUAD / "train.qa.txt.gz"), 1200))
    text = tmp_path / "medquad.qa.txt"
    write_qa_text(text, pairs)
    result = train_tokenizer(text, tmp_path / "med", vocab_size=4000)
    tok = Tokenizer(result.model_path)
    for pair in pairs[:50]:
        ids, _ = tok.encode_pair(pair.question, pair.answer)
        assert tok.decode(ids) == f"Q: {pair.question}\nA: {pair.answer}"
    manifest = tokenize_dataset(text, result.model_path, tmp_path / "ds", max_length=256, stride=192)
    assert manifest.extra["long_pairs"] > 0  # MedQuAD has answers longer than 256 tokens
    _check_dataset(tmp_path / "ds", tok, len(pairs))
    # the gzip file reads the same as its plain text
    with gzip.open(MEDQUAD / "train.qa.txt.gz", "rt", encoding="utf-8") as fh:
        assert fh.readline().startswith("Q: ")
