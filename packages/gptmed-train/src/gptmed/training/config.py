"""``TrainingConfig``: every setting of a ``gptmed-train`` run, one field per command-line flag.

The fields the user manual lists (``batch_size``, ``learning_rate``, ``num_epochs``,
``warmup_steps``, ``grad_clip``, ``weight_decay``, ``save_every``, ``eval_every``,
``train_data_path``, ``val_data_path``, ``checkpoint_dir``, ``device``, ``seed``) keep their names;
the rest are the trainer's extra flags. Construction validates: a bad value raises
:class:`~gptmed.core.ConfigError` (a ``ValueError``) that names the field and the value.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from gptmed.core import DEFAULT_MODEL_SIZE, PRESETS, ConfigError, parse_duration

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_MODEL_SIZE", "LOSS_ON", "PRECISIONS", "TrainingConfig"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_EPOCHS = 10  # epochs when neither num_epochs nor a time budget is given
LOSS_ON = ("answer", "all")

# Fields that describe *where this run is* rather than *what is trained*: on resume they are never
# taken from the checkpoint's saved config.
_NOT_RESUMED = frozenset(
    {"resume", "resume_from", "checkpoint_dir", "device", "compile", "padding_free", "progress"}
)


@dataclass
class TrainingConfig:
    """Settings of one training run. ``None`` in an optional field means "the default" (see comment)."""

    # --- the model -------------------------------------------------------------------------------
    model_size: str | None = (
        None  # preset: tiny | small | medium; None = small (or the checkpoint's on resume)
    )
    d_model: int | None = None  # override the preset's hidden width
    n_layers: int | None = None  # override the preset's number of blocks
    n_heads: int | None = None  # override the preset's attention heads
    d_ff: int | None = None  # override the preset's feed-forward width
    dropout: float | None = None  # dropout on embeddings, attention and MLP outputs; None = 0
    use_rope: bool | None = None  # override the preset's position encoding (True = RoPE)
    # vocab_size and max_seq_len always come from the dataset's metadata.json

    # --- optimisation ----------------------------------------------------------------------------
    batch_size: int = 16  # sequences per micro-batch, over all processes together
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum)
    learning_rate: float | None = None  # peak learning rate (after warmup); None = by width and batch
    min_lr_ratio: float = 0.1  # the cosine schedule ends at learning_rate * min_lr_ratio
    num_epochs: int | None = None  # passes over train.npy (the LR schedule spans them); None = 10, or
    # with time_budget as many as fit (a given number is then an upper bound)
    time_budget: float | None = None  # seconds for the whole run (steps, evaluations, checkpoints):
    # the run measures its step time, plans its steps and spreads the LR schedule over them
    max_steps: int | None = None  # stop after this many optimizer steps (None = run all epochs)
    warmup_steps: int | None = None  # linear warmup from 0 to learning_rate; None = 3% of the steps (<= 100)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    weight_decay: float = 0.01  # AdamW decay on matrices (never on norms, biases, embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    loss_on: str = "answer"  # "answer": answer tokens + EOS (the mask); "all": every non-pad token
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 on a CUDA GPU that has it, else fp32
    compile: bool = False  # torch.compile the model
    padding_free: bool | None = None  # drop padding on the host, one flat row per batch; None = on CUDA
    seed: int = 42  # model init, dropout and data order

    # --- evaluation, checkpoints, stopping -------------------------------------------------------
    eval_every: int = 0  # also evaluate every N steps (0 = only at the end of each epoch)
    save_every: int = 0  # also save checkpoint_step_N.pt every N optimizer steps (0 = only each epoch)
    keep_last: int = 0  # keep the newest K checkpoint_epoch_*.pt (0 = all); step checkpoints: K, or 2 if 0
    early_stopping_patience: int = 0  # stop after N evaluations without a better val loss (0 = never)
    log_every: int = 1  # write a metrics.jsonl row every N steps
    max_eval_batches: int | None = None  # evaluate on at most this many val batches (None = all)
    tensorboard: bool = False  # also write TensorBoard events to checkpoint_dir/tensorboard (extra)

    # --- files and devices -----------------------------------------------------------------------
    train_data_path: str = "data/tokenized/train.npy"  # metadata.json is read from this file's folder
    val_data_path: str = "data/tokenized/val.npy"
    checkpoint_dir: str = "model/checkpoints"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps; auto = CUDA when present
    resume: bool = False  # continue from the newest valid checkpoint in checkpoint_dir
    resume_from: str | None = None  # continue from this checkpoint file
    quick_test: bool = False  # tiny model, few steps: checks the pipeline in under a minute on a CPU
    progress: bool | None = None  # progress bar: None = only when stderr is a terminal

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""

        def pos_int(name: str, allow_zero: bool = False, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (value >= 0 if allow_zero else value > 0)
            )
            if not ok:
                need = "an integer >= 0" if allow_zero else "a positive integer"
                raise ConfigError(f"TrainingConfig.{name} must be {need}, got {value!r}")

        def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"TrainingConfig.{name} must be a finite number, got {value!r}")
            if value < low or (low_open and value == low) or value > high:
                low_text = f"{low:g}"
                want = (
                    (f"> {low_text}" if low_open else f">= {low_text}")
                    if high == math.inf
                    else f"in {'(' if low_open else '['}{low_text}, {high:g}]"
                )
                raise ConfigError(f"TrainingConfig.{name} must be {want}, got {value!r}")

        if self.model_size is not None and self.model_size not in PRESETS:
            raise ConfigError(f"unknown model size {self.model_size!r}; choose one of {sorted(PRESETS)}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_steps", "max_eval_batches"):
            pos_int(name, optional=True)
        if self.dropout is not None and not (
            isinstance(self.dropout, (int, float))
            and not isinstance(self.dropout, bool)
            and 0 <= self.dropout < 1
        ):
            raise ConfigError(f"TrainingConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("batch_size", "grad_accum", "log_every"):
            pos_int(name)
        pos_int("num_epochs", optional=True)
        pos_int("warmup_steps", allow_zero=True, optional=True)
        for name in ("eval_every", "save_every", "keep_last", "early_stopping_patience"):
            pos_int(name, allow_zero=True)
        if self.learning_rate is not None:
            number("learning_rate", 0.0, low_open=True)
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget, name="TrainingConfig.time_budget")
        number("min_lr_ratio", 0.0, 1.0)
        number("grad_clip", 0.0)
        number("weight_decay", 0.0)
        number("beta1", 0.0, 1.0)
        number("beta2", 0.0, 1.0)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"TrainingConfig.seed must be an integer, got {self.seed!r}")
        if self.loss_on not in LOSS_ON:
            raise ConfigError(f"TrainingConfig.loss_on must be one of {list(LOSS_ON)}, got {self.loss_on!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"TrainingConfig.precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        for name in ("train_data_path", "val_data_path", "checkpoint_dir", "device"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"TrainingConfig.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.resume_from, os.PathLike):
            self.resume_from = os.fspath(self.resume_from)

    # ------------------------------------------------------------------------------------------
    @property
    def resolved_model_size(self) -> str:
        return self.model_size or DEFAULT_MODEL_SIZE

    @property
    def epoch_limit(self) -> int | None:
        """Epochs to run: ``num_epochs``, else 10; with a time budget and no ``num_epochs``, no limit."""
        if self.num_epochs is not None:
            return self.num_epochs
        return None if self.time_budget is not None else DEFAULT_EPOCHS

    def replace(self, **changes: Any) -> TrainingConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what checkpoints record as ``training_config``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "training config") -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrainingConfig:
        """Read a ``--config`` file: JSON, or TOML (``.toml``, optional ``[training]`` table)."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found") from None
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # pragma: no cover - Python 3.10
                raise ConfigError(f"{p}: TOML configs need Python 3.11+; use JSON") from None
            try:
                data = tomllib.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{p}: not valid TOML ({exc})") from None
            data = data.get("training", data)
        else:
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(
                    f"{p}: not valid JSON ({exc})", hint="a --config file is a JSON object"
                ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected an object of settings, got {type(data).__name__}")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        return cls.from_dict(data, source=str(p))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
        return out

    def merged_with_checkpoint(
        self, saved: dict[str, Any], explicit: set[str] | None = None
    ) -> TrainingConfig:
        """The config a resumed run uses: the checkpoint's saved settings, overridden by this one's.

        A setting overrides when it is in ``explicit`` (the flags the user typed) or, when
        ``explicit`` is None, when it differs from its default. Run-location settings (checkpoint
        folder, device, resume flags) always come from this config.
        """
        defaults = self.defaults()
        known = {f.name for f in fields(self)}
        data = self.to_dict()
        for name, value in saved.items():
            if name not in known or name in _NOT_RESUMED:
                continue
            given = (name in explicit) if explicit is not None else (data[name] != defaults.get(name))
            if not given:
                data[name] = value
        return TrainingConfig.from_dict(data, source="checkpoint training_config")
