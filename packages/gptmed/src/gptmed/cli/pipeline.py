"""``gptmed pipeline``: raw Q&A data to an evaluated, exported answerer, one resumable command.

Steps (artifacts under ``DIR``)::

    1 convert    INPUT                      -> data/qa.txt            (gptmed-data)
    2 split      data/qa.txt                -> data/train.txt, data/test.txt (held out)
    3 tokenizer  data/train.txt             -> tokenizer/tokenizer.model (+ .vocab)
    4 tokenize   data/train.txt + tokenizer -> data/tokenized/{train,val}.npy (+ masks, metadata.json)
    5 train      data/tokenized             -> model/checkpoints/best_model.pt
    6 export     best_model.pt + tokenizer  -> bundle/ (model.onnx, tokenizer.model, gptmed.json)
    7 evaluate   bundle + data/test.txt     -> eval.json

Each finished step is recorded in ``DIR/pipeline.json`` (see :mod:`gptmed.cli.steps`); a rerun
skips current steps, and a training step that was interrupted resumes from its last checkpoint.
Vocabulary size, context length and model size default to values derived from the corpus (the
model size also from ``--time-budget`` and this machine's measured speed); gptmed-train chooses the
learning rate, warmup and dropout. Every choice is reported with its reason and can be overridden.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptmed.cli.steps import Step, StepRunner
from gptmed.core import Choice, ConfigError, atomic_write_text, make_folder, read_qa_text

__all__ = [
    "PipelineOptions",
    "PipelineResult",
    "choose_max_length",
    "choose_size",
    "choose_vocab_size",
    "run_pipeline",
]

_log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+", re.UNICODE)
# Step 7 scores answer BPB on every held-out pair (teacher forced: fast) and generates answers
# (up to 448 tokens each, one decode step per token) for the first 200 only, so that evaluating a
# large held-out split does not take longer than training did.
PIPELINE_ANSWERS = 200


@dataclass
class PipelineOptions:
    """Everything ``gptmed pipeline`` can be told; None means 'derive it from the data'."""

    input: Path  # raw Q&A data in any format gptmed-data reads
    out: Path  # folder for every artifact
    input_format: str | None = None  # force the input format (txt, json, jsonl, csv, tsv, sqlite)
    question_field: str | None = None  # field/column holding the question
    answer_field: str | None = None  # field/column holding the answer
    table: str | None = None  # SQLite table
    query: str | None = None  # SQLite SELECT whose columns hold the question and answer
    records_key: str | None = None  # JSON: the key of a top-level object that holds the list
    encoding: str | None = None  # text encoding of the input (None: UTF-8)
    delimiter: str | None = None  # CSV/TSV field separator (None: detected)
    skip_invalid: bool = False  # skip and count invalid records instead of stopping at the first
    model_size: str | None = None  # tiny | small | medium (None: the largest the corpus and budget can feed)
    num_epochs: int | None = None  # training epochs (None: 10, or as many as fit the time budget)
    time_budget: float | None = None  # seconds of training to plan the run to (gptmed-train --time-budget)
    batch_size: int = 16  # sequences per optimizer step
    learning_rate: float | None = None  # peak learning rate (None: gptmed-train chooses by width and batch)
    vocab_size: int | None = None  # tokenizer vocabulary (None: from corpus statistics)
    max_length: int | None = None  # context length (None: from the tokenized pair lengths)
    test_fraction: float = 0.1  # pairs held out for evaluation (0 = evaluate on training pairs)
    val_fraction: float = 0.1  # of the remaining pairs, for validation loss
    warmup_steps: int | None = None  # None: gptmed-train chooses (3% of the steps, at most 100)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 42  # everything random: split, tokenizer, init, data order
    quantize: str | None = None  # also export an int8 graph
    export_checkpoint: str = "best"  # "best" (lowest val loss) or "last" (end of training) is exported
    force: bool = False  # rerun every step even when current
    extra_train: dict[str, Any] = field(default_factory=dict)  # further TrainingConfig fields


@dataclass
class PipelineResult:
    """What the pipeline produced."""

    out: Path
    bundle: Path
    checkpoint: Path
    tokenizer: Path
    choices: list[Choice]
    metrics: dict[str, Any]


def choose_vocab_size(pairs_path: Path) -> Choice:
    """A vocabulary that fits the corpus: ~0.6 x distinct words, a multiple of 64, in [320, 8000]."""
    words: set[str] = set()
    chars = 0
    pairs = 0
    for pair in read_qa_text(pairs_path):
        pairs += 1
        text = f"{pair.question} {pair.answer}"
        chars += len(text)
        words.update(w.lower() for w in _WORD.findall(text))
    raw = 0.6 * len(words)
    value = int(min(8000, max(320, 64 * round(raw / 64))))
    reason = (
        f"{len(words):,} distinct words in {pairs:,} pairs ({chars / 1e6:.2f}M characters): "
        f"0.6 x distinct words, a multiple of 64, kept within [320, 8000]"
    )
    return Choice("--vocab-size", value, reason)


def choose_max_length(lengths: list[int], cap: int = 512) -> Choice:
    """The smallest power of two >= the 99th percentile of tokenized pair lengths, in [64, cap]."""
    if not lengths:
        raise ConfigError("no pairs to measure for the context length")
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    value = max(64, min(cap, 1 << max(0, p99 - 1).bit_length()))
    longer = sum(1 for n in ordered if n > value)
    reason = (
        f"99% of the {len(ordered):,} pairs are <= {p99} tokens (longest {ordered[-1]}): smallest power "
        f"of two >= that, kept within [64, {cap}]; {longer} longer pair(s) become sliding windows"
    )
    return Choice("--max-length", value, reason)


def choose_size(tokenized: Path, options: PipelineOptions) -> Choice:
    """The model preset for this corpus (and time budget, on this machine): gptmed-train's rule
    (:func:`gptmed.training.recipe.choose_model_size`), fed with the tokenized corpus's real token
    count and, with a budget, each preset's training speed measured here."""
    import numpy as np
    from gptmed.core import PRESETS, DatasetManifest
    from gptmed.training.recipe import choose_model_size, preset_speeds

    manifest = DatasetManifest.load(tokenized / "metadata.json")
    rows = np.load(tokenized / "train.npy", mmap_mode="r")
    corpus_tokens = int(np.count_nonzero(rows != manifest.special_ids.pad))
    presets = {
        name: build(vocab_size=manifest.vocab_size, max_seq_len=manifest.max_length)
        for name, build in PRESETS.items()
    }
    speed = None
    if options.time_budget is not None:
        speed = preset_speeds(presets, options.device, batch_size=options.batch_size)
    return choose_model_size(
        presets,
        corpus_tokens=corpus_tokens,
        tokens_per_s=speed,
        budget_s=options.time_budget,
        num_epochs=options.num_epochs or 10,
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content, atomically: a hard link where the filesystem allows, else a copy."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run_pipeline(options: PipelineOptions, echo: Callable[[str], None] = print) -> PipelineResult:
    """Run (or continue) the pipeline for ``options``; see the module docstring."""
    # Component imports happen here: `gptmed --help` must stay fast and work on partial installs.
    from gptmed.configs.train_config import TrainingConfig
    from gptmed.data import convert, split
    from gptmed.inference.evaluate import DEFAULT_MAX_LENGTH, evaluate
    from gptmed.inference.export import export_bundle
    from gptmed.inference.generator import TextGenerator
    from gptmed.tokenizer import Tokenizer, VocabSizeError, tokenize_dataset, train_tokenizer
    from gptmed.training import TrainCallbacks, train_model

    class EpochLines(TrainCallbacks):
        """One line per epoch: enough to watch a pipeline train without a progress bar."""

        def on_epoch_end(
            self,
            epoch: int,
            num_epochs: int | None,
            train_loss: float | None,
            val_loss: float | None,
            seconds: float,
        ) -> None:
            tr = f"{train_loss:.3f}" if train_loss is not None else "-"
            va = f"{val_loss:.3f}" if val_loss is not None else "-"
            of = f"/{num_epochs}" if num_epochs else ""
            echo(f"      epoch {epoch}{of}: train loss {tr}, val loss {va} ({seconds:.1f}s)")

    out = make_folder(options.out, "output folder")
    data_dir, tok_dir, ckpt_dir, bundle = (
        out / "data",
        out / "tokenizer",
        out / "model" / "checkpoints",
        out / "bundle",
    )
    qa, train_txt, test_txt = data_dir / "qa.txt", data_dir / "train.txt", data_dir / "test.txt"
    tokenized = data_dir / "tokenized"
    tok_prefix = tok_dir / "tokenizer"
    tok_model = tok_dir / "tokenizer.model"
    best = ckpt_dir / "best_model.pt"
    if options.export_checkpoint not in ("best", "last"):
        raise ConfigError(f"export_checkpoint must be 'best' or 'last', got {options.export_checkpoint!r}")
    # the newest checkpoint of the run, whatever its name (early stopping and keep-last change it)
    last = ckpt_dir / "last_model.pt"
    exported = best if options.export_checkpoint == "best" else last
    eval_json = out / "eval.json"
    runner = StepRunner(out, echo=echo, force=options.force)
    total = 7
    choices: list[Choice] = []

    def announce(choice: Choice, given: int | str | None) -> Any:
        if given is not None:
            echo(f"      {choice.flag} {given} (given)")
            return given
        choices.append(choice)
        echo(f"      {choice}")
        return choice.value

    # 1. convert
    convert_opts: dict[str, Any] = {
        k: v
        for k, v in {
            "format": options.input_format,
            "question_field": options.question_field,
            "answer_field": options.answer_field,
            "table": options.table,
            "query": options.query,
            "records_key": options.records_key,
            "encoding": options.encoding,
            "delimiter": options.delimiter,
            "skip_invalid": options.skip_invalid or None,
        }.items()
        if v is not None
    }

    def do_convert() -> str:
        report = convert(options.input, qa, overwrite=True, **convert_opts)
        return f"{report.written:,} pairs -> {qa}"

    runner.run_one(
        Step("convert", f"Convert {options.input}", [options.input], [qa], do_convert, convert_opts), 1, total
    )

    # 2. hold out a test split
    def do_split() -> str:
        report = split(qa, data_dir, val=0.0, test=options.test_fraction, seed=options.seed, overwrite=True)
        return f"{report.pairs['train']:,} train / {report.pairs['test']:,} held-out pairs"

    if options.test_fraction > 0:
        split_params = {"test": options.test_fraction, "seed": options.seed}
        runner.run_one(
            Step("split", "Hold out test pairs", [qa], [train_txt, test_txt], do_split, split_params),
            2,
            total,
        )
        eval_data = test_txt
    else:
        train_txt, eval_data = qa, qa
        echo(f"[2/{total}] Hold out test pairs: --test-fraction 0, evaluating on the training pairs")

    # 3. tokenizer
    vocab = announce(choose_vocab_size(train_txt), options.vocab_size)

    def do_tokenizer() -> str:
        try:
            train_tokenizer(train_txt, tok_prefix, vocab_size=vocab)
            return f"vocab {vocab} -> {tok_model}"
        except VocabSizeError as exc:
            if options.vocab_size is not None or exc.high is None:
                raise  # the user's own choice, or no usable range known: report it as it is
            fitted = min(max(vocab, exc.low), exc.high)
            echo(f"      vocab size {vocab} does not fit this corpus ({exc.low}..{exc.high}): using {fitted}")
            train_tokenizer(train_txt, tok_prefix, vocab_size=fitted)
            return f"vocab {fitted} -> {tok_model}"

    runner.run_one(
        Step(
            "tokenizer",
            "Train the tokenizer",
            [train_txt],
            [tok_model],
            do_tokenizer,
            {"vocab": vocab, "seed": options.seed},
        ),
        3,
        total,
    )

    # 4. tokenize
    def length_choice() -> dict[str, Any]:  # encodes every pair: remembered while its inputs stay
        tokenizer = Tokenizer(tok_model)
        lengths = [len(tokenizer.encode_pair(p.question, p.answer)[0]) for p in read_qa_text(train_txt)]
        return asdict(choose_max_length(lengths))

    if options.max_length is None:
        max_length = announce(
            Choice(**runner.memo("max_length", [train_txt, tok_model], length_choice)), None
        )
    else:
        max_length = announce(Choice("--max-length", options.max_length, ""), options.max_length)

    def do_tokenize() -> str:
        manifest = tokenize_dataset(
            train_txt,
            tok_model,
            tokenized,
            max_length=max_length,
            train_split=1 - options.val_fraction,
            seed=options.seed,
        )
        return f"{manifest.train_sequences:,} train / {manifest.val_sequences:,} val sequences of {max_length} tokens"

    runner.run_one(
        Step(
            "tokenize",
            "Tokenize",
            [train_txt, tok_model],
            [tokenized / "train.npy", tokenized / "val.npy", tokenized / "metadata.json"],
            do_tokenize,
            {"max_length": max_length, "val": options.val_fraction, "seed": options.seed},
        ),
        4,
        total,
    )

    # 5. train (an interrupted run resumes from its newest checkpoint)
    def size_choice() -> dict[str, Any]:  # measures the presets' speed: remembered while its inputs stay
        return asdict(choose_size(tokenized, options))

    model_size = options.model_size
    if model_size is None:
        size_inputs = [tokenized / "train.npy", tokenized / "metadata.json"]
        memo = runner.memo(f"model_size-{options.time_budget}-{options.device}", size_inputs, size_choice)
        model_size = announce(Choice(**memo), None)
    else:
        announce(Choice("--model-size", model_size, ""), model_size)
    train_params: dict[str, Any] = {
        "model_size": model_size,
        "num_epochs": options.num_epochs,
        "time_budget": options.time_budget,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "warmup_steps": options.warmup_steps,
        "seed": options.seed,
        **options.extra_train,
    }

    def do_train() -> str:
        resume = any(ckpt_dir.glob("checkpoint_*.pt"))
        if resume:
            echo("      resuming from the newest checkpoint in " + str(ckpt_dir))
        config = TrainingConfig(
            train_data_path=str(tokenized / "train.npy"),
            val_data_path=str(tokenized / "val.npy"),
            checkpoint_dir=str(ckpt_dir),
            device=options.device,
            resume=resume,
            **train_params,
        )
        result = train_model(config, EpochLines())
        if options.export_checkpoint == "last":
            if result.last_checkpoint is None:
                raise ConfigError("training saved no checkpoint to export", where=str(ckpt_dir))
            _link_or_copy(result.last_checkpoint, last)
            return f"best val loss {result.best_val_loss:.4f}; last checkpoint -> {last}"
        return f"best val loss {result.best_val_loss:.4f} -> {best}"

    runner.run_one(
        Step(
            "train",
            "Train the model",
            [tokenized / "train.npy", tokenized / "val.npy"],
            [exported],
            do_train,
            train_params,
        ),
        5,
        total,
    )

    # 6. export
    def do_export() -> str:
        export_bundle(exported, bundle, tokenizer_path=tok_model, quantize=options.quantize)
        return f"{exported.name} as an ONNX bundle -> {bundle}"

    runner.run_one(
        Step(
            "export",
            "Export to ONNX",
            [exported, tok_model],
            [bundle],
            do_export,
            {"quantize": options.quantize},
        ),
        6,
        total,
    )

    # 7. evaluate on the held-out pairs with the torch-free runtime
    def do_eval() -> str:
        report = evaluate(TextGenerator.from_bundle(bundle), eval_data, answers=PIPELINE_ANSWERS)
        atomic_write_text(eval_json, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
        return (
            f"{report.pairs} pairs: answer BPB {report.answer_bpb:.3f}; answers to {report.answered}: EOS "
            f"share {report.eos_share:.2f}, loop rate {report.loop_rate:.2f} (greedy, <= {report.max_length} "
            "tokens), exact match "
            f"{report.exact_match:.3f}, token F1 {report.token_f1:.3f}, ROUGE-L {report.rouge_l:.3f}, "
            f"answer perplexity {report.perplexity:.2f}"
        )

    # the params name what eval.json measures: an eval.json of an older definition is redone
    measures = {
        "metrics": "answer_bpb eos_share loop_rate em f1 rouge_l",
        "max_length": DEFAULT_MAX_LENGTH,
        "answers": PIPELINE_ANSWERS,
    }
    runner.run_one(
        Step("evaluate", "Evaluate on held-out pairs", [bundle, eval_data], [eval_json], do_eval, measures),
        7,
        total,
    )
    metrics = json.loads(eval_json.read_text(encoding="utf-8"))
    return PipelineResult(
        out=out, bundle=bundle, checkpoint=exported, tokenizer=tok_model, choices=choices, metrics=metrics
    )
