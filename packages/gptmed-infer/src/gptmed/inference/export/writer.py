"""Writing a bundle: a training checkpoint -> a verified, self-describing bundle folder.

All work happens in a staging folder beside ``out_dir`` (``.OUT.tmp-PID-XXXX``) that replaces it
only when every gate passed; on any failure, ``KeyboardInterrupt`` and SIGTERM included (gptmed-core's
``cli_errors`` turns it into ``SystemExit``), nothing is left behind. The stages
(:func:`export_stages`), reported through the optional ``progress`` callback:

1. load the checkpoint (``torch.load(weights_only=True)``) and the tokenizer it records
   (verified by sha256), build the ``GPTTransformer``;
2. write ``model.onnx`` (:mod:`gptmed.inference.export.graph`);
3. the parity gate (:mod:`gptmed.inference.export.parity`);
4. with ``quantize="int8"``, ``model.int8.onnx`` and its gate (:mod:`gptmed.inference.export.int8`);
5. ``genai_config.json`` (:mod:`gptmed.inference.export.genai`), ``tokenizer.model`` and
   ``gptmed.json``; the folder is loaded as the runtime will load it, then put in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gptmed.core import (
    BundleError,
    BundleManifest,
    CheckpointError,
    CheckpointManifest,
    GenerationConfig,
    ManifestError,
    SpecialIds,
    make_folder,
    missing_folders,
    remove_empty_folders,
    sha256_file,
)
from gptmed.core.io import TEMP_MARKER
from gptmed.inference.backends import OnnxBackend
from gptmed.inference.bundle import (
    BUNDLE_MANIFEST,
    GENAI_CONFIG,
    GRAPH_LAYOUT,
    MODEL_FILE,
    MODEL_INT8_FILE,
    TOKENIZER_FILE,
    Bundle,
    load_bundle,
)
from gptmed.inference.export.genai import genai_config
from gptmed.inference.export.graph import OPSET, export_onnx
from gptmed.inference.export.int8 import INT8_MIN_AGREEMENT, quantize_int8
from gptmed.inference.export.parity import PARITY_PROMPTS, check_parity, prompt_set
from gptmed.inference.generator import load_tokenizer, recorded_tokenizer

__all__ = ["ExportProgress", "ExportReport", "export_bundle", "export_bundle_report", "export_stages"]

_log = logging.getLogger(__name__)

ExportProgress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``: called as each stage starts (``done`` stages finished out of
``total``) and once more with ``done == total`` and ``stage == "done"`` when the bundle is in place."""

LOAD, GRAPH, PARITY, INT8, WRITE = (
    "loading the checkpoint",
    f"writing {MODEL_FILE}",
    "parity gate",
    "int8 gate",
    "writing the bundle",
)


def export_stages(quantize: str | None = None) -> list[str]:
    """The stages an export with ``quantize`` goes through, in order (see the module docstring)."""
    return [LOAD, GRAPH, PARITY, *([INT8] if quantize == "int8" else []), WRITE]


@dataclass
class ExportReport:
    """What an export did and measured."""

    out_dir: Path
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    parity: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class _Source:
    """The checkpoint being exported, with its model and its (verified) tokenizer."""

    checkpoint: Path
    model: Any  # GPTTransformer, eval mode
    manifest: CheckpointManifest | None
    tokenizer: Any  # gptmed.tokenizer.Tokenizer
    tokenizer_path: Path

    @property
    def special_ids(self) -> SpecialIds:
        return self.manifest.special_ids if self.manifest else self.tokenizer.special_ids


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in (
        "gptmed-infer",
        "gptmed-core",
        "gptmed-model",
        "gptmed-tokenizer",
        "torch",
        "onnx",
        "onnxruntime",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    out["onnx_opset"] = str(OPSET)
    return out


# ----------------------------------------------------------------------------------- the source


def _resolve_tokenizer(
    tokenizer_path: str | os.PathLike[str] | None, manifest: CheckpointManifest | None, checkpoint: Path
) -> Path:
    if tokenizer_path is not None:
        return Path(tokenizer_path)
    recorded = manifest.extra.get("tokenizer_path") if manifest else None
    if not recorded:
        raise ManifestError(
            "the checkpoint records no tokenizer",
            where=str(checkpoint),
            hint="pass --tokenizer PATH.model (the tokenizer the model was trained with)",
        )
    return recorded_tokenizer(recorded, manifest.tokenizer_sha256 if manifest else "", str(checkpoint))


def _load_source(ckpt: Path, tokenizer_path: str | os.PathLike[str] | None) -> _Source:
    """The model and manifest of ``ckpt`` and the tokenizer it was trained with (sha256 and
    vocabulary size checked)."""
    from gptmed.inference.export.torch_backend import load_checkpoint_model

    model, manifest = load_checkpoint_model(ckpt)
    tok_path = _resolve_tokenizer(tokenizer_path, manifest, ckpt)
    tokenizer = load_tokenizer(tok_path, manifest.template) if manifest else load_tokenizer(tok_path)
    if manifest and manifest.tokenizer_sha256 and manifest.tokenizer_sha256 != tokenizer.sha256:
        raise ManifestError(
            f"tokenizer {tok_path} (sha256 {tokenizer.sha256[:12]}...) is not the one the checkpoint was trained "
            f"with (sha256 {manifest.tokenizer_sha256[:12]}...)",
            where=str(tok_path),
            hint="pass the tokenizer recorded in the checkpoint (or omit --tokenizer)",
        )
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ManifestError(
            f"tokenizer has {tokenizer.vocab_size} ids, the model {model.config.vocab_size}",
            where=str(tok_path),
            hint="use the tokenizer the model was trained with",
        )
    return _Source(ckpt, model, manifest, tokenizer, tok_path)


def _not_a_checkpoint(ckpt: Path) -> None:
    """Refuse a bundle folder (or any folder, or an .onnx file) given as the checkpoint to export."""
    if not (ckpt.is_dir() or ckpt.suffix == ".onnx"):
        return
    root = ckpt if ckpt.is_dir() else ckpt.parent
    if (root / BUNDLE_MANIFEST).is_file():
        source = None
        with contextlib.suppress(Exception):
            source = BundleManifest.load(root / BUNDLE_MANIFEST).extra.get("checkpoint")
        if source and not Path(source).is_file():
            source = None
        raise CheckpointError(
            f"export needs a training checkpoint (.pt file); {root} is already an exported bundle",
            hint=f"pass --checkpoint {source} (the checkpoint it was exported from)"
            if source
            else "pass --checkpoint with the .pt file it was exported from",
        )
    if ckpt.is_dir():
        raise CheckpointError(
            f"export needs a training checkpoint (.pt file); {ckpt} is a folder",
            hint="pass --checkpoint with a .pt file, such as model/checkpoints/best_model.pt",
        )


# ----------------------------------------------------------------------------------- the output


def _staging_prefix(out: Path) -> str:
    return f".{out.name}{TEMP_MARKER}"  # the name gptmed-core gives temp files


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def _remove_stale_staging(out: Path) -> list[Path]:
    """Remove ``.OUT.tmp-*`` staging folders beside ``out`` that a killed export left behind.

    A staging folder is named ``.OUT.tmp-PID-XXXX``; one whose process still runs (another export
    to the same folder) is kept, and so is anything that is not a folder. Names without a PID
    (older versions) are stale by definition. Returns the folders removed."""
    prefix = _staging_prefix(out)
    removed: list[Path] = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        _log.info("removed %d staging folder(s) of killed exports: %s", len(removed), removed)
    return removed


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder that is not a bundle (never replaced)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError("output exists and is not a folder", where=str(out), hint="choose another --out")
    if any(out.iterdir()) and not (out / BUNDLE_MANIFEST).is_file():
        raise BundleError(
            "output folder is not empty and is not a bundle; refusing to replace it",
            where=str(out),
            hint="choose an empty or new --out folder",
        )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the staging folder ``tmp`` at ``out``; a previous bundle there is replaced, and put back
    if the swap is interrupted."""
    _check_out(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if not out.exists():
            os.replace(old, out)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------- the export


def export_bundle(
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    *,
    parity_prompts: Sequence[str] = PARITY_PROMPTS,
    min_int8_agreement: float = INT8_MIN_AGREEMENT,
    generation: GenerationConfig | None = None,
    progress: ExportProgress | None = None,
) -> Path:
    """Export the checkpoint at ``checkpoint_path`` to the bundle folder ``out_dir``; return it.

    See :func:`export_bundle_report` for the measurements.
    """
    return export_bundle_report(
        checkpoint_path,
        out_dir,
        tokenizer_path,
        quantize,
        parity_prompts=parity_prompts,
        min_int8_agreement=min_int8_agreement,
        generation=generation,
        progress=progress,
    ).out_dir


def export_bundle_report(
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    *,
    parity_prompts: Sequence[str] = PARITY_PROMPTS,
    min_int8_agreement: float = INT8_MIN_AGREEMENT,
    generation: GenerationConfig | None = None,
    progress: ExportProgress | None = None,
) -> ExportReport:
    """:func:`export_bundle` returning an :class:`ExportReport` (sizes, parity figures, int8 figures).

    ``progress(done, total, stage)`` (optional) hears of each stage (:data:`ExportProgress`)."""
    start = time.perf_counter()
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    ckpt, out = Path(checkpoint_path), Path(out_dir)
    _not_a_checkpoint(ckpt)
    _check_out(out)
    stages = export_stages(quantize)

    def stage(name: str) -> None:
        if progress is not None:
            progress(stages.index(name), len(stages), name)

    made = missing_folders(out.parent)
    make_folder(out.parent, "the bundle's parent folder")  # before the work: a bad --out fails at once
    try:
        stage(LOAD)
        source = _load_source(ckpt, tokenizer_path)
        report = ExportReport(out_dir=out)
        # the PID in the name tells a later export whether this one is still running (stale: removed)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}-", dir=out.parent))
        try:  # any exception, KeyboardInterrupt and SystemExit (SIGTERM via cli_errors) too: no staging left
            os.chmod(tmp, 0o755)
            _write_bundle(
                tmp,
                source,
                report,
                generation or GenerationConfig(),
                quantize,
                parity_prompts,
                min_int8_agreement,
                stage,
            )
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException:
        remove_empty_folders(made)
        raise
    _remove_stale_staging(out)
    if progress is not None:
        progress(len(stages), len(stages), "done")
    report.seconds = time.perf_counter() - start
    return report


def _manifest(
    source: _Source,
    files: dict[str, str],
    io: tuple[list[str], list[str]],
    generation: GenerationConfig,
    extra: dict[str, Any],
    versions: dict[str, str] | None = None,
) -> BundleManifest:
    return BundleManifest(
        model_config=source.model.config,
        files=dict(files),
        inputs=io[0],
        outputs=io[1],
        special_ids=source.special_ids,
        template=source.tokenizer.template,
        generation=generation,
        tokenizer_sha256=source.tokenizer.sha256,
        versions=versions or {},
        extra=extra,
    )


def _write_bundle(
    tmp: Path,
    source: _Source,
    report: ExportReport,
    generation: GenerationConfig,
    quantize: str | None,
    parity_prompts: Sequence[str],
    min_int8_agreement: float,
    stage: Callable[[str], None],
) -> None:
    """Every file of the bundle into ``tmp``, gates passed; ``report`` gets the figures."""
    from gptmed.inference.export.torch_backend import TorchBackend

    stage(GRAPH)
    io = export_onnx(source.model, tmp / MODEL_FILE)
    shutil.copyfile(source.tokenizer_path, tmp / TOKENIZER_FILE)
    files = {MODEL_FILE: sha256_file(tmp / MODEL_FILE), TOKENIZER_FILE: source.tokenizer.sha256}
    # the gates run the graph through the runtime, which needs a manifest beside it
    draft = _manifest(source, files, io, generation, {"graph_layout": GRAPH_LAYOUT})
    draft.save(tmp / BUNDLE_MANIFEST)

    def onnx_backend(path: Path) -> OnnxBackend:
        return OnnxBackend(Bundle(tmp, draft, path.name, path.read_bytes(), tmp / TOKENIZER_FILE))

    stage(PARITY)
    fp32 = onnx_backend(tmp / MODEL_FILE)
    prompts = prompt_set(source.tokenizer, source.model.config, parity_prompts)
    report.parity = check_parity(TorchBackend(source.model), fp32, prompts)
    _log.info("parity gate passed: %s", report.parity)
    extra: dict[str, Any] = {
        "parity": report.parity,
        "checkpoint": str(source.checkpoint.resolve()),
        "checkpoint_sha256": sha256_file(source.checkpoint),
        "variants": {"fp32": MODEL_FILE},
        "graph_layout": GRAPH_LAYOUT,
    }
    if source.manifest is not None:
        extra["step"] = source.manifest.step
        extra["val_loss"] = source.manifest.extra.get("val_loss")
    if quantize == "int8":
        stage(INT8)
        report.int8 = quantize_int8(
            tmp / MODEL_FILE,
            tmp / MODEL_INT8_FILE,
            fp32,
            onnx_backend,
            prompts,
            min_int8_agreement,
            generation,
        )
        files[MODEL_INT8_FILE] = sha256_file(tmp / MODEL_INT8_FILE)
        extra["int8"] = report.int8
        extra["variants"]["int8"] = MODEL_INT8_FILE
    stage(WRITE)
    genai = genai_config(source.model.config, source.special_ids, generation)
    (tmp / GENAI_CONFIG).write_text(json.dumps(genai, indent=2) + "\n", encoding="utf-8")
    files[GENAI_CONFIG] = sha256_file(tmp / GENAI_CONFIG)
    _manifest(source, files, io, generation, extra, _versions()).save(tmp / BUNDLE_MANIFEST)
    load_bundle(tmp)  # the bundle verifies as the runtime will see it
    report.files = {name: (tmp / name).stat().st_size for name in [*files, BUNDLE_MANIFEST]}
