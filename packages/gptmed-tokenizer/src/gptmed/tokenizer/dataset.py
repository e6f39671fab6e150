"""Tokenizing a Q&A dataset into packed ``.npy`` rows with an answer-loss mask.

1. read the canonical Q&A text (``gptmed.core`` reader), streaming, and encode prompts and answers
   in ~1 MB batches with SentencePiece's multi-threaded batch encoder, in a worker thread, while this
   thread reads the next batch and lays out the previous one (:func:`encode_pairs`);
2. lay each pair out as ``[bos] prompt answer [eos]``, mask 0 on ``bos`` + prompt, 1 on answer + ``eos``;
3. split by pair, seeded, before packing: pairs that share a question (compared case- and
   whitespace-insensitively) go to the same side, so no question is in both train and val;
4. pack each split's pairs, in file order, greedily into rows of ``max_length``; a row never starts in
   the middle of a pair unless the pair alone is longer than ``max_length``: it then gets rows of its
   own, sliding windows every ``stride`` tokens up to the first that reaches its end. A later window
   keeps mask 0 on the tokens the window before it already predicts, so every answer token is a
   loss target exactly once (the default stride, ``max_length - 1``, overlaps windows by the one
   token that would otherwise be nobody's target). Rows are right-padded with pad id 0;
5. write ``train.npy``, ``val.npy``, ``train.mask.npy``, ``val.mask.npy`` and, last, ``metadata.json``.

The format is documented in docs/tokenizer.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gptmed.core import (
    SPECIAL_IDS,
    ConfigError,
    DataError,
    DatasetManifest,
    QAPair,
    atomic_open,
    installed_version,
    make_folder,
    sha256_file,
)
from gptmed.tokenizer.inputs import iter_pairs
from gptmed.tokenizer.tokenizer import Tokenizer, default_num_threads

__all__ = [
    "FILES",
    "PackedSplit",
    "encode_pairs",
    "load_split",
    "pack",
    "pair_layout",
    "split_pairs",
    "token_dtype",
    "tokenize_dataset",
    "windows",
]

_log = logging.getLogger(__name__)

FILES = {"train": "train.npy", "val": "val.npy", "train_mask": "train.mask.npy", "val_mask": "val.mask.npy"}
METADATA = "metadata.json"
_CHUNK_PAIRS = 8192  # a SentencePiece batch call gets at most this many pairs ...
_CHUNK_CHARS = 1 << 20  # ... or about this much text


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned dtype holding ids ``0 .. vocab_size - 1``."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def question_key(question: str) -> str:
    """Questions equal under this key are the same question for the split."""
    return " ".join(question.split()).casefold()


def split_pairs(questions: Sequence[str], train_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted, file order) of the train and val pairs.

    Pairs are grouped by :func:`question_key`; the groups are shuffled with ``seed`` and taken
    into val until val holds ``max(1, round(n * (1 - train_split)))`` pairs; at least one group
    stays in train.
    """
    n = len(questions)
    groups: dict[str, int] = {}
    group_of = np.empty(n, dtype=np.int64)
    for i, q in enumerate(questions):
        group_of[i] = groups.setdefault(question_key(q), len(groups))
    n_groups = len(groups)
    if n_groups < 2:
        raise DataError(
            f"need at least 2 different questions to make a train and a val split, found {n_groups} ({n} pairs)",
            hint="add more Q&A pairs",
        )
    sizes = np.bincount(group_of, minlength=n_groups)
    target = max(1, round(n * (1.0 - train_split)))
    order = np.random.default_rng(seed).permutation(n_groups)
    taken = np.cumsum(sizes[order])
    k = int(np.searchsorted(taken, target)) + 1  # groups needed to reach the target
    k = min(k, n_groups - 1)
    in_val = np.zeros(n_groups, dtype=bool)
    in_val[order[:k]] = True
    val_mask = in_val[group_of]
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def windows(length: int, max_length: int, stride: int) -> list[int]:
    """Start offsets of the sliding windows over a pair of ``length`` > ``max_length`` tokens.

    Windows start every ``stride`` tokens; the last one is the first that reaches the end.
    """
    return list(range(0, max(length - max_length, 0) + stride, stride))


def _ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + l) for s, l in zip(starts, lengths)) without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_start = np.cumsum(lengths) - lengths
    positions: np.ndarray = np.arange(total, dtype=np.int64) + np.repeat(starts - seg_start, lengths)
    return positions


@dataclass
class _Encoded:
    tokens: np.ndarray  # (T,) every pair laid out as [bos] prompt answer [eos], in file order
    mask: np.ndarray  # (T,) uint8: 1 on answer tokens and eos
    start: np.ndarray  # (P,) offset of each pair in tokens
    length: np.ndarray  # (P,) tokens of each pair


def pair_layout(prompt_ids: list[list[int]], answer_ids: list[list[int]], dtype: np.dtype[Any]) -> _Encoded:
    """Lay out pairs as ``[bos] + prompt + answer + [eos]`` with their loss mask.

    One pass over the ids (``np.fromiter`` over the interleaved lists), the mask by ``np.repeat``.
    """
    n = len(prompt_ids)
    bos, eos = [SPECIAL_IDS.bos], [SPECIAL_IDS.eos]
    pieces: list[list[int]] = [bos, bos, eos, eos] * n
    pieces[1::4] = prompt_ids
    pieces[2::4] = answer_ids
    sizes = np.fromiter(map(len, pieces), dtype=np.int64, count=4 * n).reshape(n, 4)  # (P, 4)
    length = sizes.sum(axis=1)
    total = int(length.sum())
    tokens = np.fromiter(chain.from_iterable(pieces), dtype=dtype, count=total)
    # mask: 0 on bos + prompt, 1 on answer + eos
    runs = np.stack([sizes[:, 0] + sizes[:, 1], sizes[:, 2] + sizes[:, 3]], axis=1).reshape(-1)  # (2P,)
    mask = np.repeat(np.tile(np.array([0, 1], dtype=np.uint8), n), runs)
    start = np.cumsum(length) - length
    return _Encoded(tokens, mask, start, length)


@dataclass
class PackedSplit:
    """Rows of one split: ``tokens`` and ``mask`` are (N, max_length)."""

    tokens: np.ndarray  # (N, L) token ids, right-padded with pad id 0
    mask: np.ndarray  # (N, L) uint8 loss mask
    pairs: int  # pairs packed
    long_pairs: int  # pairs longer than max_length (cut into sliding windows)
    tokens_used: int  # non-pad tokens (windows count overlaps)
    untrained: int = 0  # answer tokens no window predicts (first of a later window, stride == max_length)


def pack(
    tokens: np.ndarray,
    mask: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    max_length: int,
    stride: int,
) -> PackedSplit:
    """Pack pairs (``tokens[start[i] : start[i] + length[i]]``, in order) into rows of ``max_length``.

    The greedy row choice is one Python step per pair; the copying is one vectorised gather/scatter.
    """
    n = len(length)
    first_row = np.empty(n, dtype=np.int64)  # row of a short pair, first window row of a long one
    offset = np.zeros(n, dtype=np.int64)
    n_windows = np.zeros(n, dtype=np.int64)  # > 0 only for pairs longer than max_length
    row, fill = -1, max_length
    for i, size in enumerate(length.tolist()):
        if size > max_length:
            count = (size - max_length + stride - 1) // stride + 1  # == len(windows(size, ...))
            first_row[i], n_windows[i] = row + 1, count
            row += count
            fill = max_length  # the next pair starts a fresh row
        elif fill + size <= max_length:
            first_row[i], offset[i] = row, fill
            fill += size
        else:
            row += 1
            first_row[i] = row
            fill = size
    n_rows = row + 1

    short = np.flatnonzero(n_windows == 0)
    long = np.flatnonzero(n_windows)
    # windows of long pairs: pair, k-th window, its source start and length
    win_pair = np.repeat(long, n_windows[long])
    win_k = np.arange(win_pair.size, dtype=np.int64) - np.repeat(
        np.cumsum(n_windows[long]) - n_windows[long], n_windows[long]
    )
    win_off = win_k * stride
    src_start = np.concatenate([start[short], start[win_pair] + win_off])
    dst_start = np.concatenate(
        [first_row[short] * max_length + offset[short], (first_row[win_pair] + win_k) * max_length]
    )
    size = np.concatenate([length[short], np.minimum(length[win_pair] - win_off, max_length)])

    out = np.zeros((n_rows, max_length), dtype=tokens.dtype)  # (N, L)
    out_mask = np.zeros((n_rows, max_length), dtype=np.uint8)  # (N, L)
    src = _ragged_positions(src_start, size)
    dst = _ragged_positions(dst_start, size)
    out.reshape(-1)[dst] = tokens[src]
    out_mask.reshape(-1)[dst] = mask[src]
    # A later window's first tokens are targets of the window before it (or, at position 0, of no
    # window: x = row[:-1], y = row[1:]): context only, so no token is trained or counted twice.
    later_rows = (first_row[win_pair] + win_k)[win_k >= 1]
    untrained = int(out_mask[later_rows, 0].sum(dtype=np.int64)) if stride == max_length else 0
    out_mask[later_rows, : max(1, max_length - stride)] = 0
    return PackedSplit(out, out_mask, n, int(long.size), int(size.sum()), untrained)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _batches(pairs: Iterable[QAPair], max_pairs: int, max_chars: int) -> Iterator[list[QAPair]]:
    batch: list[QAPair] = []
    chars = 0
    for pair in pairs:
        batch.append(pair)
        chars += len(pair.question) + len(pair.answer)
        if len(batch) >= max_pairs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encode_pairs(
    tok: Tokenizer,
    pairs: Iterable[QAPair],
    num_threads: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[_Encoded, list[str]]:
    """Encode ``pairs`` (streamed) and lay them out; return the layout and the questions, in order.

    A pipeline: while SentencePiece encodes batch k on ``num_threads`` threads (it releases the
    GIL), this thread reads and renders batch k + 1 and lays out batch k - 1.
    """
    template = tok.template
    dtype = token_dtype(tok.vocab_size)
    questions: list[str] = []
    parts: list[_Encoded] = []
    done = 0

    def absorb(n: int, future: Future[list[list[int]]]) -> None:
        nonlocal done
        ids = future.result()
        parts.append(pair_layout(ids[:n], ids[n:], dtype))
        done += n
        if progress is not None:
            progress(done, 0)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptmed-encode") as pool:
        pending: tuple[int, Future[list[list[int]]]] | None = None
        for batch in _batches(pairs, _CHUNK_PAIRS, _CHUNK_CHARS):
            questions.extend(p.question for p in batch)
            texts = [template.render_prompt(p.question) for p in batch]
            texts += [template.render_answer(p.answer) for p in batch]
            future = pool.submit(tok.encode_batch, texts, num_threads)
            if pending is not None:
                absorb(*pending)
            pending = (len(batch), future)
        if pending is not None:
            absorb(*pending)
    if len(parts) == 1:
        return parts[0], questions
    length = np.concatenate([p.length for p in parts])
    enc = _Encoded(
        tokens=np.concatenate([p.tokens for p in parts]),
        mask=np.concatenate([p.mask for p in parts]),
        start=np.cumsum(length) - length,
        length=length,
    )
    return enc, questions


def _check_tokenize_settings(
    max_length: int, train_split: float, stride: int | None, seed: int, num_threads: int | None
) -> tuple[int, int]:
    """Validate :func:`tokenize_dataset`'s numbers; returns (stride, threads) with defaults filled in."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")
    if (
        isinstance(train_split, bool)
        or not isinstance(train_split, (int, float))
        or not 0.0 < train_split < 1.0
    ):
        raise ConfigError(f"train_split must be a fraction between 0 and 1 (exclusive), got {train_split!r}")
    stride = max_length - 1 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be an integer in 1..max_length ({max_length}), got {stride!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    threads = default_num_threads() if num_threads is None else num_threads
    if threads < 1:
        raise ConfigError(f"num_threads must be >= 1, got {threads}")
    return stride, threads


def _unanswerable(enc: Any, max_length: int) -> int:
    """How many pairs' prompts (BOS + rendered question) fill ``max_length`` with no room for one
    answer token; an error when that is every pair."""
    # every pair's EOS is marked, so each has a first answer token: found without a loop over pairs
    answer_at = np.flatnonzero(enc.mask)
    prompt_lens = answer_at[np.searchsorted(answer_at, enc.start)] - enc.start
    unanswerable = int((prompt_lens >= max_length).sum())
    if unanswerable and unanswerable == len(prompt_lens):
        raise ConfigError(
            f"max_length {max_length} leaves no room for an answer after any question "
            f"(the shortest question takes {int(prompt_lens.min())} tokens with the template)",
            hint=f"use --max-length of at least {int(np.percentile(prompt_lens, 99)) + 64} (the default is 512)",
        )
    return unanswerable


def _write_arrays(out_dir: Path, packed: dict[str, Any]) -> None:
    """The train / val token and mask arrays into ``out_dir``; the old manifest goes first (a stale
    manifest must never describe new arrays: it is written last, by the caller)."""
    make_folder(out_dir, "output folder")
    (out_dir / METADATA).unlink(missing_ok=True)
    for name in ("train", "val"):
        _save_npy(out_dir / FILES[name], packed[name].tokens)
        _save_npy(out_dir / FILES[f"{name}_mask"], packed[name].mask)


def _pair_facts(enc: Any, questions: list[str], unanswerable: int) -> dict[str, Any]:
    """The manifest's ``extra`` facts about the input pairs."""
    return {
        "longest_pair_tokens": int(enc.length.max()),
        "questions_over_max_length": unanswerable,  # their prompts alone fill max_length
        "duplicate_question_pairs": len(questions) - len({question_key(q) for q in questions}),
    }


def _packing_facts(packed: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``extra`` facts about the packed train and val arrays."""
    train, val = packed["train"], packed["val"]
    return {
        "mask": "1 = answer token or the EOS ending an answer (loss target under --loss-on answer)",
        "packing": "greedy, file order; rows never start mid-pair except sliding windows of pairs > max_length",
        "train_tokens": train.tokens_used,
        "val_tokens": val.tokens_used,
        "train_answer_tokens": int(train.mask.sum(dtype=np.int64)),
        "val_answer_tokens": int(val.mask.sum(dtype=np.int64)),
        "long_pairs": train.long_pairs + val.long_pairs,
        "untrained_window_tokens": train.untrained + val.untrained,
        "gptmed_tokenizer_version": installed_version("gptmed-tokenizer"),
    }


def tokenize_dataset(
    input: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    max_length: int = 512,
    train_split: float = 0.9,
    stride: int | None = None,
    seed: int = 42,
    *,
    num_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetManifest:
    """Tokenize the Q&A text ``input`` into ``output_dir`` (see the module doc); return the manifest.

    ``stride`` defaults to ``max_length - 1``: consecutive windows of an over-long pair share one
    token, the last of one window and the first (context, never a target) of the next.
    ``progress(done, 0)`` is called after each batch of pairs is encoded (the total is not known while streaming). Raises
    :class:`~gptmed.core.ConfigError` (a ``ValueError``) for bad numbers, :class:`~gptmed.core.DataError`
    for bad input and :class:`~gptmed.core.TokenizerError` for a bad tokenizer.
    """
    started = time.perf_counter()
    stride, threads = _check_tokenize_settings(max_length, train_split, stride, seed, num_threads)
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(
            "output path exists and is not a folder",
            where=str(out_dir),
            hint="pass a folder for --output-dir",
        )

    tok = Tokenizer(tokenizer_path)
    dtype = token_dtype(tok.vocab_size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptmed-sha256") as hasher:
        input_hash = hasher.submit(sha256_file, input)  # hashlib releases the GIL: runs alongside encoding
        enc, questions = encode_pairs(tok, iter_pairs(input), threads, progress)
        input_sha256 = input_hash.result()
    t_enc = time.perf_counter()
    unanswerable = _unanswerable(enc, max_length)
    train_idx, val_idx = split_pairs(questions, float(train_split), seed)
    packed = {
        name: pack(enc.tokens, enc.mask, enc.start[index], enc.length[index], max_length, stride)
        for name, index in (("train", train_idx), ("val", val_idx))
    }
    t_pack = time.perf_counter()

    _write_arrays(out_dir, packed)
    manifest = DatasetManifest(
        tokenizer_sha256=tok.sha256,
        vocab_size=tok.vocab_size,
        max_length=max_length,
        stride=stride,
        train_sequences=int(packed["train"].tokens.shape[0]),
        val_sequences=int(packed["val"].tokens.shape[0]),
        train_pairs=int(train_idx.size),
        val_pairs=int(val_idx.size),
        input_sha256=input_sha256,
        seed=seed,
        train_split=float(train_split),
        dtype=dtype.name,
        special_ids=tok.special_ids,
        template=tok.template,
        tokenizer_path=str(Path(tokenizer_path).resolve()),
        input_path=str(Path(input).resolve()),
        files=dict(FILES),
        extra={
            **_packing_facts(packed),
            **_pair_facts(enc, questions, unanswerable),
            "val_pair_indices": val_idx.tolist(),
        },
    )
    manifest.save(out_dir / METADATA)
    _log.info(
        "tokenized %d pairs: read + encode %.2fs, split + pack %.2fs, total %.2fs",
        len(questions),
        t_enc - started,
        t_pack - t_enc,
        time.perf_counter() - started,
    )
    return manifest


def load_split(
    dataset_dir: str | os.PathLike[str], split: str = "train", mmap: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, mask)`` of ``split`` in a tokenized dataset folder, memory-mapped by default."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    folder = Path(dataset_dir)
    mode: Literal["r"] | None = "r" if mmap else None
    return load_npy(folder / FILES[split], mode), load_npy(folder / FILES[f"{split}_mask"], mode)


def load_npy(path: Path, mode: Literal["r"] | None) -> np.ndarray:
    """``np.load`` with one-line errors: numpy says ``mmap length is greater than file size``."""
    hint = "re-run gptmed-tokenizer tokenize to rebuild the folder"
    try:
        array: np.ndarray = np.load(path, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} is missing", hint=hint) from None
    except (ValueError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        if "pickled" in reason:  # numpy's advice to allow_pickle does not apply to a dataset array
            reason = "not an array of numbers"
        raise DataError(f"{path} is not a readable .npy array ({reason})", hint=hint) from None
    return array
