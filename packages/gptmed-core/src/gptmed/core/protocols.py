"""Protocols that let components work together without importing each other."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from gptmed.core.template import PromptTemplate, SpecialIds

__all__ = ["AnswerGenerator", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the data, training and inference stages need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_ids(self) -> SpecialIds: ...

    @property
    def sha256(self) -> str:
        """sha256 of the serialised tokenizer model; recorded in every downstream artifact."""
        ...

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS; control-symbol look-alikes stay plain text."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special ids decode to nothing."""
        ...


@runtime_checkable
class AnswerGenerator(Protocol):
    """Something that answers questions (a torch model or an ONNX bundle behind one API)."""

    @property
    def template(self) -> PromptTemplate: ...

    def generate(self, prompt: str, max_length: int = 100, temperature: float = 0.7) -> str:
        """The answer to ``prompt`` (not echoed), stopped at EOS or a stop string."""
        ...

    def stream(self, prompt: str, max_length: int = 100, temperature: float = 0.7) -> Iterator[str]:
        """The same answer as text pieces, each ending on a whole character."""
        ...
