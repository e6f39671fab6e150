"""``gptmed quickstart``: the pipeline on the embedded sample, then questions answered by the bundle."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptmed.cli.pipeline import PipelineOptions, PipelineResult, run_pipeline
from gptmed.core import DataError, DatasetManifest, QAPair, read_qa_text, sha256_file

__all__ = ["QuickstartResult", "run_quickstart", "validation_questions"]


@dataclass
class QuickstartResult:
    pipeline: PipelineResult
    answers: list[tuple[str, str, str]]  # (question, expected answer, generated answer)
    exact: int  # trained questions answered exactly
    asked: int  # trained questions asked


def validation_questions(tokenized: Path) -> set[str]:
    """Questions of the pairs that went to val.npy (the model never trained on these), as
    ``tokenize_dataset`` recorded them: ``extra.val_pair_indices`` of metadata.json, indices into
    the Q&A file it tokenized (``input_path``, checked against ``input_sha256``)."""
    meta = tokenized / "metadata.json"
    manifest = DatasetManifest.load(meta)
    source = Path(manifest.input_path)
    if "val_pair_indices" not in manifest.extra or sha256_file(source) != manifest.input_sha256:
        raise DataError(
            f"metadata.json does not say which pairs of {source} went to val",
            where=str(meta),
            hint="re-run the tokenize step (gptmed quickstart --force)",
        )
    held_out = set(manifest.extra["val_pair_indices"])
    return {p.question for i, p in enumerate(read_qa_text(source)) if i in held_out}


QUICKSTART_EPOCHS = 40  # enough for the tiny model to learn the sample's answers word for word


def run_quickstart(
    out: Path,
    *,
    num_epochs: int | None = None,
    time_budget: float | None = None,
    questions: int = 4,
    check: int = 60,
    seed: int = 42,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> QuickstartResult:
    """Train the tiny model on the embedded sample and answer questions it trained on.

    The defaults are sized for 2 CPU cores: about a minute of work (40 epochs; ``time_budget``
    plans the training to that many seconds instead). ``check`` trained questions are answered
    greedily to report how many the bundle answers exactly.
    """
    from gptmed.data import sample_path
    from gptmed.inference.generator import TextGenerator

    options = PipelineOptions(
        input=sample_path(),
        out=out,
        model_size="tiny",
        num_epochs=num_epochs if num_epochs is not None or time_budget is not None else QUICKSTART_EPOCHS,
        time_budget=time_budget,
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
    unseen = validation_questions(out / "data" / "tokenized")
    trained: list[QAPair] = [p for p in read_qa_text(out / "data" / "train.txt") if p.question not in unseen]
    rng = random.Random(seed)
    picked = rng.sample(trained, k=min(max(questions, check), len(trained)))
    generator = TextGenerator.from_bundle(result.bundle)
    replies = generator.generate_batch([p.question for p in picked], max_length=64, temperature=0.0)
    exact = sum(r.strip() == p.answer for p, r in zip(picked, replies, strict=True))
    answers = [(p.question, p.answer, r) for p, r in zip(picked[:questions], replies, strict=False)]
    return QuickstartResult(pipeline=result, answers=answers, exact=exact, asked=len(picked))
