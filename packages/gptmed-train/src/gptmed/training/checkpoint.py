"""Checkpoint files: atomic saves, safe loads, finding the newest valid one, pruning.

A checkpoint is ``torch.save`` of a dict holding only tensors, numbers, strings, lists and dicts
(see docs/training.md for the keys). It is written to a temp file in the same folder, fsynced and
renamed over the destination (:func:`gptmed.core.atomic_open`), so a crash or a full disk during a
save leaves the previous file intact; temp files left by a killed process are swept when the next
run takes the folder's lock. Loading always uses ``torch.load(weights_only=True)``: a file holding
a pickled object (``__reduce__``) is refused, a truncated or garbage file is reported as corrupt.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from gptmed.core import (
    CheckpointError,
    CheckpointManifest,
    DatasetManifest,
    ManifestError,
    ModelConfig,
    atomic_open,
    installed_version,
    sweep_temp_files,
)
from gptmed.model import clean_state_dict, unwrap
from gptmed.training.data import Dataset
from gptmed.training.distributed import DistInfo, all_gather_tensor

__all__ = [
    "REQUIRED_KEYS",
    "RunState",
    "build_checkpoint",
    "check_resume_matches",
    "checkpoint_files",
    "find_latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
    "sweep_temp_files",
    "warn_of_an_earlier_run",
]

log = logging.getLogger(__name__)

REQUIRED_KEYS = (
    "model_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "rng_state",
    "step",
    "epoch",
    "position",
    "model_config",
    "training_config",
    "manifest",
)

EPOCH_RE = re.compile(r"^checkpoint_epoch_(\d+)\.pt$")
STEP_RE = re.compile(r"^checkpoint_step_(\d+)\.pt$")


def _serialize(state: dict[str, Any], fh: IO[bytes]) -> None:
    """Write ``state`` to ``fh`` (one seam, so tests can inject a full disk or a slow write)."""
    torch.save(state, fh)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; on any failure ``path`` keeps its old content.

    Raises :class:`CheckpointError` (with the OS reason) when the write fails.
    """
    p = Path(path)
    _check_plain(state, "state")
    state = _on_cpu(state)
    try:
        with atomic_open(p, "wb") as fh:
            _serialize(state, fh)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointError(
            f"could not save checkpoint {p}: {reason}",
            hint="free disk space or choose another --checkpoint-dir; the previous checkpoints are intact",
        ) from exc
    return p


_PLAIN = (int, float, bool, str, type(None))


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor on the CPU, so that a checkpoint saved during GPU training loads
    on a machine without one by a plain ``torch.load`` (the user manual's step 5.2 passes no
    ``map_location``). ``torch.save`` copies GPU tensors to the host anyway; resuming on a GPU
    moves them back (``load_state_dict`` copies into the parameters' device)."""
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "cpu" else value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    if type(value) is dict:
        return {key: _on_cpu(item) for key, item in value.items()}
    return value


def _check_plain(value: Any, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` accepts: tensors, numbers, strings, lists, dicts."""
    if isinstance(value, torch.Tensor):
        return
    if type(value) in _PLAIN:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__qualname__}, "
        "which weights_only loading would refuse"
    )


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and check a checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError`: "checkpoint X is corrupt" for truncated/garbage/incomplete
    files, "checkpoint X is unsafe" for files holding arbitrary pickled objects, "not found".
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {p} not found", hint="check the path (gptmed-train --resume finds the newest)"
        )
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; torch.load's error is a page of prose
        raise CheckpointError(
            f"{p} is not a checkpoint (truncated, or another kind of file)", hint=_corrupt_hint(p)
        )
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text or "Unsupported class" in text:
            raise CheckpointError(
                f"checkpoint {p} is unsafe: it holds pickled Python objects, refused (weights_only loading)",
                hint="only load checkpoints written by gptmed-train from sources you trust",
            ) from None
        raise CheckpointError(
            f"checkpoint {p} is corrupt ({_first_line(text)})", hint=_corrupt_hint(p)
        ) from None
    except Exception as exc:  # garbage bytes make the unpickler fail in arbitrary ways (KeyError, ...)
        raise CheckpointError(
            f"checkpoint {p} is corrupt ({_first_line(str(exc))})", hint=_corrupt_hint(p)
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {p} is corrupt (expected a dict, got {type(state).__name__})", hint=_corrupt_hint(p)
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {p} is corrupt or not a gptmed-train checkpoint (missing {', '.join(missing)})",
            hint=_corrupt_hint(p),
        )
    try:
        CheckpointManifest.from_dict(state["manifest"], source=str(p))
    except ManifestError as exc:
        raise CheckpointError(f"checkpoint {p} is corrupt (manifest: {exc})", hint=_corrupt_hint(p)) from None
    return state


def _corrupt_hint(path: Path) -> str:
    """Delete only what is named like a checkpoint; a wrong file passed by mistake is kept."""
    if (
        EPOCH_RE.match(path.name)
        or STEP_RE.match(path.name)
        or path.name in ("best_model.pt", "last_model.pt")
    ):
        return "delete it and resume from an earlier checkpoint (gptmed-train --resume skips unreadable ones)"
    return "pass a checkpoint file (checkpoint_*.pt, best_model.pt) written by gptmed-train"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unreadable"
    return line if len(line) <= 160 else line[:157] + "..."


def checkpoint_files(folder: str | os.PathLike[str]) -> list[Path]:
    """``checkpoint_epoch_*.pt`` and ``checkpoint_step_*.pt`` in ``folder``, newest first (mtime)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir() if p.is_file() and (EPOCH_RE.match(p.name) or STEP_RE.match(p.name))]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def find_latest_checkpoint(
    folder: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads, with its state; corrupt ones are skipped (logged)."""
    for path in checkpoint_files(folder):
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            log.warning("skipping an unreadable checkpoint: %s", exc.message)
    return None


def prune_checkpoints(
    folder: str | os.PathLike[str], keep_last: int, protect: tuple[Path, ...] = ()
) -> list[Path]:
    """Delete old periodic checkpoints: keep the newest ``keep_last`` epoch files (0 = all) and the
    newest ``keep_last`` (or 2 when 0) step files. ``best_model.pt`` and ``protect`` are never touched."""
    removed: list[Path] = []
    files = checkpoint_files(folder)
    keep_protect = {p.resolve() for p in protect}
    epoch_files = [p for p in files if EPOCH_RE.match(p.name)]
    step_files = [p for p in files if STEP_RE.match(p.name)]
    doomed = (epoch_files[keep_last:] if keep_last > 0 else []) + step_files[(keep_last or 2) :]
    for p in doomed:
        if p.resolve() in keep_protect:
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


# -- what a checkpoint holds besides the tensors -------------------------------------------------
@dataclass
class RunState:
    """Where a run is: the counters a resumed run continues from (``step``, ``epoch``,
    ``position`` top-level keys, the rest under ``trainer_state``)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    position: int = 0  # rows of the current epoch consumed
    best_val: float | None = None
    bad_evals: int = 0  # evaluations without a better val loss (early stopping)
    epoch_loss_sum: float = 0.0  # sum of the step losses of the current epoch
    epoch_steps: int = 0
    budget_spent_s: float = 0.0  # time-budget seconds used so far
    tokens_seen: int = 0  # real (non-padding) input tokens trained on so far

    def trainer_state(self) -> dict[str, Any]:
        return {
            "best_val_loss": self.best_val,
            "bad_evals": self.bad_evals,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_steps": self.epoch_steps,
            "budget_spent_s": self.budget_spent_s,
            "tokens_seen": self.tokens_seen,
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunState:
        ts = state.get("trainer_state") or {}
        return cls(
            step=int(state["step"]),
            epoch=int(state["epoch"]),
            position=int(state["position"]),
            best_val=ts.get("best_val_loss"),
            bad_evals=int(ts.get("bad_evals", 0)),
            epoch_loss_sum=float(ts.get("epoch_loss_sum", 0.0)),
            epoch_steps=int(ts.get("epoch_steps", 0)),
            budget_spent_s=float(ts.get("budget_spent_s", 0.0)),
            tokens_seen=int(ts.get("tokens_seen", 0)),
        )


def rng_state(device: torch.device, info: DistInfo) -> dict[str, Any]:
    """The RNG states of every rank (a collective: every rank calls it)."""
    cpu = torch.get_rng_state()
    state: dict[str, Any] = {"torch": cpu, "by_rank": all_gather_tensor(cpu, info)}
    if device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
        state["cuda"] = cuda
        state["cuda_by_rank"] = all_gather_tensor(cuda, info)
    return state


def restore_rng(state: dict[str, Any], device: torch.device, info: DistInfo) -> None:
    """Put this rank's saved RNG states back (rank 0's alone when the world size changed)."""
    by_rank = state.get("by_rank")
    if isinstance(by_rank, torch.Tensor) and by_rank.dim() == 2 and by_rank.size(0) == info.world_size:
        torch.set_rng_state(by_rank[info.rank].clone())
    elif info.rank == 0 and isinstance(state.get("torch"), torch.Tensor):
        torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        cuda_by_rank = state.get("cuda_by_rank")
        if isinstance(cuda_by_rank, torch.Tensor) and cuda_by_rank.size(0) == info.world_size:
            torch.cuda.set_rng_state(cuda_by_rank[info.rank].clone(), device)
        elif isinstance(state.get("cuda"), torch.Tensor):
            torch.cuda.set_rng_state(state["cuda"], device)


def check_resume_matches(
    path: Path,
    state: dict[str, Any],
    model_config: ModelConfig,
    manifest: DatasetManifest,
    fingerprint: str,
    folder: Path,
) -> None:
    """Refuse a checkpoint whose model shape, vocab or data differ from this run, listing each difference."""
    saved_manifest = CheckpointManifest.from_dict(state["manifest"], source=str(path))
    diffs: list[str] = []
    saved = saved_manifest.model_config.to_dict()
    now = model_config.to_dict()
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            label = "vocab_size (tokenizer vocabulary)" if key == "vocab_size" else f"model_config.{key}"
            diffs.append(f"{label}: checkpoint {saved.get(key)!r}, this run {now.get(key)!r}")
    theirs, ours = saved_manifest.tokenizer_sha256, manifest.tokenizer_sha256
    if theirs and ours and theirs != ours:
        diffs.append(f"tokenizer_sha256: checkpoint {theirs[:12]}…, this run {ours[:12]}…")
    if saved_manifest.data_fingerprint and saved_manifest.data_fingerprint != fingerprint:
        saved_dir = saved_manifest.extra.get("dataset_dir", "?")
        diffs.append(
            f"dataset: checkpoint trained on {saved_dir} (fingerprint {saved_manifest.data_fingerprint[:12]}…), "
            f"this run uses {folder} (fingerprint {fingerprint[:12]}…)"
        )
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} does not match this run: " + "; ".join(diffs),
            hint="resume with the model size and data it was trained with, or start a new run in another --checkpoint-dir",
        )


def warn_of_an_earlier_run(ckpt_dir: Path) -> None:
    """A new run in a folder that holds another run's checkpoints overwrites its best_model.pt and
    leaves its other files beside the new ones: say so before the first step, once."""
    earlier = checkpoint_files(ckpt_dir)
    best = ckpt_dir / "best_model.pt"
    if not earlier and not best.is_file():
        return
    newest = earlier[0].name if earlier else best.name
    log.warning(
        "%s already holds %d checkpoint file(s) of an earlier run (newest %s): this new run replaces "
        "its best_model.pt, its metrics.jsonl and same-named checkpoints. To continue that run pass "
        "--resume; to keep it, use another --checkpoint-dir",
        ckpt_dir,
        len(earlier) + best.is_file(),
        newest,
    )


def build_checkpoint(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: dict[str, Any],
    scaler: dict[str, Any],
    rng: dict[str, Any],
    state: RunState,
    model_config: ModelConfig,
    training_config: dict[str, Any],
    dataset: Dataset,
    val_loss: float | None,
) -> dict[str, Any]:
    """The checkpoint of a run (the keys docs/training.md lists); plain values only."""
    manifest = CheckpointManifest(
        model_config=model_config,
        step=state.step,
        epoch=state.epoch,
        tokenizer_sha256=dataset.manifest.tokenizer_sha256,
        data_fingerprint=dataset.fingerprint,
        template=dataset.manifest.template,
        special_ids=dataset.manifest.special_ids,
        training_config=training_config,
        versions=_versions(),
        extra={
            "tokenizer_path": dataset.manifest.tokenizer_path,
            "dataset_dir": str(dataset.folder),
            "val_loss": val_loss,
        },
    )
    return {
        "model_state_dict": clean_state_dict(unwrap(model).state_dict()),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler,
        "scaler_state_dict": scaler,
        "rng_state": rng,
        "step": state.step,
        "epoch": state.epoch,
        "position": state.position,
        "model_config": model_config.to_dict(),
        "training_config": training_config,
        "manifest": manifest.to_dict(),
        "trainer_state": state.trainer_state(),
    }


def _versions() -> dict[str, str]:
    out = {"torch": str(torch.__version__)}  # TorchVersion is not weights_only-loadable
    for name in ("gptmed-train", "gptmed-model", "gptmed-core"):
        out[name] = installed_version(name)
    return out
