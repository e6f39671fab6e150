"""train_tokenizer: determinism, usable-range errors, input checks."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from conftest import make_pairs, write_corpus
from gptmed.core import ConfigError, DataError, TokenizerError
from gptmed.tokenizer import Tokenizer, train_tokenizer


def test_outputs(trained: Path) -> None:
    vocab = trained.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 600
    assert [line.split("\t")[0] for line in vocab[:5]] == ["<pad>", "<unk>", "<s>", "</s>", "\\n"]
    assert all(len(line.split("\t")) == 2 for line in vocab)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_byte_identical_across_runs(corpus: Path, tmp_path: Path, model_type: str) -> None:
    a = train_tokenizer(corpus, tmp_path / "a" / "tok", vocab_size=400, model_type=model_type)
    b = train_tokenizer(corpus, tmp_path / "b" / "other", vocab_size=400, model_type=model_type)
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    assert a.vocab_path.read_bytes() == b.vocab_path.read_bytes()
    assert a.sha256 == b.sha256
    assert Tokenizer(a.model_path).info()["model_type"] == model_type


def test_different_corpus_gives_different_model(corpus: Path, tmp_path: Path, trained: Path) -> None:
    other = write_corpus(tmp_path / "other.txt", make_pairs(400, seed=1))
    result = train_tokenizer(other, tmp_path / "tok", vocab_size=600)
    assert result.model_path.read_bytes() != trained.read_bytes()


def test_a_retrain_at_the_same_prefix_keeps_the_replaced_model(corpus: Path, tmp_path: Path) -> None:
    """Retraining tokenizer/my_tokenizer (another vocab size, as the manual's 2.2 suggests) used to
    overwrite the only tokenizer an existing checkpoint could use."""
    first = train_tokenizer(corpus, tmp_path / "my", vocab_size=600)
    old_model, old_vocab = first.model_path.read_bytes(), first.vocab_path.read_bytes()
    assert first.kept_previous is None
    again = train_tokenizer(corpus, tmp_path / "my", vocab_size=600)  # same bytes: nothing to keep
    assert again.kept_previous is None and sorted(p.name for p in tmp_path.iterdir()) == [
        "my.model",
        "my.vocab",
    ]
    second = train_tokenizer(corpus, tmp_path / "my", vocab_size=500)
    kept = tmp_path / f"my.{first.sha256[:12]}.model"
    assert second.kept_previous == kept
    assert kept.read_bytes() == old_model and kept.with_suffix(".vocab").read_bytes() == old_vocab
    assert second.model_path.read_bytes() != old_model  # the new one is in place


def _range(message: str) -> tuple[int, int | None]:
    m = re.search(r"--vocab-size in (\d+)(?:\.\.(\d+)| or more)", message)
    assert m, message
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_corpus_too_small_states_usable_range(tmp_path: Path, model_type: str) -> None:
    small = write_corpus(tmp_path / "small.txt", make_pairs(12))
    with pytest.raises(TokenizerError, match="too large for this corpus") as info:
        train_tokenizer(small, tmp_path / "t", vocab_size=8000, model_type=model_type)
    lo, hi = _range(str(info.value))
    assert hi is not None and 256 + 4 < lo <= hi < 8000
    assert not list(tmp_path.glob("t.*")), "nothing written on error"
    # The stated bounds are exact: both ends train, one past either end fails.
    for size in (lo, hi):
        assert (
            train_tokenizer(small, tmp_path / f"ok{size}", vocab_size=size, model_type=model_type).vocab_size
            == size
        )
    for size in (lo - 1, hi + 1):
        with pytest.raises(TokenizerError):
            train_tokenizer(small, tmp_path / "bad", vocab_size=size, model_type=model_type)


def test_vocab_too_small_for_byte_fallback(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"too small: byte fallback.*need \d+ pieces") as info:
        train_tokenizer(corpus, tmp_path / "t", vocab_size=100)
    lo, hi = _range(str(info.value))
    assert lo > 256 + 4 and hi is not None and hi > lo
    assert not list(tmp_path.glob("t.*"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": 1.5}, "vocab_size"),
        ({"model_type": "wordpiece"}, "model_type"),
        ({"character_coverage": 0.0}, "character_coverage"),
        ({"character_coverage": 1.5}, "character_coverage"),
    ],
)
def test_bad_arguments(corpus: Path, tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train_tokenizer(corpus, tmp_path / "t", **kwargs)  # type: ignore[arg-type]


def test_other_formats_point_at_gptmed_data_convert(tmp_path: Path) -> None:
    cases = {
        "qa.json": json.dumps([{"question": "q", "answer": "a"}]),
        "qa.jsonl": '{"question": "q", "answer": "a"}\n',
        "qa.csv": "question,answer\nq,a\n",
        "qa.txt": '[{"question": "q", "answer": "a"}]',  # JSON under a .txt name
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match="gptmed-data convert"):
            train_tokenizer(path, tmp_path / "t")
    plain = tmp_path / "notes.txt"
    plain.write_text("just some notes\nwithout records\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes.txt:1: .*gptmed-data convert"):
        train_tokenizer(plain, tmp_path / "t")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="no Q&A records"):
        train_tokenizer(path, tmp_path / "t")


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        train_tokenizer(tmp_path / "missing.txt", tmp_path / "t")


def test_gzip_input_equals_plain(corpus: Path, tmp_path: Path, trained: Path) -> None:
    gz = tmp_path / "qa.txt.gz"
    gz.write_bytes(gzip.compress(corpus.read_bytes(), mtime=0))
    result = train_tokenizer(gz, tmp_path / "tok", vocab_size=600)
    assert result.model_path.read_bytes() == trained.read_bytes()


def test_crlf_and_bom_input_equals_plain(corpus: Path, tmp_path: Path, trained: Path) -> None:
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + corpus.read_bytes().replace(b"\n", b"\r\n"))
    result = train_tokenizer(crlf, tmp_path / "tok", vocab_size=600)
    assert result.model_path.read_bytes() == trained.read_bytes()


def test_vocab_size_range_and_error_attributes(tmp_path: Path) -> None:
    from gptmed.tokenizer import VocabSizeError, vocab_size_range

    small = write_corpus(tmp_path / "small.txt", make_pairs(12))
    lo, hi = vocab_size_range(small)
    with pytest.raises(VocabSizeError) as info:
        train_tokenizer(small, tmp_path / "t", vocab_size=hi + 1)
    assert (info.value.low, info.value.high) == (lo, hi)
    assert isinstance(info.value, ValueError)
    with pytest.raises(VocabSizeError) as info:
        train_tokenizer(small, tmp_path / "t", vocab_size=lo - 1)
    assert (info.value.low, info.value.high) == (lo, hi)


def test_byte_identical_across_processes(corpus: Path, tmp_path: Path) -> None:
    """The manual's two commands, run twice in fresh processes with different hash seeds and thread
    counts: the same tokenizer, the same .npy files, the same metadata.json, byte for byte."""
    import os
    import subprocess
    import sys

    def run_pipeline(hash_seed: str, threads: str) -> dict[str, bytes]:
        work = tmp_path / "work"  # the same paths both times (metadata.json records the tokenizer's)
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": threads}
        for args in (
            ["gptmed.tokenizer.train_tokenizer", "--input", str(corpus), "--output-prefix", str(work / "tok"),
             "--vocab-size", "400"],
            ["gptmed.tokenizer.tokenize_data", "--input", str(corpus), "--tokenizer", str(work / "tok.model"),
             "--output-dir", str(work / "data"), "--max-length", "64", "--stride", "32"],
        ):  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", *args], env=env, check=True, capture_output=True, timeout=120
            )
        files = {
            p.relative_to(work).as_posix(): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()
        }
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        return files

    first, second = run_pipeline("1", "1"), run_pipeline("2", "2")
    assert {"tok.model", "tok.vocab", "data/train.npy", "data/val.npy", "data/metadata.json"} <= set(first)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
