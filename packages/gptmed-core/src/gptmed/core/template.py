"""The one prompt template every stage agrees on, and the special token ids.

A training pair renders as ``<bos>Q: {question}\\nA: {answer}<eos>`` and a prompt as
``<bos>Q: {question}\\nA:``. ``<bos>``/``<eos>`` are ids, not text: tokenizers add them. The
answer part starts with the space after ``A:`` so that encoding the prompt and the answer
separately gives exactly the ids the model sees at generation time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DEFAULT_STOP", "DEFAULT_TEMPLATE", "SPECIAL_IDS", "PromptTemplate", "SpecialIds"]


@dataclass(frozen=True, slots=True)
class SpecialIds:
    """Token ids of the SentencePiece control symbols gptmed reserves."""

    pad: int = 0  # padding; never a training target
    unk: int = 1  # unknown piece (rare: byte fallback covers unseen characters)
    bos: int = 2  # begins every pair and every prompt
    eos: int = 3  # ends every answer; generation stops on it

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpecialIds:
        return cls(**{k: int(data[k]) for k in ("pad", "unk", "bos", "eos")})


SPECIAL_IDS = SpecialIds()


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """How a question (and its answer) becomes model text; recorded in every artifact."""

    name: str = "qa-v1"  # recorded identity: a stage refuses artifacts whose template differs
    prompt: str = "Q: {question}\nA:"  # the text the model is given at generation time
    answer: str = " {answer}"  # the text the model learns to produce after ``prompt``

    def render_prompt(self, question: str) -> str:
        return self.prompt.format(question=question)

    def render_answer(self, answer: str) -> str:
        return self.answer.format(answer=answer)

    def render_pair(self, question: str, answer: str) -> str:
        return self.render_prompt(question) + self.render_answer(answer)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        return cls(name=str(data["name"]), prompt=str(data["prompt"]), answer=str(data["answer"]))


DEFAULT_TEMPLATE = PromptTemplate()

# Generation stops when the model starts a new record on its own.
DEFAULT_STOP: tuple[str, ...] = ("\nQ:",)
