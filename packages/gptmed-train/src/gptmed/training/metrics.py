"""``metrics.jsonl`` (one JSON object per line), optional TensorBoard, and ``gptmed-train plot``.

Rows: ``{"kind": "train", "step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"}``
every ``log_every`` steps and ``{"kind": "eval", "step", "epoch", "val_loss", "elapsed"}`` after each
evaluation. ``step`` counts optimizer steps (1 = after the first step). A resumed run first drops the
rows the interrupted run wrote after its checkpoint, so the file reads as one continuous run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import IO, Any

from gptmed.core import DataError, atomic_write_text

__all__ = ["MetricsWriter", "plot_metrics", "read_metrics"]

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file; a torn last line (killed writer) is skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"metrics file {p} not found", hint="point to a --checkpoint-dir of a gptmed-train run"
        )
    rows: list[dict[str, Any]] = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                log.warning("%s:%d: torn last line skipped", p, i)
                continue
            raise DataError("not valid JSON", where=f"{p}:{i}") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsWriter:
    """Appends rows to ``metrics.jsonl`` (flushed per row) and mirrors them to TensorBoard if asked."""

    def __init__(
        self, path: Path, *, keep_until_step: int | None, tensorboard_dir: Path | None = None
    ) -> None:
        self.path = path
        self._tb: Any = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise DataError(
                    f"TensorBoard logging needs the tensorboard package ({exc})",
                    hint='pip install "gptmed-train[tensorboard]"',
                ) from None
            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))
        self._keep_until_step = keep_until_step
        self._fh: IO[str] | None = None  # opened by the first row: a run stopped before it leaves
        # the folder as it was (no empty metrics.jsonl, an earlier run's rows untouched)

    def _open(self) -> IO[str]:
        path, keep = self.path, self._keep_until_step
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep is None:
            atomic_write_text(path, "")
        elif path.is_file():
            kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= keep]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        if self._fh is None:
            self._fh = self._open()
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = int(row.get("step", 0))
            for key in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s"):
                value = row.get(key)
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{row.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_metrics(metrics: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Draw train and val loss against step from ``metrics`` (a metrics.jsonl or its folder) to a PNG."""
    src = Path(metrics)
    if src.is_dir():
        if not (src / "metrics.jsonl").is_file():
            raise DataError(
                f"no metrics.jsonl in {src}", hint="point to the --checkpoint-dir of a gptmed-train run"
            )
        src = src / "metrics.jsonl"
    elif not src.exists() and src.suffix != ".jsonl":
        raise DataError(
            f"no run folder {src} (its metrics.jsonl is what plot draws)",
            hint="pass the --checkpoint-dir of a gptmed-train run, or its metrics.jsonl",
        )
    rows = read_metrics(src)
    train = [
        (r["step"], r["loss"])
        for r in rows
        if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))
    ]
    val = [
        (r["step"], r["val_loss"])
        for r in rows
        if r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float))
    ]
    if not train and not val:
        raise DataError(f"{src} has no loss rows to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DataError("plotting needs matplotlib", hint='pip install "gptmed-train[plot]"') from None
    out = Path(output)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", linewidth=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], label="val loss", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"gptmed-train: {src.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-plot.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return out
