"""The user manual's Python API examples, read from docs/user-manual.md and run against a real checkpoint.

Step 5.2 builds `GPTTransformer(get_small_config())`, so its checkpoint must be a *small* model with
the default vocabulary of 8000: the fixture trains one (two optimizer steps are enough to make a
loadable checkpoint) on a synthetic fact set large enough for an 8000-piece tokenizer.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run


def _python_blocks() -> list[str]:
    """The ```python blocks of docs/user-manual.md, in order (5.2, 5.4, training config, model config)."""
    text = (REPO / "docs" / "user-manual.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 4, f"docs/user-manual.md has {len(blocks)} python blocks; this test knows 4"
    return blocks


MANUAL_5_2, MANUAL_5_4, MANUAL_TRAINING_DOC, MANUAL_CUSTOM_MODEL = _python_blocks()
MANUAL_5_2_AND_5_4 = MANUAL_5_2 + "\n" + MANUAL_5_4

# The manual's "Custom Training Configuration" runs with two substitutions a CPU test needs:
# device='cuda' -> 'cpu' (no GPU in CI), and max_steps=2 (15 epochs of `small` take hours on a CPU).
_CUDA = re.compile(r"device=(['\"])cuda\1,")
assert _CUDA.search(MANUAL_TRAINING_DOC) and MANUAL_TRAINING_DOC.rstrip().endswith("\nmain()")
MANUAL_TRAINING = re.sub(
    r"(\n\s*seed=42,?\n)\)", r"\1    max_steps=2,\n)", _CUDA.sub("device='cpu',", MANUAL_TRAINING_DOC)
)
assert "max_steps=2" in MANUAL_TRAINING


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "snippet.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("manual_api")
    run(["gptmed-data", "synth", "--out", "data/my_qa_data.txt", "--facts", "8000", "--seed", "0"], cwd)
    run(["python", "-m", "gptmed.tokenizer.train_tokenizer", "--input", "data/my_qa_data.txt",
         "--output-prefix", "tokenizer/my_tokenizer", "--vocab-size", "8000"], cwd)  # fmt: skip
    run(["python", "-m", "gptmed.tokenizer.tokenize_data", "--input", "data/my_qa_data.txt",
         "--tokenizer", "tokenizer/my_tokenizer.model", "--output-dir", "data/tokenized"], cwd)  # fmt: skip
    return cwd


def test_custom_training_config_trains_with_main(workdir: Path) -> None:
    out = _python(MANUAL_TRAINING, workdir).stdout
    assert (
        "main() got no config: training with `train_config`, the TrainingConfig the script defines" in out
    )  # not the CLI's defaults
    assert "Training complete" in out and "Stopped at --max-steps (2 steps)" in out
    assert (workdir / "model/checkpoints/best_model.pt").exists()


def test_generation_api_as_written(workdir: Path) -> None:
    if not (workdir / "model/checkpoints/best_model.pt").exists():
        _python(MANUAL_TRAINING, workdir)
    out = _python(MANUAL_5_2_AND_5_4, workdir).stdout
    assert out.count("Q: ") == 4 and out.count("A: ") == 4
    assert "Q: How do I contact support?" in out


def test_custom_model_config_as_written(tmp_path: Path) -> None:
    _python(MANUAL_CUSTOM_MODEL + "\nassert custom_config.d_model == 512\n", tmp_path)
