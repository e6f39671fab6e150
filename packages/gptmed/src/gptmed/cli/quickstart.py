"""``gptmed quickstart``: the pipeline on the embedded sample, then questions answered by the bundle."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gptmed.cli.pipeline import PipelineOptions, PipelineResult, run_pipeline
from gptmed.core import DataError, QAPair, iter_qa_lines, read_qa_text

__all__ = ["QuickstartResult", "run_quickstart", "validation_questions"]


@dataclass
class QuickstartResult:
    pipeline: PipelineResult
    answers: list[tuple[str, str, str]]  # (question, expected answer, generated answer)
    exact: int  # trained questions answered exactly
    asked: int  # trained questions asked


def validation_questions(tokenized: Path, tokenizer_path: Path) -> set[str]:
    """Questions of the pairs that went to val.npy: the model never trained on these."""
    from gptmed.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    bos = tok.special_ids.bos
    questions: set[str] = set()
    for row in np.load(tokenized / "val.npy", mmap_mode="r"):
        ids = [int(i) for i in row]
        starts = [i for i, t in enumerate(ids) if t == bos]
        for a, b in zip(starts, [*starts[1:], len(ids)], strict=True):
            text = tok.decode(ids[a:b])
            try:
                questions.update(p.question for _, p in iter_qa_lines(text.split("\n")))
            except DataError:
                continue  # a window cut inside a pair: not a whole question
    return questions


def run_quickstart(
    out: Path,
    *,
    epochs: int = 40,
    questions: int = 4,
    check: int = 60,
    seed: int = 42,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> QuickstartResult:
    """Train the tiny model on the embedded sample and answer questions it trained on.

    The defaults are sized for 2 CPU cores: about a minute of work. ``check`` trained questions
    are answered greedily to report how many the bundle answers exactly.
    """
    from gptmed.data import sample_path
    from gptmed.inference.generator import TextGenerator

    options = PipelineOptions(
        input=sample_path(),
        out=out,
        model_size="tiny",
        epochs=epochs,
        batch_size=8,
        learning_rate=2e-3,
        warmup_steps=20,
        test_fraction=0.1,
        val_fraction=0.05,
        seed=seed,
        force=force,
        # keep 2 epoch checkpoints, not all 40 (13 MB each for the tiny model: 0.5 GB otherwise)
        extra_train={"dropout": 0.0, "keep_last": 2},
        # The quickstart asks questions the model trained on: export the end of training, not the
        # lowest-val-loss checkpoint (validation pairs are facts it never saw, so val loss rises
        # while the model learns the training facts).
        export_checkpoint="last",
    )
    result = run_pipeline(options, echo=echo)
    unseen = validation_questions(out / "data" / "tokenized", result.tokenizer)
    trained: list[QAPair] = [p for p in read_qa_text(out / "data" / "train.txt") if p.question not in unseen]
    rng = random.Random(seed)
    picked = rng.sample(trained, k=min(max(questions, check), len(trained)))
    generator = TextGenerator.from_bundle(result.bundle)
    replies = generator.generate_batch([p.question for p in picked], max_length=64, temperature=0.0)
    exact = sum(r.strip() == p.answer for p, r in zip(picked, replies, strict=True))
    answers = [(p.question, p.answer, r) for p, r in zip(picked[:questions], replies, strict=False)]
    return QuickstartResult(pipeline=result, answers=answers, exact=exact, asked=len(picked))
