"""Dataset files: targets under the mask, and every malformed input is an error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gptmed.core import DataError, GptmedError, ManifestError
from gptmed.training.data import IGNORE_INDEX, load_dataset
from train_helpers import VOCAB, write_dataset


def test_answer_and_all_targets(dataset: Path) -> None:
    ds = load_dataset(dataset, dataset.with_name("val.npy"), loss_on="answer")
    assert ds.vocab_size == VOCAB and len(ds.train) == 48 and ds.val is not None
    tokens = np.load(dataset).astype(np.int64)
    mask = np.load(dataset.with_name("train.mask.npy"))
    x, y = ds.train.batch(np.array([3, 1]), "answer")
    assert x.shape == (2, 31) and y.shape == (2, 31)
    assert np.array_equal(x.numpy(), tokens[[1, 3], :-1])
    expect = np.where(mask[[1, 3], 1:] == 1, tokens[[1, 3], 1:], IGNORE_INDEX)
    assert np.array_equal(y.numpy(), expect)
    # answer targets are exactly answer tokens + the EOS: never bos, never pad
    kept = y[y != IGNORE_INDEX]
    assert (kept != 2).all() and (kept != 0).all() and (kept == 3).any()
    _, y_all = ds.train.batch(np.array([1, 3]), "all")
    assert np.array_equal(y_all.numpy(), np.where(tokens[[1, 3], 1:] == 0, IGNORE_INDEX, tokens[[1, 3], 1:]))
    assert ds.train.target_count(np.array([1, 3]), "answer") == int((y != IGNORE_INDEX).sum())


def _expect(exc: type[GptmedError], match: str, data: Path, loss_on: str = "answer") -> None:
    with pytest.raises(exc, match=match):
        load_dataset(data, data.with_name("val.npy"), loss_on=loss_on)


def test_missing_files(tmp_path: Path, dataset: Path) -> None:
    _expect(DataError, "training data .*nope.npy not found", tmp_path / "nope.npy")
    dataset.with_name("metadata.json").unlink()
    _expect(ManifestError, "no metadata.json beside", dataset)


def test_missing_mask_needs_loss_on_all(dataset: Path) -> None:
    dataset.with_name("train.mask.npy").unlink()
    _expect(DataError, r"loss mask .*train.mask.npy not found.*--loss-on all", dataset)
    assert load_dataset(dataset, dataset.with_name("val.npy"), loss_on="all").train.mask is None


def test_wrong_dtype(dataset: Path) -> None:
    np.save(dataset, np.load(dataset).astype(np.float32))
    _expect(DataError, "has dtype float32; expected integer token ids", dataset)
    np.save(dataset, np.load(dataset).astype(np.int64))
    _expect(DataError, "has dtype int64 but metadata.json says uint16", dataset)


def test_wrong_shape(dataset: Path) -> None:
    arr = np.load(dataset)
    np.save(dataset, arr.reshape(-1))
    _expect(DataError, r"has shape \(1536,\); expected 2-D \(sequences, max_length=32\)", dataset)
    np.save(dataset, arr[:, :16])
    _expect(DataError, "rows have 16 tokens but metadata.json says max_length 32", dataset)
    np.save(dataset, arr[:10])
    _expect(DataError, "has 10 sequences but metadata.json says 48", dataset)
    np.save(dataset, arr)
    np.save(dataset.with_name("train.mask.npy"), np.zeros((48, 31), np.uint8))
    _expect(DataError, r"train.mask.npy has shape \(48, 31\); expected \(48, 32\)", dataset)


def test_ids_outside_the_vocab(dataset: Path) -> None:
    arr = np.load(dataset)
    arr[7, 5] = VOCAB + 3
    np.save(dataset, arr)
    _expect(
        DataError,
        rf"row 7 holds token id {VOCAB + 3} outside the tokenizer's vocabulary \[0, {VOCAB}\)",
        dataset,
    )


def test_not_an_npy_file(dataset: Path) -> None:
    dataset.write_bytes(b"garbage")
    _expect(DataError, "is not a readable .npy array", dataset)


def test_bad_metadata(dataset: Path) -> None:
    dataset.with_name("metadata.json").write_text(json.dumps({"format": "something"}))
    _expect(ManifestError, "format is 'something'", dataset)


def test_empty_val_is_skipped(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n_val=0)
    assert load_dataset(data, data.with_name("val.npy"), loss_on="answer").val is None


def test_changed_tokenizer_is_refused(dataset: Path) -> None:
    # metadata.json records sha256 'aaaa...' for tok.model: training on would give a checkpoint
    # whose ids the tokenizer at that path does not produce (a vocab mismatch is an error, not a warning)
    dataset.with_name("tok.model").write_bytes(b"a different tokenizer")
    with pytest.raises(DataError, match="changed since") as err:
        load_dataset(dataset, dataset.with_name("val.npy"), loss_on="answer")
    assert "re-tokenize" in str(err.value.hint)


def test_pair_segments_restart_at_every_bos() -> None:
    from gptmed.training.batches import pair_layout, rows_layout

    x = np.array([[7, 8, 2, 5, 6, 3, 2, 9, 3, 0], [2, 4, 3, 2, 5, 5, 5, 3, 0, 0]])
    y = np.where(x == 0, -100, 1)
    segments, positions = pair_layout(x, bos_id=2)
    assert segments.tolist() == [[0, 0, 1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]]
    assert positions.tolist() == [[0, 1, 0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]
    padded = rows_layout(x, y, bos_id=2, pad_id=0)  # trailing padding only becomes -1
    assert padded["segment_ids"].tolist() == [
        [0, 0, 1, 1, 1, 1, 2, 2, 2, -1],
        [1, 1, 1, 2, 2, 2, 2, 2, -1, -1],
    ]
    assert padded["position_ids"].tolist() == positions.tolist()
    inner = np.array([[2, 5, 0, 6, 3, 0]])  # a pad id inside the row is a token like any other
    got = rows_layout(inner, np.where(inner == 0, -100, 1), bos_id=2, pad_id=0)["segment_ids"]
    assert got.tolist() == [[1, 1, 1, 1, 1, -1]]
    one_pair = np.array([[2, 5, 6, 3], [2, 7, 7, 3]])  # one pair per row from position 0: no segments needed
    assert rows_layout(one_pair, one_pair, bos_id=2, pad_id=None)["segment_ids"] is None


def test_flat_layout_drops_padding_and_keeps_pairs_apart() -> None:
    from gptmed.training.batches import flat_layout

    x = np.array([[2, 5, 6, 2, 7, 0, 0], [9, 3, 2, 4, 0, 0, 0]])  # row 2 starts inside a pair
    y = np.where(x == 0, -100, x + 100)
    flat = flat_layout(x, y, bos_id=2, pad_id=0, bucket=4)
    assert flat["input_ids"].tolist() == [[2, 5, 6, 2, 7, 9, 3, 2, 4, 0, 0, 0]]  # 9 real tokens -> 12
    assert flat["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 3, 3, 4, 4, -1, -1, -1]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 0, 0]]
    assert flat["targets"].tolist() == [[102, 105, 106, 102, 107, 109, 103, 102, 104, -100, -100, -100]]
    covered = y.copy()
    covered[1, 5] = 7  # a real target at a padding position: that row keeps its padding as tokens
    kept = flat_layout(x, covered, bos_id=2, pad_id=0, bucket=4)
    assert kept["input_ids"].tolist() == [[2, 5, 6, 2, 7, 9, 3, 2, 4, 0, 0, 0]]  # 5 + all 7 of row 2
    assert kept["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4]]
    assert kept["targets"][0, 10] == 7


def test_val_data_of_another_tokenization_is_refused(tmp_path: Path) -> None:
    train = write_dataset(tmp_path / "a")
    other = write_dataset(tmp_path / "b", tokenizer_sha256="c" * 64)  # same shapes, other tokenizer
    with pytest.raises(
        DataError,
        match=r"b/val\.npy was tokenized differently.*tokenizer_sha256 'aaaaaaaaaaaa' vs 'cccccccccccc'",
    ):
        load_dataset(train, other.parent / "val.npy", loss_on="answer")
    same = write_dataset(tmp_path / "c")  # another folder, same tokenization: fine
    assert load_dataset(train, same.parent / "val.npy", loss_on="answer").val is not None
