"""Versioned JSON manifests that make every artifact self-describing.

* :class:`DatasetManifest` -> ``metadata.json`` next to ``train.npy``/``val.npy``
* :class:`CheckpointManifest` -> the ``"manifest"`` entry of a training checkpoint
* :class:`BundleManifest` -> ``gptmed.json`` in an exported bundle

Each serialises to a dict with ``"format"`` and ``"version"``; reading a manifest of another
format, or of a newer version than this gptmed-core knows, raises :class:`ManifestError`.
``check_compatible`` compares the facts two artifacts share and names both values on a clash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from gptmed.core.config import GenerationConfig, ModelConfig
from gptmed.core.errors import ManifestError
from gptmed.core.io import atomic_write_text
from gptmed.core.template import DEFAULT_TEMPLATE, SPECIAL_IDS, PromptTemplate, SpecialIds

__all__ = [
    "BundleManifest",
    "CheckpointManifest",
    "DatasetManifest",
    "Manifest",
    "check_compatible",
    "installed_version",
]

M = TypeVar("M", bound="Manifest")


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` ("0.0.0" from a bare source tree).

    Imports :mod:`importlib.metadata` on first use only: it pulls in the email package, ~25-45 ms of
    every command's start-up, so each gptmed package's ``__version__`` calls this lazily.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


_NESTED = {
    "special_ids": SpecialIds,
    "template": PromptTemplate,
    "model_config": ModelConfig,
    "generation": GenerationConfig,
}


@dataclass(frozen=True)
class Manifest:
    """Base of the manifests: JSON (de)serialisation with a format name and a version."""

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": self.FORMAT, "version": self.VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls: type[M], data: dict[str, Any], source: str = "manifest") -> M:
        if not isinstance(data, dict):
            raise ManifestError(f"expected a JSON object, got {type(data).__name__}", where=source)
        fmt, version = data.get("format"), data.get("version")
        if fmt != cls.FORMAT:
            raise ManifestError(f"format is {fmt!r}, expected {cls.FORMAT!r}", where=source)
        if not isinstance(version, int) or version > cls.VERSION or version < 1:
            raise ManifestError(
                f"version {version!r} is not supported (this gptmed-core reads up to {cls.VERSION})",
                where=source,
                hint="upgrade gptmed-core",
            )
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            nested = _NESTED.get(f.name)
            try:
                kwargs[f.name] = nested.from_dict(value) if nested and value is not None else value  # type: ignore[attr-defined]
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"field {f.name!r} is invalid: {exc}", where=source) from None
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ManifestError(f"missing fields: {exc}", where=source) from None

    @classmethod
    def from_json(cls: type[M], text: str, source: str = "manifest") -> M:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"not valid JSON ({exc.msg} at line {exc.lineno})", where=source) from None
        return cls.from_dict(data, source)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls: type[M], path: str | os.PathLike[str]) -> M:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError("file not found", where=str(path)) from None
        return cls.from_json(text, str(path))


@dataclass(frozen=True)
class DatasetManifest(Manifest):
    """``metadata.json`` of a tokenized dataset."""

    FORMAT: ClassVar[str] = "gptmed.dataset"

    tokenizer_sha256: str  # sha256 of the .model file used
    vocab_size: int  # tokenizer vocabulary size
    max_length: int  # window length of every sequence
    stride: int  # step between sliding windows of one over-long pair
    train_sequences: int  # rows in train.npy
    val_sequences: int  # rows in val.npy
    train_pairs: int  # Q&A pairs that went to train
    val_pairs: int  # Q&A pairs that went to val
    input_sha256: str  # sha256 of the canonical Q&A text tokenized
    seed: int  # split seed
    train_split: float  # fraction of pairs in train
    dtype: str  # numpy dtype of the token arrays
    special_ids: SpecialIds = SPECIAL_IDS
    template: PromptTemplate = DEFAULT_TEMPLATE
    tokenizer_path: str = ""  # where the tokenizer was, for humans and defaults
    input_path: str = ""  # where the input was
    files: dict[str, str] = field(default_factory=dict)  # role -> file name (tokens, masks)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth recording


@dataclass(frozen=True)
class CheckpointManifest(Manifest):
    """The facts a training checkpoint carries besides tensors."""

    FORMAT: ClassVar[str] = "gptmed.checkpoint"

    model_config: ModelConfig
    step: int  # optimizer steps taken
    epoch: int  # epoch the next step belongs to (0-based)
    tokenizer_sha256: str = ""
    data_fingerprint: str = ""  # e.g. the dataset's input sha256 and counts, hashed
    template: PromptTemplate = DEFAULT_TEMPLATE
    special_ids: SpecialIds = SPECIAL_IDS
    training_config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleManifest(Manifest):
    """``gptmed.json``: everything the torch-free runtime needs to load a bundle."""

    FORMAT: ClassVar[str] = "gptmed.bundle"

    model_config: ModelConfig
    files: dict[str, str]  # file name -> sha256
    inputs: list[str]  # ONNX graph input names, in order
    outputs: list[str]  # ONNX graph output names, in order
    special_ids: SpecialIds = SPECIAL_IDS
    template: PromptTemplate = DEFAULT_TEMPLATE
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    tokenizer_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def check_compatible(
    a: Manifest,
    a_name: str,
    b: Manifest,
    b_name: str,
    keys: tuple[str, ...] = ("tokenizer_sha256", "template", "special_ids"),
) -> None:
    """Raise :class:`ManifestError` if ``a`` and ``b`` disagree on any shared fact in ``keys``.

    Empty values (``""``) are unknown and never clash.
    """
    clashes = []
    for key in keys:
        va, vb = getattr(a, key, None), getattr(b, key, None)
        if va is None or vb is None or va == "" or vb == "":
            continue
        if va != vb:
            clashes.append(f"{key}: {a_name} has {_short(va)}, {b_name} has {_short(vb)}")
    if clashes:
        raise ManifestError(
            f"{a_name} and {b_name} do not belong together (" + "; ".join(clashes) + ")",
            hint="use the tokenizer and data the model was trained with",
        )


def _short(value: object) -> str:
    text = json.dumps(value.to_dict()) if hasattr(value, "to_dict") else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
