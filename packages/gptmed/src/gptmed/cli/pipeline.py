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
    if options.export_checkpoint not in ("best", "last"):
        raise ConfigError(f"export_checkpoint must be 'best' or 'last', got {options.export_checkpoint!r}")
    run = _PipelineRun(options, echo)
    run.convert()
    eval_data = run.split()
    run.train_tokenizer()
    run.tokenize()
    run.train()
    run.export()
    run.evaluate(eval_data)
    metrics = json.loads(run.eval_json.read_text(encoding="utf-8"))
    return PipelineResult(
        out=run.out,
        bundle=run.bundle,
        checkpoint=run.exported,
        tokenizer=run.tok_model,
        choices=run.choices,
        metrics=metrics,
    )


def _epoch_lines(echo: Callable[[str], None]) -> Any:
    """Training callbacks that print one line per epoch: enough to watch a pipeline train."""
    from gptmed.training import TrainCallbacks

    class EpochLines(TrainCallbacks):
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

    return EpochLines()


class _PipelineRun:
    """The seven steps of one pipeline run over one output folder, each a method.

    Component imports happen inside the methods: ``gptmed --help`` must stay fast and work on
    partial installs."""

    TOTAL = 7

    def __init__(self, options: PipelineOptions, echo: Callable[[str], None]) -> None:
        self.options, self.echo = options, echo
        self.out = out = make_folder(options.out, "output folder")
        self.data_dir = out / "data"
        self.qa = self.data_dir / "qa.txt"
        self.train_txt, self.test_txt = self.data_dir / "train.txt", self.data_dir / "test.txt"
        self.tokenized = self.data_dir / "tokenized"
        self.tok_model = out / "tokenizer" / "tokenizer.model"
        self.ckpt_dir = out / "model" / "checkpoints"
        self.best = self.ckpt_dir / "best_model.pt"
        self.last = self.ckpt_dir / "last_model.pt"  # the run's newest checkpoint, whatever its name
        self.exported = self.best if options.export_checkpoint == "best" else self.last
        self.bundle = out / "bundle"
        self.eval_json = out / "eval.json"
        self.runner = StepRunner(out, echo=echo, force=options.force)
        self.choices: list[Choice] = []

    def _announce(self, choice: Choice, given: int | str | None) -> Any:
        """Print a setting: the user's value as given, else the chosen one with its reason."""
        if given is not None:
            self.echo(f"      {choice.flag} {given} (given)")
            return given
        self.choices.append(choice)
        self.echo(f"      {choice}")
        return choice.value

    def _step(self, number: int, step: Step) -> None:
        self.runner.run_one(step, number, self.TOTAL)

    def convert(self) -> None:
        from gptmed.data import convert

        o = self.options
        fields = {
            "format": o.input_format,
            "question_field": o.question_field,
            "answer_field": o.answer_field,
            "table": o.table,
            "query": o.query,
            "records_key": o.records_key,
            "encoding": o.encoding,
            "delimiter": o.delimiter,
            "skip_invalid": o.skip_invalid or None,
        }
        given: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}

        def do_convert() -> str:
            report = convert(o.input, self.qa, overwrite=True, **given)
            return f"{report.written:,} pairs -> {self.qa}"

        self._step(1, Step("convert", f"Convert {o.input}", [o.input], [self.qa], do_convert, given))

    def split(self) -> Path:
        """Hold out the test pairs; returns the file the last step evaluates on."""
        from gptmed.data import split

        o = self.options
        if o.test_fraction <= 0:
            self.train_txt = self.qa
            self.echo(
                f"[2/{self.TOTAL}] Hold out test pairs: --test-fraction 0, evaluating on the training pairs"
            )
            return self.qa

        def do_split() -> str:
            report = split(self.qa, self.data_dir, val=0.0, test=o.test_fraction, seed=o.seed, overwrite=True)
            return f"{report.pairs['train']:,} train / {report.pairs['test']:,} held-out pairs"

        params = {"test": o.test_fraction, "seed": o.seed}
        outputs = [self.train_txt, self.test_txt]
        self._step(2, Step("split", "Hold out test pairs", [self.qa], outputs, do_split, params))
        return self.test_txt

    def train_tokenizer(self) -> None:
        from gptmed.tokenizer import VocabSizeError, train_tokenizer

        o = self.options
        vocab = self._announce(choose_vocab_size(self.train_txt), o.vocab_size)
        prefix = self.tok_model.with_suffix("")

        def do_tokenizer() -> str:
            try:
                train_tokenizer(self.train_txt, prefix, vocab_size=vocab)
                return f"vocab {vocab} -> {self.tok_model}"
            except VocabSizeError as exc:
                if o.vocab_size is not None or exc.high is None:
                    raise  # the user's own choice, or no usable range known: report it as it is
                fitted = min(max(vocab, exc.low), exc.high)
                self.echo(
                    f"      vocab size {vocab} does not fit this corpus ({exc.low}..{exc.high}): using {fitted}"
                )
                train_tokenizer(self.train_txt, prefix, vocab_size=fitted)
                return f"vocab {fitted} -> {self.tok_model}"

        params = {"vocab": vocab, "seed": o.seed}
        step = Step(
            "tokenizer", "Train the tokenizer", [self.train_txt], [self.tok_model], do_tokenizer, params
        )
        self._step(3, step)

    def _length_choice(self) -> dict[str, Any]:
        """Encodes every pair: remembered in pipeline.json while its inputs stay the same."""
        from gptmed.tokenizer import Tokenizer

        tokenizer = Tokenizer(self.tok_model)
        pairs = read_qa_text(self.train_txt)
        return asdict(choose_max_length([len(tokenizer.encode_pair(p.question, p.answer)[0]) for p in pairs]))

    def tokenize(self) -> None:
        from gptmed.tokenizer import tokenize_dataset

        o = self.options
        if o.max_length is None:
            memo = self.runner.memo("max_length", [self.train_txt, self.tok_model], self._length_choice)
            max_length = self._announce(Choice(**memo), None)
        else:
            max_length = self._announce(Choice("--max-length", o.max_length, ""), o.max_length)

        def do_tokenize() -> str:
            manifest = tokenize_dataset(
                self.train_txt,
                self.tok_model,
                self.tokenized,
                max_length=max_length,
                train_split=1 - o.val_fraction,
                seed=o.seed,
            )
            return f"{manifest.train_sequences:,} train / {manifest.val_sequences:,} val sequences of {max_length} tokens"

        outputs = [self.tokenized / name for name in ("train.npy", "val.npy", "metadata.json")]
        params = {"max_length": max_length, "val": o.val_fraction, "seed": o.seed}
        self._step(
            4, Step("tokenize", "Tokenize", [self.train_txt, self.tok_model], outputs, do_tokenize, params)
        )

    def _model_size(self) -> str:
        o = self.options
        if o.model_size is not None:
            return str(self._announce(Choice("--model-size", o.model_size, ""), o.model_size))
        inputs = [self.tokenized / "train.npy", self.tokenized / "metadata.json"]
        # measures the presets' speed: remembered while its inputs (and the budget and device) stay
        memo = self.runner.memo(
            f"model_size-{o.time_budget}-{o.device}", inputs, lambda: asdict(choose_size(self.tokenized, o))
        )
        return str(self._announce(Choice(**memo), None))

    def train(self) -> None:
        """Train (an interrupted run resumes from its newest checkpoint)."""
        from gptmed.configs.train_config import TrainingConfig
        from gptmed.training import train_model

        o = self.options
        params: dict[str, Any] = {
            "model_size": self._model_size(),
            "num_epochs": o.num_epochs,
            "time_budget": o.time_budget,
            "batch_size": o.batch_size,
            "learning_rate": o.learning_rate,
            "warmup_steps": o.warmup_steps,
            "seed": o.seed,
            **o.extra_train,
        }

        def do_train() -> str:
            resume = any(self.ckpt_dir.glob("checkpoint_*.pt"))
            if resume:
                self.echo(f"      resuming from the newest checkpoint in {self.ckpt_dir}")
            config = TrainingConfig(
                train_data_path=str(self.tokenized / "train.npy"),
                val_data_path=str(self.tokenized / "val.npy"),
                checkpoint_dir=str(self.ckpt_dir),
                device=o.device,
                resume=resume,
                **params,
            )
            result = train_model(config, _epoch_lines(self.echo))
            if o.export_checkpoint == "best":
                return f"best val loss {result.best_val_loss:.4f} -> {self.best}"
            if result.last_checkpoint is None:
                raise ConfigError("training saved no checkpoint to export", where=str(self.ckpt_dir))
            _link_or_copy(result.last_checkpoint, self.last)
            return f"best val loss {result.best_val_loss:.4f}; last checkpoint -> {self.last}"

        inputs = [self.tokenized / "train.npy", self.tokenized / "val.npy"]
        self._step(5, Step("train", "Train the model", inputs, [self.exported], do_train, params))

    def export(self) -> None:
        from gptmed.inference.export import export_bundle

        quantize = self.options.quantize

        def do_export() -> str:
            export_bundle(self.exported, self.bundle, tokenizer_path=self.tok_model, quantize=quantize)
            return f"{self.exported.name} as an ONNX bundle -> {self.bundle}"

        inputs = [self.exported, self.tok_model]
        self._step(
            6, Step("export", "Export to ONNX", inputs, [self.bundle], do_export, {"quantize": quantize})
        )

    def evaluate(self, eval_data: Path) -> None:
        """Score the bundle on the held-out pairs with the torch-free runtime."""
        from gptmed.inference.evaluate import DEFAULT_MAX_LENGTH, evaluate
        from gptmed.inference.generator import TextGenerator

        def do_eval() -> str:
            report = evaluate(TextGenerator.from_bundle(self.bundle), eval_data, answers=PIPELINE_ANSWERS)
            atomic_write_text(self.eval_json, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
            return (
                f"{report.pairs} pairs: answer BPB {report.answer_bpb:.3f}; answers to {report.answered}: EOS "
                f"share {report.eos_share:.2f}, loop rate {report.loop_rate:.2f} (greedy, <= {report.max_length} "
                f"tokens), exact match {report.exact_match:.3f}, token F1 {report.token_f1:.3f}, "
                f"ROUGE-L {report.rouge_l:.3f}, answer perplexity {report.perplexity:.2f}"
            )

        # the params name what eval.json measures: an eval.json of an older definition is redone
        measures = {
            "metrics": "answer_bpb eos_share loop_rate em f1 rouge_l",
            "max_length": DEFAULT_MAX_LENGTH,
            "answers": PIPELINE_ANSWERS,
        }
        inputs = [self.bundle, eval_data]
        step = Step("evaluate", "Evaluate on held-out pairs", inputs, [self.eval_json], do_eval, measures)
        self._step(7, step)
