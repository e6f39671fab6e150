"""The SentencePiece wrapper every gptmed stage uses (implements ``gptmed.core.Tokenizer``).

``encode`` never adds BOS/EOS and never turns text such as ``</s>``, ``<s>`` or ``<0x41>`` into
control or byte ids: the special ids are SentencePiece control symbols, which the encoder does
not match in text. ``decode`` refuses ids outside ``[0, vocab_size)`` and drops special ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
from gptmed.core import (
    DEFAULT_TEMPLATE,
    SPECIAL_IDS,
    PromptTemplate,
    SpecialIds,
    TokenizerError,
    sha256_bytes,
)
from gptmed.tokenizer._proto import ProtoError, parse_model

__all__ = ["TokenIdError", "Tokenizer", "default_num_threads"]

_META = "\u2581"  # SentencePiece's whitespace symbol


class TokenIdError(TokenizerError, ValueError):
    """Token ids that are not in the vocabulary (also a ``ValueError``)."""


def default_num_threads() -> int:
    """Threads for batch encoding: the CPUs this process may use (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        n = os.cpu_count() or 1
    return max(1, n)


class Tokenizer:
    """A trained gptmed SentencePiece model.

    ``Tokenizer(model_path)`` loads and checks the file: a missing, truncated or garbage file,
    or a SentencePiece model whose special ids differ from gptmed's (pad=0, unk=1, bos=2, eos=3),
    raises :class:`~gptmed.core.TokenizerError`.
    """

    def __init__(
        self, model_path: str | os.PathLike[str], *, template: PromptTemplate = DEFAULT_TEMPLATE
    ) -> None:
        path = Path(model_path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(
                "tokenizer model not found",
                where=str(path),
                hint="train one with: python -m gptmed.tokenizer.train_tokenizer --input DATA --output-prefix PREFIX",
            ) from None
        except IsADirectoryError:
            raise TokenizerError(
                "tokenizer path is a folder", where=str(path), hint="pass the .model file"
            ) from None
        self._init_from_bytes(data, str(path), template)
        self._model_path: Path | None = path.resolve()

    @classmethod
    def from_bytes(
        cls, data: bytes, *, source: str = "<bytes>", template: PromptTemplate = DEFAULT_TEMPLATE
    ) -> Tokenizer:
        """A tokenizer from the serialised model (``model_path`` is then ``None``)."""
        self = cls.__new__(cls)
        self._init_from_bytes(data, source, template)
        self._model_path = None
        return self

    def _init_from_bytes(self, data: bytes, source: str, template: PromptTemplate) -> None:
        hint = "the file is truncated or not a SentencePiece model; retrain it or copy it again"
        try:
            info = parse_model(data)
        except ProtoError as exc:
            raise TokenizerError(f"corrupt tokenizer model ({exc})", where=source, hint=hint) from None
        if not (info.has_trainer_spec and info.has_normalizer_spec):
            raise TokenizerError(
                "corrupt tokenizer model (trainer or normalizer spec missing)", where=source, hint=hint
            )
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"corrupt tokenizer model ({exc})", where=source, hint=hint) from None
        if sp.vocab_size() != info.num_pieces:
            raise TokenizerError(
                f"corrupt tokenizer model ({sp.vocab_size()} pieces loaded, {info.num_pieces} stored)",
                where=source,
                hint=hint,
            )
        found = {"pad": sp.pad_id(), "unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
        if found != SPECIAL_IDS.to_dict():
            raise TokenizerError(
                f"special ids are {found}, gptmed needs {SPECIAL_IDS.to_dict()}",
                where=source,
                hint="train the tokenizer with gptmed-tokenizer train",
            )
        self._sp = sp
        self._bytes_len = len(data)
        self._sha256 = sha256_bytes(data)
        self._info = info
        self._template = template
        self._vocab_size = int(sp.vocab_size())
        self._source = source
        self._meta_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode("utf-8")]
        if not info.trainer.get("byte_fallback", False) or SPECIAL_IDS.unk in self._meta_ids:
            raise TokenizerError(
                "the tokenizer model has no byte fallback",
                where=source,
                hint="train the tokenizer with gptmed-tokenizer train (it enables byte fallback)",
            )

    # ----------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids, special ids and byte pieces included."""
        return self._vocab_size

    @property
    def special_ids(self) -> SpecialIds:
        return SPECIAL_IDS

    @property
    def sha256(self) -> str:
        """sha256 of the ``.model`` bytes."""
        return self._sha256

    @property
    def model_path(self) -> Path | None:
        """Absolute path of the ``.model`` file (``None`` if built from bytes)."""
        return self._model_path

    @property
    def template(self) -> PromptTemplate:
        return self._template

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The underlying ``SentencePieceProcessor`` (for advanced use)."""
        return self._sp

    def info(self) -> dict[str, Any]:
        """Facts about the model for humans (``gptmed-tokenizer inspect``)."""
        trainer = self._info.trainer
        return {
            "path": str(self._model_path) if self._model_path else self._source,
            "sha256": self._sha256,
            "bytes": self._bytes_len,
            "vocab_size": self._vocab_size,
            "model_type": trainer.get("model_type", "unigram"),
            "character_coverage": trainer.get("character_coverage"),
            "byte_fallback": trainer.get("byte_fallback", False),
            "split_digits": trainer.get("split_digits", False),
            "normalization": self._info.normalizer.get("name", "nmt_nfkc"),
            "add_dummy_prefix": self._info.normalizer.get("add_dummy_prefix", True),
            "special_ids": SPECIAL_IDS.to_dict(),
        }

    def __repr__(self) -> str:
        return f"Tokenizer({str(self._model_path or self._source)!r}, vocab_size={self._vocab_size})"

    # ----------------------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; no BOS/EOS. Control-symbol look-alikes (``</s>``) stay plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        if _META in text:
            return self._encode_meta(text)
        return list(self._sp.encode(text))

    def _encode_meta(self, text: str) -> list[int]:
        # SentencePiece uses U+2581 for spaces, so a literal U+2581 would decode as a space. Encode it
        # as its UTF-8 byte pieces instead, which decode back to U+2581.
        first, *rest = text.split(_META)
        ids = list(self._sp.encode(first)) if first else []
        for part in rest:
            ids += self._meta_ids
            if part:
                ids += self._sp.encode(part)
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """``[encode(t) for t in texts]``, encoded by SentencePiece on ``num_threads`` threads."""
        if isinstance(texts, str):
            raise TypeError("encode_batch() takes a list of str, not a str")
        threads = default_num_threads() if num_threads is None else num_threads
        if threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {threads}")
        if not texts:
            return []
        out: list[list[int]] = self._sp.encode(list(texts), num_threads=threads)
        for i, text in enumerate(texts):
            if _META in text:
                out[i] = self._encode_meta(text)
        return out

    def pieces(self, text: str) -> list[str]:
        """The pieces ``text`` encodes to (for humans)."""
        return [self._sp.id_to_piece(i) for i in self.encode(text)]

    def id_to_piece(self, token_id: int) -> str:
        self._check_ids([token_id])
        return str(self._sp.id_to_piece(int(token_id)))

    def _check_ids(self, ids: list[int]) -> None:
        if not ids:
            return
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= self._vocab_size:
            bad = lo if lo < 0 else hi
            raise TokenIdError(
                f"token id {bad} is out of range for this tokenizer (valid ids are 0..{self._vocab_size - 1})",
                where=self._source,
                hint="decode ids produced with the same tokenizer",
            )

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids (pad, unk, bos, eos) decode to nothing.

        Raises :class:`TokenIdError` (a ``ValueError``) for an id outside ``[0, vocab_size)``.
        """
        try:
            values = [int(i) for i in ids]
        except (TypeError, ValueError) as exc:
            raise TokenIdError(f"token ids must be integers ({exc})") from None
        self._check_ids(values)
        special = (SPECIAL_IDS.pad, SPECIAL_IDS.unk, SPECIAL_IDS.bos, SPECIAL_IDS.eos)
        keep = [i for i in values if i not in special]
        return str(self._sp.decode(keep))

    # ----------------------------------------------------------------------------- template
    def encode_prompt(self, question: str) -> list[int]:
        """``[bos] + encode(template.render_prompt(question))``: what generation feeds the model."""
        return [SPECIAL_IDS.bos, *self.encode(self._template.render_prompt(question))]

    def encode_answer(self, answer: str) -> list[int]:
        """``encode(template.render_answer(answer)) + [eos]``: what the model learns to produce."""
        return [*self.encode(self._template.render_answer(answer)), SPECIAL_IDS.eos]

    def encode_pair(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """``(prompt_ids + answer_ids, mask)``; mask is 1 on answer tokens and the final EOS, else 0."""
        prompt = self.encode_prompt(question)
        answer_ids = self.encode_answer(answer)
        return prompt + answer_ids, [0] * len(prompt) + [1] * len(answer_ids)
