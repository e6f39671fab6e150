"""Shared helpers for the end-to-end tests: real commands in real subprocesses, in tmp folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDQUAD = REPO.parent / "shared" / "datasets" / "medquad"


def run(
    cmd: Sequence[str], cwd: Path, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a console script or ``python -m`` command the way a user would, in ``cwd``."""
    argv = list(cmd)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif shutil.which(argv[0]) is None:
        bindir = Path(sys.executable).parent
        argv[0] = str(bindir / argv[0])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def artifacts_dir() -> Path | None:
    """Where tests leave a bundle for the `wheels` nox session (GPTMED_ARTIFACTS), if set."""
    value = os.environ.get("GPTMED_ARTIFACTS")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def sample_file() -> Path:
    from gptmed.data import sample_path

    return sample_path()
