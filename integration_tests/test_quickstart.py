"""README's main job, as printed: `gptmed quickstart` on the embedded sample, then a rerun.

The quickstart reports how many of 60 training questions the exported bundle answers word for word
(greedy, onnxruntime). README states it; this test holds it to at least 54 of 60 (measured: 60 of
60), so a regression in any step (tokenizer, packing, training, export, runtime) shows here.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run

FLOOR = 54  # of 60


def test_quickstart_answers_its_training_questions_and_a_rerun_skips_every_step(tmp_path: Path) -> None:
    first = run(["gptmed", "quickstart"], tmp_path).stdout
    found = re.search(r"answers (\d+) of (\d+) training questions word for word", first)
    assert found, first[-3000:]
    exact, asked = int(found[1]), int(found[2])
    assert asked == 60 and exact >= FLOOR, first[-3000:]
    bundle = tmp_path / "gptmed-quickstart" / "bundle"
    assert (bundle / "model.onnx").is_file() and (bundle / "gptmed.json").is_file()
    assert (tmp_path / "gptmed-quickstart" / "eval.json").is_file()

    again = run(["gptmed", "quickstart"], tmp_path).stdout
    steps = [line for line in again.splitlines() if re.match(r"\[\d/\d\] ", line)]
    assert len(steps) == 7 and all(line.endswith("up to date, skipped") for line in steps), again
    assert f"answers {exact} of 60 training questions" in again
