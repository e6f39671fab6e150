"""Shared fixtures: a small generated Q&A corpus and a tokenizer trained on it once per session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from gptmed.core import QAPair, write_qa_text
from gptmed.tokenizer import Tokenizer, train_tokenizer

TOPICS = ["fever", "asthma", "diabetes", "migraine", "anemia", "gout", "flu", "eczema", "measles", "rickets"]
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "with",
    "as",
    "on",
    "be",
    "by",
    "are",
    "this",
    "or",
    "from",
    "at",
    "which",
    "can",
    "may",
    "cause",
    "treatment",
    "symptoms",
    "doctor",
    "blood",
    "pain",
    "patients",
    "disease",
    "chronic",
    "acute",
    "dose",
    "mg",
    "daily",
    "risk",
    "children",
    "adults",
    "test",
]
MEDQUAD = Path(__file__).resolve().parents[3] / ".." / "shared" / "datasets" / "medquad"


def make_pairs(n: int, seed: int = 0, long_every: int = 0) -> list[QAPair]:
    """``n`` varied pairs (digits, punctuation, multi-line answers, some non-ASCII); questions are unique."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        q = f"What is {topic} number {i}?"
        words = rng.choices(WORDS, k=rng.randint(5, 30))
        a = " ".join(words).capitalize() + f". Take {rng.randint(1, 999)} mg of {topic}-{i % 7}."
        if i % 5 == 0:
            a += "\nSecond line:\tindented, café, naïve."
        if i % 11 == 0:
            a += "\n\nAfter a blank line: 熱 and 🙂."
        if long_every and i % long_every == 0:
            a += " " + " ".join(rng.choices(WORDS, k=400))
        pairs.append(QAPair(q, a))
    return pairs


def write_corpus(path: Path, pairs: list[QAPair]) -> Path:
    write_qa_text(path, pairs, overwrite=True)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "qa.txt", make_pairs(400))


@pytest.fixture(scope="session")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .model of a 600-piece BPE tokenizer trained on ``corpus``."""
    result = train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "tok", vocab_size=600)
    return result.model_path


@pytest.fixture(scope="session")
def tok(trained: Path) -> Tokenizer:
    return Tokenizer(trained)
