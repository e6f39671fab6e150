"""`gptmed pipeline` end to end: JSON, CSV and SQLite inputs; skip-when-current; crash and rerun."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import artifacts_dir, run
from gptmed.core import read_qa_text

# Small and quick: the tiny preset on the embedded sample, a handful of epochs.
FAST = ["--model-size", "tiny", "--num-epochs", "4", "--batch-size", "8", "--learning-rate", "2e-3"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, sample_file: Path) -> dict[str, Path]:
    """The embedded sample as the manual's JSON, a CSV and a SQLite table."""
    pairs = list(read_qa_text(sample_file))
    folder = tmp_path_factory.mktemp("sources")
    as_json = folder / "qa_data.json"
    as_json.write_text(json.dumps([{"question": p.question, "answer": p.answer} for p in pairs], indent=2))
    as_csv = folder / "qa_data.csv"
    with open(as_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "answer"])
        writer.writerows((p.question, p.answer) for p in pairs)
    as_db = folder / "qa_database.db"
    with sqlite3.connect(as_db) as conn:
        conn.execute("CREATE TABLE qa_table (id INTEGER PRIMARY KEY, question TEXT, answer TEXT)")
        conn.executemany(
            "INSERT INTO qa_table (question, answer) VALUES (?, ?)", [(p.question, p.answer) for p in pairs]
        )
    return {"json": as_json, "csv": as_csv, "sqlite": as_db}


def _steps(stdout: str) -> dict[str, str]:
    """Map each step's title to 'ran' or 'skipped' from the pipeline's output."""
    states = {}
    for line in stdout.splitlines():
        if line.startswith("[") and "] " in line:
            title = line.split("] ", 1)[1]
            skipped = title.endswith("up to date, skipped")
            states[title.split(":")[0].removesuffix(" ...")] = "skipped" if skipped else "ran"
    return states


def test_pipeline_from_json_then_csv_and_sqlite_reuse_every_later_step(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    out = tmp_path / "run"
    first = run(["gptmed", "pipeline", str(sources["json"]), "--out", str(out), *FAST], tmp_path)
    assert "--vocab-size " in first.stdout and "--max-length " in first.stdout  # derived, with reasons
    assert "--model-size tiny (given)" in first.stdout
    assert set(_steps(first.stdout).values()) == {"ran"}
    for name in ("data/qa.txt", "data/test.txt", "tokenizer/tokenizer.model", "data/tokenized/metadata.json",
                 "model/checkpoints/best_model.pt", "bundle/model.onnx", "bundle/gptmed.json", "eval.json"):  # fmt: skip
        assert (out / name).exists(), name
    metrics = json.loads((out / "eval.json").read_text())
    assert {"exact_match", "token_f1", "rouge_l"} <= set(metrics)

    # The same pairs from CSV and from SQLite convert to the identical canonical file, so every
    # later step is current and skipped.
    for source in ("csv", "sqlite"):
        again = run(["gptmed", "pipeline", str(sources[source]), "--out", str(out), *FAST], tmp_path)
        states = _steps(again.stdout)
        assert states.pop(f"Convert {sources[source]}") == "ran", again.stdout
        assert set(states.values()) == {"skipped"}, again.stdout

    if (dest := artifacts_dir()) is not None:  # hand the bundle to the `wheels` nox session
        shutil.rmtree(dest / "bundle", ignore_errors=True)
        shutil.copytree(out / "bundle", dest / "bundle")


def test_pipeline_with_a_time_budget_chooses_the_model_size(tmp_path: Path, sources: dict[str, Path]) -> None:
    """No --model-size, no --num-epochs: the pipeline measures the presets here and picks the largest
    the budget can feed (the embedded sample is small: tiny); training ends within its budget."""
    out = tmp_path / "budget"
    done = run(
        ["gptmed", "pipeline", str(sources["json"]), "--out", str(out), "--time-budget", "15s"], tmp_path
    )
    assert "--model-size tiny: the largest preset" in done.stdout, done.stdout
    assert "Plan:" not in done.stdout  # the pipeline prints one line per epoch, not the trainer's report
    state = json.loads((out / "pipeline.json").read_text())
    assert state["steps"]["train"]["seconds"] < 15 + 30  # the budget + startup, evaluation and save
    import torch

    saved = torch.load(out / "model/checkpoints/best_model.pt", weights_only=True)["training_config"]
    assert saved["model_size"] == "tiny" and saved["time_budget"] == 15.0 and saved["dropout"] == 0.0


def test_pipeline_killed_during_training_continues_where_it_stopped(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    out = tmp_path / "crash"
    # 8 epochs: killed at the first checkpoint, the rerun trains the other 7 (30 cost CI ~50 s more)
    argv = [str(Path(sys.executable).parent / "gptmed"), "pipeline", str(sources["json"]), "--out", str(out),
            "--model-size", "tiny", "--num-epochs", "8", "--batch-size", "8"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    ckpts = out / "model" / "checkpoints"
    while not list(ckpts.glob("checkpoint_epoch_*.pt")):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "bundle").exists()

    rerun = run(["gptmed", *argv[1:]], tmp_path)
    states = _steps(rerun.stdout)
    for title in (
        "Convert " + str(sources["json"]),
        "Hold out test pairs",
        "Train the tokenizer",
        "Tokenize",
    ):
        assert states[title] == "skipped", rerun.stdout
    assert states["Train the model"] == "ran"
    assert "resuming from the newest checkpoint" in rerun.stdout
    assert (out / "bundle" / "gptmed.json").exists()


def test_pipeline_interrupted_during_training_says_how_to_continue_in_one_line(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    """Ctrl-C while the model trains: the checkpoint is saved and named, exit 130, no traceback
    (the umbrella let gptmed-train's TrainingInterrupted through as a traceback, exit 1)."""
    out = tmp_path / "sigint"
    argv = [str(Path(sys.executable).parent / "gptmed"), "pipeline", str(sources["json"]), "--out", str(out),
            "--model-size", "tiny", "--num-epochs", "30", "--batch-size", "8"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "model" / "checkpoints").glob("checkpoint_epoch_*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Interrupted at step ") and "Rerun the same command" in last, stderr
    saved = Path(last.split("saved ", 1)[1].split(". Rerun", 1)[0])
    assert (tmp_path / saved).is_file() or saved.is_file(), last
