"""Docs that tests keep true: the CLI reference is generated from the commands themselves."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO, run


def test_cli_reference_matches_the_commands(tmp_path: Path) -> None:
    generated = run(["gptmed", "cli-reference"], tmp_path).stdout
    committed = (REPO / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert generated == committed, (
        "docs/cli-reference.md is out of date: regenerate it with `gptmed cli-reference > docs/cli-reference.md`"
    )
