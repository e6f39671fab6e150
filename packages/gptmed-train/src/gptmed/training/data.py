"""Reading a tokenized dataset (``train.npy``, ``val.npy``, loss masks, ``metadata.json``).

The files are the ones ``gptmed.tokenizer.tokenize_data`` writes (docs/tokenizer.md, "The
tokenized dataset"): 2-D arrays (sequences, max_length) of unsigned token ids right-padded with the
pad id, uint8 masks of the same shape marking answer tokens (+ the EOS ending each answer), and a
:class:`~gptmed.core.DatasetManifest` in ``metadata.json`` beside ``train.npy``. Arrays are
memory-mapped; every shape, dtype and id range is checked before training starts.

gptmed-tokenizer's ``load_split`` reads the same files for its own tools; gptmed-train does not
depend on gptmed-tokenizer (docs/architecture.md: train depends on core and model only, so that a
training machine needs no SentencePiece), and gptmed-core is the standard library only, so the
reader cannot live in one shared place. The format's facts are defined once, by the
``DatasetManifest`` in gptmed-core; this reader checks the arrays against it, the tokenizer's is a
plain loader for its inspect tools.

A batch of rows ``r`` gives ``x = r[:, :-1]`` and ``y = r[:, 1:]``; a target is ignored (-100)
where ``mask[:, 1:] == 0`` (``loss_on="answer"``) or where ``y`` is the pad id (``loss_on="all"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gptmed.core import (
    DEFAULT_TEMPLATE,
    SPECIAL_IDS,
    DataError,
    DatasetManifest,
    ManifestError,
    sha256_file,
)

__all__ = [
    "IGNORE_INDEX",
    "Dataset",
    "TokenSplit",
    "load_dataset",
    "make_synthetic_dataset",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _tokenize_hint(folder: Path) -> str:
    return (
        "make it with: python -m gptmed.tokenizer.tokenize_data --input QA.txt --tokenizer TOK.model "
        f"--output-dir {folder}"
    )


@dataclass
class TokenSplit:
    """One split: the token rows and (optionally) their loss mask, both (N, L) memory maps."""

    name: str  # "train" or "val"
    path: Path
    tokens: np.ndarray  # (N, L) unsigned ids
    mask: np.ndarray | None  # (N, L) uint8, 1 = answer token / answer-ending EOS
    pad_id: int = SPECIAL_IDS.pad

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def _targets(self, rows: np.ndarray, mask_rows: np.ndarray | None, loss_on: str) -> np.ndarray:
        y = rows[:, 1:].astype(np.int64)  # (B, L-1)
        if loss_on == "answer":
            assert mask_rows is not None
            y[mask_rows[:, 1:] == 0] = IGNORE_INDEX
        else:
            y[rows[:, 1:] == self.pad_id] = IGNORE_INDEX
        return y

    def arrays(self, indices: np.ndarray, loss_on: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` each (B, L-1) int64 numpy for the rows ``indices``; ignored targets are -100."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))  # sorted: sequential memmap reads, same loss
        rows = np.asarray(self.tokens[idx])
        mask_rows = np.asarray(self.mask[idx]) if (self.mask is not None and loss_on == "answer") else None
        return rows[:, :-1].astype(np.int64), self._targets(rows, mask_rows, loss_on)

    def batch(self, indices: np.ndarray, loss_on: str) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`arrays` as torch tensors."""
        x, y = self.arrays(indices, loss_on)
        return torch.from_numpy(x), torch.from_numpy(y)

    def target_count(self, indices: np.ndarray, loss_on: str) -> int:
        """How many targets the rows ``indices`` contribute to the loss."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        if loss_on == "answer":
            assert self.mask is not None
            return int(np.count_nonzero(np.asarray(self.mask[idx])[:, 1:]))
        return int(np.count_nonzero(np.asarray(self.tokens[idx])[:, 1:] != self.pad_id))


@dataclass
class Dataset:
    """The train split, the val split (None when empty) and the facts of ``metadata.json``."""

    manifest: DatasetManifest
    folder: Path  # absolute folder of train.npy (recorded in checkpoints)
    train: TokenSplit
    val: TokenSplit | None
    fingerprint: str  # sha256 over the data's identity (manifest facts + train arrays)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest.vocab_size)

    @property
    def max_length(self) -> int:
        return int(self.manifest.max_length)


def _load_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{what} {path} not found", hint=_tokenize_hint(path.parent))
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable .npy array ({exc})", hint=_tokenize_hint(path.parent)
        ) from None
    if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load of .npz
        raise DataError(f"{path} is not a .npy array", hint=_tokenize_hint(path.parent))
    return arr


def _check_tokens(arr: np.ndarray, path: Path, manifest: DatasetManifest, expected_rows: int | None) -> None:
    L = manifest.max_length
    if arr.ndim != 2:
        raise DataError(
            f"{path} has shape {tuple(arr.shape)}; expected 2-D (sequences, max_length={L})",
            hint=_tokenize_hint(path.parent),
        )
    if arr.shape[1] != L:
        raise DataError(
            f"{path} rows have {arr.shape[1]} tokens but metadata.json says max_length {L}",
            hint="re-tokenize the data; the .npy files and metadata.json must come from one run",
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"{path} has dtype {arr.dtype}; expected integer token ids ({manifest.dtype} per metadata.json)",
            hint=_tokenize_hint(path.parent),
        )
    if manifest.dtype and np.dtype(arr.dtype) != np.dtype(manifest.dtype):
        raise DataError(
            f"{path} has dtype {arr.dtype} but metadata.json says {manifest.dtype}",
            hint="re-tokenize the data; the .npy files and metadata.json must come from one run",
        )
    if expected_rows is not None and arr.shape[0] != expected_rows:
        raise DataError(
            f"{path} has {arr.shape[0]} sequences but metadata.json says {expected_rows}",
            hint="re-tokenize the data; the .npy files and metadata.json must come from one run",
        )
    if arr.shape[1] < 2 and arr.shape[0]:
        raise DataError(f"{path}: max_length {arr.shape[1]} leaves no next-token target; need >= 2")
    step = max(1, (1 << 24) // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], step):
        chunk = np.asarray(arr[start : start + step])
        if chunk.size == 0:
            continue
        lo, hi = int(chunk.min()), int(chunk.max())
        if lo < 0 or hi >= manifest.vocab_size:
            bad = start + int(np.argwhere((chunk < 0) | (chunk >= manifest.vocab_size))[0][0])
            raise DataError(
                f"{path} row {bad} holds token id {hi if hi >= manifest.vocab_size else lo} outside the "
                f"tokenizer's vocabulary [0, {manifest.vocab_size}) (metadata.json vocab_size)",
                hint="the data was tokenized with another tokenizer; re-tokenize it",
            )


def _check_mask(mask: np.ndarray, path: Path, shape: tuple[int, ...]) -> None:
    if tuple(mask.shape) != tuple(shape):
        raise DataError(f"{path} has shape {tuple(mask.shape)}; expected {tuple(shape)} like its token file")
    if mask.dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise DataError(
            f"{path} has dtype {mask.dtype}; expected uint8 0/1 loss mask", hint=_tokenize_hint(path.parent)
        )
    if mask.size and int(np.asarray(mask).max()) > 1:
        raise DataError(
            f"{path} holds values other than 0 and 1; expected a 0/1 loss mask",
            hint=_tokenize_hint(path.parent),
        )


def _mask_path(path: Path, manifest: DatasetManifest, role: str) -> Path:
    named = manifest.files.get(role)
    if named and manifest.files.get(role.replace("_mask", "")) == path.name:
        return path.with_name(named)
    return path.with_name(f"{path.stem}.mask.npy")


def _split(
    path: Path, role: str, manifest: DatasetManifest, expected_rows: int | None, loss_on: str
) -> TokenSplit:
    tokens = _load_array(path, f"{role} data")
    _check_tokens(tokens, path, manifest, expected_rows)
    mpath = _mask_path(path, manifest, f"{role}_mask")
    mask = None
    if mpath.is_file():
        mask = _load_array(mpath, f"{role} loss mask")
        _check_mask(mask, mpath, tokens.shape)
    elif loss_on == "answer" and len(tokens):
        raise DataError(
            f"loss mask {mpath} not found (needed for answer-only loss)",
            hint="re-tokenize with gptmed-tokenizer (it writes the masks) or pass --loss-on all",
        )
    return TokenSplit(role, path, tokens, mask, pad_id=manifest.special_ids.pad)


def load_dataset(
    train_path: str | os.PathLike[str], val_path: str | os.PathLike[str], *, loss_on: str
) -> Dataset:
    """Open and check the dataset; raises :class:`DataError` / :class:`ManifestError` naming the file."""
    train_p = Path(train_path).expanduser()
    val_p = Path(val_path).expanduser()
    if not train_p.is_file():
        raise DataError(f"training data {train_p} not found", hint=_tokenize_hint(train_p.parent))
    meta = train_p.parent / "metadata.json"
    if not meta.is_file():
        raise ManifestError(
            f"no metadata.json beside {train_p}",
            hint="tokenize with python -m gptmed.tokenizer.tokenize_data (it writes metadata.json with the vocab size)",
        )
    manifest = DatasetManifest.load(meta)
    tok = Path(manifest.tokenizer_path) if manifest.tokenizer_path else None
    if tok is not None and tok.is_file() and manifest.tokenizer_sha256:
        actual = sha256_file(tok)
        if actual != manifest.tokenizer_sha256:
            raise DataError(
                f"{tok} changed since {train_p.parent} was tokenized (sha256 {actual[:12]}..., "
                f"metadata.json says {manifest.tokenizer_sha256[:12]}...): the model would learn ids "
                "that this tokenizer does not produce, and gptmed-generate refuses such a checkpoint",
                where=str(meta),
                hint="re-tokenize the data with the current tokenizer, or restore the tokenizer it was made with",
            )
    same_folder = val_p.parent.resolve() == train_p.parent.resolve()
    if not same_folder:
        _check_same_tokenization(manifest, meta, val_p)
    train = _split(
        train_p,
        "train",
        manifest,
        manifest.train_sequences if manifest.files.get("train", train_p.name) == train_p.name else None,
        loss_on,
    )
    val_rows = (
        manifest.val_sequences
        if same_folder and manifest.files.get("val", val_p.name) == val_p.name
        else None
    )
    val: TokenSplit | None = _split(val_p, "val", manifest, val_rows, loss_on)
    if loss_on == "answer" and train.mask is not None and not np.asarray(train.mask).any():
        raise DataError(
            f"{train_p}: the loss mask marks no answer tokens",
            hint="re-tokenize with gptmed-tokenizer, or pass --loss-on all",
        )
    if val is not None and len(val) == 0:
        log.warning("%s has no sequences: validation is skipped", val_p)
        val = None
    return Dataset(manifest, train_p.parent.resolve(), train, val, _fingerprint(manifest, train))


def _check_same_tokenization(manifest: DatasetManifest, train_meta: Path, val_p: Path) -> None:
    """A val file from another folder must come from the same tokenizer and settings: its loss
    and the best-checkpoint choice mean nothing otherwise."""
    val_meta = val_p.parent / "metadata.json"
    if not val_meta.is_file():
        return  # rows are still checked against the train manifest (length, dtype, id range)
    other = DatasetManifest.load(val_meta)
    diffs = [
        f"{name} {mine!r} vs {theirs!r}"
        for name, mine, theirs in (
            ("tokenizer_sha256", manifest.tokenizer_sha256[:12], other.tokenizer_sha256[:12]),
            ("vocab_size", manifest.vocab_size, other.vocab_size),
            ("max_length", manifest.max_length, other.max_length),
        )
        if mine != theirs
    ]
    if diffs:
        raise DataError(
            f"{val_p} was tokenized differently from the training data ({'; '.join(diffs)}; "
            f"{train_meta} vs {val_meta})",
            hint="pass the val.npy written beside train.npy by the same tokenize_data run",
        )


def _fingerprint(manifest: DatasetManifest, train: TokenSplit) -> str:
    facts = {
        "input_sha256": manifest.input_sha256,
        "tokenizer_sha256": manifest.tokenizer_sha256,
        "vocab_size": manifest.vocab_size,
        "max_length": manifest.max_length,
        "stride": manifest.stride,
        "seed": manifest.seed,
        "train_split": manifest.train_split,
        "train_sequences": len(train),
        "train_sha256": sha256_file(train.path),
        "train_mask_sha256": sha256_file(_mask_path(train.path, manifest, "train_mask"))
        if train.mask is not None
        else "",
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
def make_synthetic_dataset(
    folder: str | os.PathLike[str],
    *,
    n_train: int = 192,
    n_val: int = 32,
    vocab_size: int = 96,
    max_length: int = 64,
    seed: int = 0,
) -> Path:
    """Write a small learnable dataset (no tokenizer needed) and return the path of its train.npy.

    Each pair is ``bos, question ids, answer ids, eos``; the answer is the question reversed, so a
    model can learn it. Used by ``--quick-test`` when no tokenized data exists.
    """
    rng = np.random.default_rng(seed)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sp = SPECIAL_IDS
    first = 4  # ids 0..3 are pad, unk, bos, eos

    def rows_for(n: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.zeros((n, max_length), dtype=np.uint16)
        mask = np.zeros((n, max_length), dtype=np.uint8)
        for r in range(n):
            pos = 0
            while True:
                q = rng.integers(first, vocab_size, size=int(rng.integers(3, 8)))
                pair = [sp.bos, *q.tolist(), *q[::-1].tolist(), sp.eos]
                if pos + len(pair) > max_length:
                    break
                tokens[r, pos : pos + len(pair)] = pair
                a0 = pos + 1 + len(q)
                mask[r, a0 : pos + len(pair)] = 1
                pos += len(pair)
        return tokens, mask

    train, train_mask = rows_for(n_train)
    val, val_mask = rows_for(n_val)
    for name, arr in (("train", train), ("train.mask", train_mask), ("val", val), ("val.mask", val_mask)):
        np.save(out / f"{name}.npy", arr)
    manifest = DatasetManifest(
        tokenizer_sha256="",
        vocab_size=vocab_size,
        max_length=max_length,
        stride=max_length - 1,
        train_sequences=n_train,
        val_sequences=n_val,
        train_pairs=0,
        val_pairs=0,
        input_sha256="synthetic-" + str(seed),
        seed=seed,
        train_split=n_train / (n_train + n_val),
        dtype="uint16",
        special_ids=SPECIAL_IDS,
        template=DEFAULT_TEMPLATE,
        files={
            "train": "train.npy",
            "val": "val.npy",
            "train_mask": "train.mask.npy",
            "val_mask": "val.mask.npy",
        },
        extra={"synthetic": True, "answer": "the question's ids reversed"},
    )
    manifest.save(out / "metadata.json")
    return out / "train.npy"
