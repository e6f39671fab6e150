"""Training a SentencePiece tokenizer on canonical Q&A text, with options chosen for Q&A.

The options (see docs/tokenizer.md):

* special ids pad=0, unk=1, bos=2, eos=3 as control symbols: never produced from text;
* ``byte_fallback``: a character outside the vocabulary becomes UTF-8 byte pieces, never ``<unk>``;
* identity normalisation, no whitespace folding, no dummy prefix: ``decode(encode(s)) == s``;
* ``"\\n"`` is a user-defined piece, so newlines survive and ``"\\nA:"`` tokenizes the same everywhere;
* ``split_digits``; a fixed seed, a fixed thread count and the input order: the same input gives a
  byte-identical ``.model`` on every machine.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
from gptmed.core import (
    DEFAULT_TEMPLATE,
    SPECIAL_IDS,
    ConfigError,
    TokenizerError,
    atomic_write_bytes,
    atomic_write_text,
    sha256_bytes,
    sha256_file,
)
from gptmed.tokenizer.inputs import iter_pairs

__all__ = [
    "MODEL_TYPES",
    "TRAIN_THREADS",
    "TrainResult",
    "VocabSizeError",
    "kept_tokenizer_path",
    "train_tokenizer",
    "training_sentences",
    "vocab_size_range",
]

_log = logging.getLogger(__name__)

MODEL_TYPES = ("bpe", "unigram")
# Fixed, not the CPU count: unigram results depend on the thread count, and SentencePiece records it
# in the model, so a fixed value keeps .model files byte-identical across machines.
TRAIN_THREADS = 8
# Pieces every gptmed model reserves besides the ones learnt: 4 special ids, 256 bytes, "\n".
_META_PIECES = 4 + 256 + 1
# Below this corpus size the largest usable vocab is probed with a second training run.
_PROBE_MAX_BYTES = 512 * 1024

_TOO_SMALL = re.compile(r"smaller than required_chars\.\s*(\d+)\s*vs\s*(\d+)")
_TOO_HIGH = re.compile(r"set it to a value <=\s*(\d+)")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_tokenizer` wrote."""

    model_path: Path  # PREFIX.model (absolute)
    vocab_path: Path  # PREFIX.vocab (absolute): one "piece<TAB>score" per line
    vocab_size: int
    model_type: str
    character_coverage: float
    sha256: str  # of the .model bytes
    pairs: int  # Q&A pairs read
    sentences: int  # lines given to SentencePiece
    input_bytes: int  # UTF-8 bytes of those lines
    seconds: float  # wall time of reading + training + writing
    kept_previous: Path | None = None  # the replaced .model, kept as PREFIX.<sha256[:12]>.model


def kept_tokenizer_path(model_path: str | os.PathLike[str], sha256: str) -> Path:
    """Where :func:`train_tokenizer` keeps a ``.model`` it replaced: ``PREFIX.<sha256[:12]>.model``
    beside it, so a checkpoint that recorded the old one (by path and sha256) still finds it."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.{sha256[:12]}.model")


def _keep_previous(model_path: Path, vocab_path: Path, new_sha256: str) -> Path | None:
    """Before a retrain replaces a different ``.model``, keep the old one (and its ``.vocab``) under
    :func:`kept_tokenizer_path`: models trained with it name it by path and sha256."""
    if not model_path.is_file():
        return None
    old_sha256 = sha256_file(model_path)
    if old_sha256 == new_sha256:
        return None
    kept = kept_tokenizer_path(model_path, old_sha256)
    if not kept.exists():
        shutil.copy2(model_path, kept)
        if vocab_path.is_file():
            shutil.copy2(vocab_path, kept.with_suffix(".vocab"))
    _log.info("kept the replaced tokenizer as %s", kept)
    return kept


def training_sentences(pairs_iter: object) -> list[str]:
    """The lines SentencePiece learns from: every rendered pair split at newlines (empty lines dropped).

    Newlines are not learnt from text: ``"\\n"`` is a user-defined piece of its own.
    """
    out: list[str] = []
    for pair in pairs_iter:  # type: ignore[attr-defined]
        text = DEFAULT_TEMPLATE.render_pair(pair.question, pair.answer)
        out.extend(line for line in text.split("\n") if line)
    return out


def _trainer_args(
    vocab_size: int, model_type: str, character_coverage: float, max_len: int
) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "pad_id": SPECIAL_IDS.pad,
        "unk_id": SPECIAL_IDS.unk,
        "bos_id": SPECIAL_IDS.bos,
        "eos_id": SPECIAL_IDS.eos,
        "pad_piece": "<pad>",
        "unk_piece": "<unk>",
        "bos_piece": "<s>",
        "eos_piece": "</s>",
        "user_defined_symbols": ["\n"],
        "byte_fallback": True,
        "split_digits": True,
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "add_dummy_prefix": False,
        "num_threads": TRAIN_THREADS,
        "input_sentence_size": 0,  # use every sentence ...
        "shuffle_input_sentence": False,  # ... in input order
        "max_sentence_length": max_len,
        "minloglevel": 0 if _log.isEnabledFor(logging.DEBUG) else 2,
    }


def _run(sentences: list[str], args: dict[str, Any], seed: int) -> bytes:
    buf = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, **args)
    return buf.getvalue()


def _probe_low(sentences: list[str], args: dict[str, Any], seed: int) -> int:
    try:
        _run(sentences, {**args, "vocab_size": 16}, seed)
    except RuntimeError as exc:
        m = _TOO_SMALL.search(str(exc))
        if m:
            return int(m.group(2))
    return _META_PIECES  # pragma: no cover - SentencePiece always refuses 16 pieces here


def _probe_high(sentences: list[str], args: dict[str, Any], seed: int) -> int | None:
    try:
        _run(sentences, {**args, "vocab_size": 1 << 22}, seed)
    except RuntimeError as exc:
        m = _TOO_HIGH.search(str(exc))
        if m:
            return int(m.group(1))
    return None


class VocabSizeError(TokenizerError, ValueError):
    """``vocab_size`` outside what the corpus allows; ``low``..``high`` is the usable range (``high`` None: unknown)."""

    def __init__(
        self, message: str, *, where: str | None = None, hint: str | None = None, low: int, high: int | None
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.low = low
        self.high = high


def vocab_size_range(
    input: str | os.PathLike[str],
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    *,
    seed: int = 0,
) -> tuple[int, int]:
    """The smallest and largest ``vocab_size`` :func:`train_tokenizer` accepts for ``input``, by probing.

    The largest is found by training to exhaustion: seconds for a few MB of text, longer beyond.
    """
    sentences = training_sentences(iter_pairs(input))
    longest = max((len(s.encode("utf-8")) for s in sentences), default=0)
    args = _trainer_args(8000, model_type, float(character_coverage), max(4192, longest + 16))
    lo = _probe_low(sentences, args, seed)
    hi = _probe_high(sentences, args, seed)
    if hi is None:  # pragma: no cover - a corpus with 4M+ possible pieces
        hi = 1 << 22
    return lo, hi


def _range_text(lo: int, hi: int | None) -> str:
    return f"{lo}..{hi}" if hi is not None else f"{lo} or more"


def _vocab_text(sp: spm.SentencePieceProcessor) -> str:
    lines = []
    for i in range(sp.vocab_size()):
        piece = (
            sp.id_to_piece(i)
            .replace("\\", "\\\\")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\t", "\\t")
        )
        lines.append(f"{piece}\t{sp.get_score(i):g}\n")
    return "".join(lines)


def _check_train_settings(
    vocab_size: int, model_type: str, character_coverage: float, output_prefix: str | os.PathLike[str]
) -> Path:
    """Validate :func:`train_tokenizer`'s settings; returns the output prefix as a Path."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {list(MODEL_TYPES)}, got {model_type!r}")
    if not isinstance(character_coverage, (int, float)) or not 0.0 < float(character_coverage) <= 1.0:
        raise ConfigError(f"character_coverage must be in (0, 1], got {character_coverage!r}")
    prefix = Path(output_prefix)
    if prefix.name in ("", ".", "..") or str(output_prefix).endswith(("/", os.sep)):
        raise ConfigError(
            f"output_prefix must name a file prefix such as tokenizer/my_tokenizer, got {str(output_prefix)!r}"
        )
    return prefix


def _training_error(
    msg: str,
    input: str | os.PathLike[str],
    sentences: list[str],
    args: dict[str, Any],
    seed: int,
    pairs: int,
    nbytes: int,
) -> TokenizerError:
    """The error for SentencePiece's ``msg``: a vocabulary size that does not fit the corpus
    becomes a :class:`VocabSizeError` with the usable range (probed by training), anything else a
    :class:`~gptmed.core.TokenizerError`."""
    too_high, too_small = _TOO_HIGH.search(msg), _TOO_SMALL.search(msg)
    vocab_size = args["vocab_size"]
    hi: int | None
    if too_high:
        lo, hi = _probe_low(sentences, args, seed), int(too_high.group(1))
        what = f"vocab size {vocab_size} is too large for this corpus ({pairs} pairs, {nbytes:,} bytes)"
    elif too_small:
        lo = int(too_small.group(2))
        hi = _probe_high(sentences, args, seed) if nbytes <= _PROBE_MAX_BYTES else None
        what = (
            f"vocab size {vocab_size} is too small: byte fallback, the special ids and the corpus's "
            f"characters need {lo} pieces"
        )
    else:
        return TokenizerError(f"SentencePiece training failed: {msg}", where=str(input))
    return VocabSizeError(
        what,
        where=str(input),
        hint=f"use --vocab-size in {_range_text(lo, hi)}" + ("" if hi else " (or add more text)"),
        low=lo,
        high=hi,
    )


def train_tokenizer(
    input: str | os.PathLike[str],
    output_prefix: str | os.PathLike[str],
    vocab_size: int = 8000,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    *,
    seed: int = 0,
) -> TrainResult:
    """Train a SentencePiece tokenizer on the Q&A text ``input``; write ``PREFIX.model`` and ``PREFIX.vocab``.

    Raises :class:`~gptmed.core.DataError` for unreadable input and
    :class:`VocabSizeError` (a :class:`~gptmed.core.TokenizerError` and a ``ValueError``) when
    ``vocab_size`` does not fit the corpus; its message and ``low``/``high`` state the usable range. Both files are written atomically; nothing is written on error.
    """
    started = time.perf_counter()
    prefix = _check_train_settings(vocab_size, model_type, character_coverage, output_prefix)
    pairs = 0

    def counted() -> object:
        nonlocal pairs
        for pair in iter_pairs(input):
            pairs += 1
            yield pair

    sentences = training_sentences(counted())
    sizes = [len(s.encode("utf-8")) for s in sentences]
    nbytes, longest = sum(sizes), max(sizes, default=0)
    args = _trainer_args(vocab_size, model_type, float(character_coverage), max(4192, longest + 16))
    _log.info(
        "training %s tokenizer (vocab %d) on %d pairs, %d lines, %d bytes",
        model_type,
        vocab_size,
        pairs,
        len(sentences),
        nbytes,
    )

    try:
        model = _run(sentences, args, seed)
    except RuntimeError as exc:
        raise _training_error(str(exc), input, sentences, args, seed, pairs, nbytes) from None
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    model_path = prefix.parent / f"{prefix.name}.model"
    vocab_path = prefix.parent / f"{prefix.name}.vocab"
    kept = _keep_previous(model_path, vocab_path, sha256_bytes(model))
    atomic_write_bytes(model_path, model)
    atomic_write_text(vocab_path, _vocab_text(sp))
    result = TrainResult(
        model_path=model_path.resolve(),
        vocab_path=vocab_path.resolve(),
        vocab_size=int(sp.vocab_size()),
        model_type=model_type,
        character_coverage=float(character_coverage),
        sha256=sha256_bytes(model),
        pairs=pairs,
        sentences=len(sentences),
        input_bytes=nbytes,
        seconds=time.perf_counter() - started,
        kept_previous=kept,
    )
    _log.info("wrote %s (%d pieces) in %.2fs", model_path, result.vocab_size, result.seconds)
    return result
