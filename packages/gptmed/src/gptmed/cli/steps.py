"""Resumable steps: a step is skipped when its recorded inputs, parameters and outputs are current.

The state lives in ``DIR/pipeline.json``. For each finished step it records the sha256 of every
input file, the parameters that shaped the output, and the sha256 of every output file (a folder
output is hashed over its sorted file list). A rerun skips a step whose record still matches what
is on disk, so a pipeline that crashed continues at the first step that did not finish.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptmed.core import atomic_write_text, sha256_bytes, sha256_file

__all__ = ["Step", "StepRunner", "fingerprint"]

_log = logging.getLogger(__name__)


def fingerprint(path: Path) -> str | None:
    """sha256 of a file, or of a folder's (relative name, sha256) list; None when missing."""
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        entries = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        listing = "\n".join(f"{p.relative_to(path)}\t{sha256_file(p)}" for p in entries)
        return sha256_bytes(listing.encode())
    return None


@dataclass
class Step:
    """One stage of the pipeline."""

    name: str  # key in pipeline.json, shown to the user
    title: str  # one line describing what it does
    inputs: list[Path]  # files/folders whose content decides whether outputs are current
    outputs: list[Path]  # files/folders the step produces
    run: Callable[[], str]  # does the work, returns a one-line summary
    params: dict[str, Any] = field(default_factory=dict)  # choices that shape the outputs


class StepRunner:
    """Runs steps in order, skipping the current ones, recording each finished step."""

    def __init__(self, out_dir: Path, echo: Callable[[str], None] = print, force: bool = False) -> None:
        self.out_dir = out_dir
        self.state_path = out_dir / "pipeline.json"
        self.echo = echo
        self.force = force
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"format": "gptmed.pipeline", "version": 1, "steps": {}}
        return data if isinstance(data, dict) and "steps" in data else {"steps": {}}

    def _record(self, step: Step) -> dict[str, Any]:
        return {
            "inputs": {str(p): fingerprint(p) for p in step.inputs},
            "params": json.loads(json.dumps(step.params, default=str)),
        }

    def is_current(self, step: Step) -> bool:
        saved = self.state["steps"].get(step.name)
        if self.force or not saved:
            return False
        if {k: saved.get(k) for k in ("inputs", "params")} != self._record(step):
            return False
        return all(fingerprint(Path(p)) == sha for p, sha in saved.get("outputs", {}).items())

    def memo(self, key: str, inputs: list[Path], compute: Callable[[], Any]) -> Any:
        """``compute()`` (a JSON value), reused from pipeline.json while ``inputs`` are unchanged:
        for choices derived from data (e.g. the context length from every pair's token count)
        that decide whether a later step is current."""
        prints = {str(p): fingerprint(p) for p in inputs}
        saved = self.state.setdefault("memo", {}).get(key)
        if not self.force and isinstance(saved, dict) and saved.get("inputs") == prints:
            return saved.get("value")
        value = json.loads(json.dumps(compute()))
        self.state["memo"][key] = {"inputs": prints, "value": value}
        self._save()
        return value

    def _save(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2, sort_keys=True) + "\n")

    def run_one(self, step: Step, index: int, total: int) -> bool:
        """Run ``step`` unless it is current; return True when it ran."""
        head = f"[{index}/{total}] {step.title}"
        if self.is_current(step):
            self.echo(f"{head}: up to date, skipped")
            return False
        self.echo(f"{head} ...")
        started = time.perf_counter()
        summary = step.run()
        elapsed = time.perf_counter() - started
        record = self._record(step)
        record["outputs"] = {str(p): fingerprint(p) for p in step.outputs}
        record["seconds"] = round(elapsed, 2)
        self.state["steps"][step.name] = record
        self._save()
        self.echo(f"      {summary} ({elapsed:.1f}s)")
        return True
