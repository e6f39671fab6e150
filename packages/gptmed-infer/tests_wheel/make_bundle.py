"""Build a small bundle for the `wheels` nox session (run in an environment WITH torch).

    python packages/gptmed-infer/tests_wheel/make_bundle.py OUT_DIR   # -> OUT_DIR/bundle

Trains a tiny model for a few seconds on a generated Q&A set and exports it with
gptmed-infer's exporter (parity gates included). Writes nothing into the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import build_artifacts


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: make_bundle.py OUT_DIR")
    artifacts = build_artifacts(Path(sys.argv[1]).resolve(), quantize=None)
    print(artifacts.bundle)


if __name__ == "__main__":
    main()
