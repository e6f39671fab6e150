"""tokenize_dataset: file contract, packing, masks, split, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs, write_corpus
from gptmed.core import SPECIAL_IDS, ConfigError, DataError, DatasetManifest, QAPair, TokenizerError
from gptmed.tokenizer import FILES, Tokenizer, load_split, read_pairs, token_dtype, tokenize_dataset
from gptmed.tokenizer import dataset as dataset_mod
from gptmed.tokenizer.dataset import split_pairs, windows

BOS, EOS, PAD = SPECIAL_IDS.bos, SPECIAL_IDS.eos, SPECIAL_IDS.pad


def reference_pack(
    seqs: list[tuple[list[int], list[int]]], length: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """The packing rules written plainly: greedy in order; over-long pairs get windows of their own."""
    rows: list[tuple[list[int], list[int]]] = []
    cur: tuple[list[int], list[int]] = ([], [])
    for ids, mask in seqs:
        if len(ids) > length:
            if cur[0]:
                rows.append(cur)
                cur = ([], [])
            start = 0
            while True:
                window_mask = mask[start : start + length]
                if start:  # tokens the previous window predicts, and position 0, are context only
                    cut = max(1, length - stride)
                    window_mask = [0] * cut + window_mask[cut:]
                rows.append((ids[start : start + length], window_mask))
                if start + length >= len(ids):
                    break
                start += stride
        elif len(cur[0]) + len(ids) <= length:
            cur = (cur[0] + ids, cur[1] + mask)
        else:
            rows.append(cur)
            cur = (list(ids), list(mask))
    if cur[0]:
        rows.append(cur)
    tokens = np.array([r[0] + [PAD] * (length - len(r[0])) for r in rows], dtype=np.int64)
    masks = np.array([r[1] + [0] * (length - len(r[1])) for r in rows], dtype=np.int64)
    return tokens, masks


def questions_in(tok: Tokenizer, tokens: np.ndarray) -> set[str]:
    text = tok.decode([t for row in tokens for t in [*row.tolist(), EOS]])
    return set(re.findall(r"Q: (.*?)\nA:", text))


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("long") / "qa.txt", make_pairs(120, seed=3, long_every=9))


def test_files_and_manifest(corpus: Path, trained: Path, tok: Tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    manifest = tokenize_dataset(corpus, trained, out, max_length=128, train_split=0.8, seed=7)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), "metadata.json"])
    assert DatasetManifest.load(out / "metadata.json") == manifest
    raw = json.loads((out / "metadata.json").read_text())
    assert raw["format"] == "gptmed.dataset" and raw["files"] == {
        "train": "train.npy",
        "val": "val.npy",
        "train_mask": "train.mask.npy",
        "val_mask": "val.mask.npy",
    }
    assert Path(manifest.tokenizer_path).is_absolute() and Path(manifest.tokenizer_path) == trained.resolve()
    assert manifest.tokenizer_sha256 == tok.sha256 == hashlib.sha256(trained.read_bytes()).hexdigest()
    assert manifest.input_sha256 == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert manifest.vocab_size == 600 and manifest.special_ids == SPECIAL_IDS
    assert (manifest.max_length, manifest.stride, manifest.seed, manifest.train_split) == (128, 127, 7, 0.8)
    assert manifest.train_pairs + manifest.val_pairs == 400 and manifest.val_pairs == 80
    assert manifest.dtype == "uint16" and manifest.template.name == "qa-v1"
    for split in ("train", "val"):
        tokens = np.load(out / FILES[split], mmap_mode="r")
        mask = np.load(out / FILES[f"{split}_mask"], mmap_mode="r")
        assert isinstance(tokens, np.memmap) and isinstance(mask, np.memmap)
        assert tokens.dtype == np.uint16 and mask.dtype == np.uint8
        assert tokens.ndim == 2 and tokens.shape == mask.shape and tokens.shape[1] == 128
        assert tokens.shape[0] == getattr(manifest, f"{split}_sequences") > 0
        assert int(tokens.max()) < tok.vocab_size
        assert set(np.unique(mask).tolist()) <= {0, 1}
        assert not mask[tokens == PAD].any() and not mask[tokens == BOS].any()
        assert mask[tokens == EOS].all()
        # no window starts mid-pair when every pair fits
        assert (tokens[:, 0] == BOS).all()
    tr, tr_mask = load_split(out, "train")
    assert tr.shape[0] == manifest.train_sequences and tr_mask.dtype == np.uint8


@pytest.mark.parametrize(("max_length", "stride"), [(64, 64), (64, 24), (48, 1), (200, None)])
def test_packing_matches_reference(
    long_corpus: Path, trained: Path, tok: Tokenizer, tmp_path: Path, max_length: int, stride: int | None
) -> None:
    manifest = tokenize_dataset(long_corpus, trained, tmp_path, max_length=max_length, stride=stride, seed=1)
    pairs = read_pairs(long_corpus)
    train_idx, val_idx = split_pairs([p.question for p in pairs], 0.9, 1)
    assert manifest.extra["long_pairs"] > 0
    assert manifest.extra["val_pair_indices"] == val_idx.tolist()  # recorded: which pairs are held out
    for split, index in (("train", train_idx), ("val", val_idx)):
        seqs = [tok.encode_pair(pairs[i].question, pairs[i].answer) for i in index]
        want_tokens, want_mask = reference_pack(seqs, max_length, stride or max_length - 1)
        tokens, mask = load_split(tmp_path, split)
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_array_equal(mask, want_mask)


@pytest.mark.parametrize("stride", [None, 30, 7, 1])
def test_every_answer_token_of_a_long_pair_is_a_target_exactly_once(
    trained: Path, tok: Tokenizer, tmp_path: Path, stride: int | None
) -> None:
    """Over a windowed pair, the training targets (y = row[1:] where mask[1:] is 1) are its answer
    tokens + EOS, each once: before, the token at each boundary of non-overlapping windows was never
    a target, and overlapping windows trained (and counted) the overlap twice."""
    long_answer = " ".join(f"word{i}" for i in range(80))
    corpus = write_corpus(tmp_path / "qa.txt", [QAPair("long one?", long_answer), QAPair("val?", "v.")])
    ids, pair_mask = tok.encode_pair("long one?", long_answer)
    manifest = tokenize_dataset(
        corpus, trained, tmp_path / "ds", max_length=40, stride=stride, train_split=0.5
    )
    step = 39 if stride is None else stride
    assert manifest.stride == step
    split = next(s for s in ("train", "val") if load_split(tmp_path / "ds", s)[0][0, :5].tolist() == ids[:5])
    rows, mask = load_split(tmp_path / "ds", split)
    trained_at = Counter()
    for k, start in enumerate(windows(len(ids), 40, step)):
        assert rows[k].tolist()[: min(40, len(ids) - start)] == ids[start : start + 40]
        trained_at.update(start + j for j in range(1, 40) if mask[k, j])
    answer = [i for i, m in enumerate(pair_mask) if m]
    assert sorted(trained_at) == answer and set(trained_at.values()) == {1}
    assert manifest.extra[f"{split}_answer_tokens"] == len(answer)
    assert manifest.extra["untrained_window_tokens"] == 0


def test_windows_that_do_not_overlap_count_the_boundary_tokens_nobody_predicts(
    trained: Path, tok: Tokenizer, tmp_path: Path
) -> None:
    long_answer = " ".join(f"word{i}" for i in range(80))
    corpus = write_corpus(tmp_path / "qa.txt", [QAPair("long one?", long_answer), QAPair("val?", "v.")])
    ids, _ = tok.encode_pair("long one?", long_answer)
    manifest = tokenize_dataset(corpus, trained, tmp_path / "ds", max_length=40, stride=40, train_split=0.5)
    assert manifest.extra["untrained_window_tokens"] == len(windows(len(ids), 40, 40)) - 1


def test_long_pair_windows(trained: Path, tok: Tokenizer, tmp_path: Path) -> None:
    long_answer = " ".join(f"word{i}" for i in range(80))
    pairs = [QAPair("short one?", "yes."), QAPair("long one?", long_answer), QAPair("after?", "fresh row.")]
    pairs += [QAPair(f"val question {i}?", "v.") for i in range(3)]
    corpus = write_corpus(tmp_path / "qa.txt", pairs)
    ids, _mask = tok.encode_pair("long one?", long_answer)
    assert len(ids) > 100
    tokenize_dataset(corpus, trained, tmp_path / "ds", max_length=40, stride=30, train_split=0.5, seed=0)
    train, _train_mask = load_split(tmp_path / "ds", "train")
    val, _ = load_split(tmp_path / "ds", "val")
    rows = [r.tolist() for r in np.concatenate([train, val])]
    starts = windows(len(ids), 40, 30)
    assert starts[-1] + 40 >= len(ids) > starts[-2] + 40
    found = [r for r in rows if r[: len(ids[:5])] == ids[:5]]
    assert len(found) == 1  # the first window starts at the pair's BOS
    first = rows.index(found[0])
    for k, s in enumerate(starts):
        window = ids[s : s + 40]
        assert rows[first + k][: len(window)] == window
        assert all(t == PAD for t in rows[first + k][len(window) :])
    if first + len(starts) < len(rows):
        assert rows[first + len(starts)][0] == BOS  # the next pair starts a fresh row


def test_windows_unit() -> None:
    assert windows(10, 4, 4) == [0, 4, 8]
    assert windows(10, 4, 2) == [0, 2, 4, 6]
    assert windows(11, 4, 4) == [0, 4, 8]
    assert windows(5, 4, 1) == [0, 1]
    assert windows(12, 4, 4) == [0, 4, 8]


def test_no_question_in_both_splits(trained: Path, tok: Tokenizer, tmp_path: Path) -> None:
    pairs = make_pairs(60, seed=5)
    # the same question several times, spelled with other case and spacing, with different answers
    for i in range(0, 60, 3):
        q = pairs[i].question
        pairs.append(QAPair(q.upper(), f"another answer {i}"))
        pairs.append(QAPair("  " + q.replace(" ", "   "), f"third answer {i}"))
    corpus = write_corpus(tmp_path / "qa.txt", pairs)
    for seed in range(5):
        out = tmp_path / f"ds{seed}"
        tokenize_dataset(corpus, trained, out, max_length=256, train_split=0.7, seed=seed)
        train_q = {" ".join(q.split()).casefold() for q in questions_in(tok, load_split(out, "train")[0])}
        val_q = {" ".join(q.split()).casefold() for q in questions_in(tok, load_split(out, "val")[0])}
        assert train_q and val_q and not train_q & val_q
        assert len(train_q | val_q) == 60


def test_split_is_seeded_and_sized() -> None:
    questions = [f"q{i}" for i in range(1000)]
    a = split_pairs(questions, 0.9, 42)
    b = split_pairs(questions, 0.9, 42)
    c = split_pairs(questions, 0.9, 43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert not np.array_equal(a[1], c[1])
    assert len(a[1]) == 100 and len(a[0]) == 900
    assert sorted([*a[0].tolist(), *a[1].tolist()]) == list(range(1000))
    tiny = split_pairs(["x", "y"], 0.99, 0)
    assert len(tiny[0]) == 1 and len(tiny[1]) == 1


def test_byte_identical_outputs(long_corpus: Path, trained: Path, tmp_path: Path) -> None:
    tokenize_dataset(long_corpus, trained, tmp_path / "a", max_length=64, stride=32)
    tokenize_dataset(long_corpus, trained, tmp_path / "b", max_length=64, stride=32, num_threads=1)
    for name in [*FILES.values(), "metadata.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_length": 1}, "max_length"),
        ({"train_split": 1.0}, "train_split"),
        ({"train_split": 0.0}, "train_split"),
        ({"stride": 0}, "stride"),
        ({"max_length": 16, "stride": 17}, "stride"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(
    corpus: Path, trained: Path, tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        tokenize_dataset(corpus, trained, tmp_path / "ds", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "ds").exists()


def test_bad_inputs(corpus: Path, trained: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        tokenize_dataset(corpus, tmp_path / "missing.model", tmp_path / "ds")
    with pytest.raises(DataError, match="not found"):
        tokenize_dataset(tmp_path / "missing.txt", trained, tmp_path / "ds")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        tokenize_dataset(corpus, trained, tmp_path / "file")
    js = tmp_path / "qa.json"
    js.write_text('[{"question": "q", "answer": "a"}]', encoding="utf-8")
    with pytest.raises(DataError, match="gptmed-data convert"):
        tokenize_dataset(js, trained, tmp_path / "ds")
    one = write_corpus(tmp_path / "one.txt", [QAPair("same?", "a"), QAPair("SAME?", "b")])
    with pytest.raises(DataError, match="at least 2 different questions"):
        tokenize_dataset(one, trained, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_failed_rerun_leaves_no_stale_manifest(
    corpus: Path, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    tokenize_dataset(corpus, trained, out, max_length=64)
    calls = []

    def failing_save(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        original(path, array)

    original = dataset_mod._save_npy
    monkeypatch.setattr(dataset_mod, "_save_npy", failing_save)
    with pytest.raises(OSError):
        tokenize_dataset(corpus, trained, out, max_length=32)
    assert not (out / "metadata.json").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_token_dtype() -> None:
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(8000) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_batching_does_not_change_output(
    long_corpus: Path, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize_dataset(long_corpus, trained, tmp_path / "one", max_length=64, stride=40)
    monkeypatch.setattr(dataset_mod, "_CHUNK_PAIRS", 7)
    monkeypatch.setattr(dataset_mod, "_CHUNK_CHARS", 500)
    tokenize_dataset(long_corpus, trained, tmp_path / "many", max_length=64, stride=40)
    for name in [*FILES.values(), "metadata.json"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes(), name
