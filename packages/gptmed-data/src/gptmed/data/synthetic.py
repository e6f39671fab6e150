"""``synth``: a deterministic, learnable fact Q&A set with held-out question phrasings.

Invented places (``Zorvia``) get invented attributes (capital, currency, language, river,
mountain). Each fact is asked in several phrasings, always answered by the same sentence::

    Q: What is the capital of Zorvia?        A: The capital of Zorvia is Quellmar.
    Q: Which city is the capital of Zorvia?  A: The capital of Zorvia is Quellmar.

For each fact, ``heldout_per_fact`` phrasings (chosen by the seed) go to the held-out set and the
rest to the training set. A model that learned the facts answers the held-out phrasings of
facts it has seen; a model that memorised strings does not. Names are made of syllables, so
they are new to any pretrained model and to the tokenizer.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from gptmed.core import DataError, QAPair, atomic_open, format_pair

__all__ = ["RELATIONS", "Fact", "SynthSet", "synth"]

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "th",
    "sh",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m"]


@dataclass(frozen=True)
class _Relation:
    name: str
    questions: tuple[str, ...]  # phrasings, "{e}" is the entity
    answer: str  # "{e}" entity, "{v}" value
    suffix: str  # added to the invented value name ("" for a bare name)


RELATIONS: tuple[_Relation, ...] = (
    _Relation(
        "capital",
        (
            "What is the capital of {e}?",
            "Which city is the capital of {e}?",
            "Name the capital city of {e}.",
            "What city serves as the capital of {e}?",
            "Tell me the capital of {e}.",
        ),
        "The capital of {e} is {v}.",
        "",
    ),
    _Relation(
        "currency",
        (
            "What is the currency of {e}?",
            "Which currency is used in {e}?",
            "What money do people use in {e}?",
            "Name the currency of {e}.",
            "What do they pay with in {e}?",
        ),
        "The currency of {e} is the {v}.",
        "",
    ),
    _Relation(
        "language",
        (
            "What language is spoken in {e}?",
            "Which language do people speak in {e}?",
            "What is the main language of {e}?",
            "Name the language of {e}.",
            "What do the people of {e} speak?",
        ),
        "The people of {e} speak {v}.",
        "ic",
    ),
    _Relation(
        "river",
        (
            "What is the longest river in {e}?",
            "Which river is the longest in {e}?",
            "Name the longest river of {e}.",
            "What river runs longest through {e}?",
            "Tell me the longest river in {e}.",
        ),
        "The longest river in {e} is the {v}.",
        "",
    ),
    _Relation(
        "mountain",
        (
            "What is the highest mountain in {e}?",
            "Which mountain is the tallest in {e}?",
            "Name the highest peak of {e}.",
            "What is the tallest peak in {e}?",
            "Tell me the highest mountain in {e}.",
        ),
        "The highest mountain in {e} is Mount {v}.",
        "",
    ),
)


@dataclass(frozen=True)
class Fact:
    """One invented fact: ``entity``'s ``relation`` is ``value``."""

    entity: str
    relation: str
    value: str
    answer: str  # the one answer sentence every phrasing of this fact gets


@dataclass
class SynthSet:
    """The generated set: ``train`` and ``heldout`` pairs and the facts behind them."""

    seed: int
    facts: list[Fact] = field(default_factory=list)
    train: list[QAPair] = field(default_factory=list)
    heldout: list[QAPair] = field(default_factory=list)

    def write(
        self,
        out: str | os.PathLike[str],
        heldout_out: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        """Write the training pairs (and the held-out ones) as canonical Q&A text, atomically."""
        targets: list[tuple[str | os.PathLike[str], list[QAPair]]] = [(out, self.train)]
        if heldout_out is not None:
            if not self.heldout:
                raise DataError("no held-out pairs to write", hint="use --heldout-per-fact >= 1")
            targets.append((heldout_out, self.heldout))
        for path, _ in targets:
            if os.path.exists(path) and not overwrite:
                raise DataError(f"{path} exists", hint="pass --overwrite to replace it")
        for path, pairs in targets:
            with atomic_open(path, "w", overwrite=overwrite) as fh:
                fh.write("\n".join(format_pair(p) for p in pairs))


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def synth(
    n_facts: int,
    seed: int = 0,
    *,
    phrasings_per_fact: int = 4,
    heldout_per_fact: int = 1,
    shuffle: bool = True,
) -> SynthSet:
    """Generate ``n_facts`` invented facts, each asked in ``phrasings_per_fact`` phrasings.

    ``heldout_per_fact`` of each fact's phrasings go to ``heldout`` (the rest to ``train``).
    The same arguments always give the same set.
    """
    max_phrasings = min(len(r.questions) for r in RELATIONS)
    if n_facts < 1:
        raise ValueError(f"n_facts must be >= 1, got {n_facts}")
    if not 1 <= phrasings_per_fact <= max_phrasings:
        raise ValueError(f"phrasings_per_fact must be in [1, {max_phrasings}], got {phrasings_per_fact}")
    if not 0 <= heldout_per_fact < phrasings_per_fact:
        raise ValueError(
            f"heldout_per_fact must be in [0, {phrasings_per_fact - 1}] so every fact is trained on, "
            f"got {heldout_per_fact}"
        )
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(syllables: int, suffix: str = "") -> str:
        while True:
            name = _name(rng, syllables) + suffix
            if name not in used:
                used.add(name)
                return name

    result = SynthSet(seed)
    n_entities = -(-n_facts // len(RELATIONS))
    entities = [fresh(rng.choice((2, 3))) for _ in range(n_entities)]
    for i in range(n_facts):
        entity = entities[i // len(RELATIONS)]
        rel = RELATIONS[i % len(RELATIONS)]
        value = fresh(rng.choice((2, 3)), rel.suffix)
        answer = rel.answer.format(e=entity, v=value)
        result.facts.append(Fact(entity, rel.name, value, answer))
        chosen = rng.sample(rel.questions, phrasings_per_fact)
        for j, template in enumerate(chosen):
            pair = QAPair(template.format(e=entity), answer)
            (result.heldout if j < heldout_per_fact else result.train).append(pair)
    if shuffle:
        rng.shuffle(result.train)
    return result
