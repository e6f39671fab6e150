"""The umbrella command and the pipeline's pure parts (steps, derived choices)."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from gptmed.cli.main import _COMPONENTS, component_commands, main
from gptmed.cli.pipeline import choose_max_length, choose_vocab_size
from gptmed.cli.steps import Step, StepRunner
from gptmed.core import QAPair, write_qa_text


def test_help_lists_the_installed_components_without_importing_them() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "pipeline" in result.output and "quickstart" in result.output
    installed = component_commands()
    for name in installed:
        assert f"  {name} " in result.output
    for dist, name in [("gptmed-data", "data"), ("gptmed-infer", "generate"), ("gptmed-train", "train")]:
        try:
            md.distribution(dist)
        except md.PackageNotFoundError:
            assert name not in installed
        else:
            assert name in installed


def test_every_component_command_runs_through_the_umbrella() -> None:
    installed = component_commands()
    if not installed:
        pytest.skip("no gptmed component is installed")
    for name in installed:  # `gptmed tokenizer` and `gptmed train` said "No such command" once
        result = CliRunner().invoke(main, [name, "-h"], prog_name="gptmed")
        assert result.exit_code == 0, (name, result.output)
        assert result.output.startswith(f"Usage: gptmed {name} "), result.output
    if "data" in installed:
        assert "convert" in CliRunner().invoke(main, ["data", "--help"]).output


def test_each_console_script_has_its_umbrella_command() -> None:
    """A component's console scripts gptmed-X and its gptmed.commands entry points X match."""
    for dist_name in _COMPONENTS:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue
        scripts = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
        commands = {f"gptmed-{ep.name}" for ep in dist.entry_points if ep.group == "gptmed.commands"}
        assert scripts == commands, dist_name


def test_cli_reference_has_every_command_with_its_own_help_options() -> None:
    result = CliRunner().invoke(main, ["cli-reference"])
    assert result.exit_code == 0, result.output
    sections = re.findall(r"^#+ `([^`]+)`\n\n```text\n(.*?)```", result.output, flags=re.M | re.S)
    titles = [title for title, _ in sections]
    assert len(titles) == len(set(titles)), titles
    assert {"gptmed", "gptmed pipeline", "gptmed quickstart"} <= set(titles)
    for name in component_commands():  # once, under its console script's name (it printed both)
        assert f"gptmed-{name}" in titles, name
        assert not any(t == f"gptmed {name}" or t.startswith(f"gptmed {name} ") for t in titles), name
    assert "`gptmed data convert ...` runs the same\ncommand as `gptmed-data convert ...`" in result.output
    for title, text in sections:  # every command here takes -h (the reference once dropped it)
        assert "  -h, --help " in text, title


def test_vocab_choice_scales_with_distinct_words(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    write_qa_text(small, [QAPair(f"What is item {i}?", f"Item {i} is a thing.") for i in range(50)])
    big = tmp_path / "big.txt"
    write_qa_text(
        big, [QAPair(f"What is w{i}?", " ".join(f"w{i}x{j}" for j in range(20))) for i in range(1000)]
    )
    assert choose_vocab_size(small).value == 320
    choice = choose_vocab_size(big)
    assert choice.value == 8000 and "distinct words" in choice.reason


def test_max_length_choice_is_a_power_of_two_above_p99() -> None:
    assert choose_max_length([30] * 99 + [500]).value == 64
    choice = choose_max_length(list(range(1, 201)))
    assert choice.value == 256 and "1 longer" not in choice.reason
    assert choose_max_length([2000] * 10).value == 512


def test_steps_skip_when_current_and_rerun_when_inputs_change(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("one")
    calls: list[str] = []

    def work() -> str:
        calls.append(src.read_text())
        dst.write_text(src.read_text().upper())
        return "done"

    def step(params: dict) -> Step:
        return Step("upper", "Uppercase", [src], [dst], work, params)

    lines: list[str] = []
    assert StepRunner(tmp_path, echo=lines.append).run_one(step({"a": 1}), 1, 1)
    assert not StepRunner(tmp_path, echo=lines.append).run_one(step({"a": 1}), 1, 1)
    assert "up to date, skipped" in lines[-1]
    assert StepRunner(tmp_path, echo=lines.append).run_one(step({"a": 2}), 1, 1)  # params changed
    src.write_text("two")
    assert StepRunner(tmp_path, echo=lines.append).run_one(step({"a": 2}), 1, 1)  # input changed
    dst.write_text("tampered")
    assert StepRunner(tmp_path, echo=lines.append).run_one(step({"a": 2}), 1, 1)  # output changed
    assert calls == ["one", "one", "two", "two"]
    state = json.loads((tmp_path / "pipeline.json").read_text())
    assert state["steps"]["upper"]["params"] == {"a": 2}


def test_a_failed_step_is_not_recorded(tmp_path: Path) -> None:
    def boom() -> str:
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        StepRunner(tmp_path, echo=lambda _: None).run_one(Step("x", "X", [], [tmp_path / "o"], boom), 1, 1)
    assert not (tmp_path / "pipeline.json").exists()


def test_memo_reuses_a_derived_value_until_its_inputs_change(tmp_path: Path) -> None:
    src = tmp_path / "pairs.txt"
    src.write_text("one")
    calls: list[str] = []

    def compute() -> dict[str, int]:
        calls.append(src.read_text())
        return {"value": len(calls)}

    assert StepRunner(tmp_path).memo("n", [src], compute) == {"value": 1}
    assert StepRunner(tmp_path).memo("n", [src], compute) == {"value": 1}  # from pipeline.json
    src.write_text("two")
    assert StepRunner(tmp_path).memo("n", [src], compute) == {"value": 2}
    assert StepRunner(tmp_path, force=True).memo("n", [src], compute) == {"value": 3}
    assert calls == ["one", "two", "two"]


def test_pipeline_takes_the_input_options_its_errors_suggest(tmp_path: Path) -> None:
    """A convert error in the pipeline suggests --records-key / --skip-invalid / --encoding: the
    pipeline must have them (it answered `No such option`), and leave no empty data/ behind."""
    src = tmp_path / "wrapped.json"
    records = [{"question": f"What is item {i}?", "answer": f"Item {i} is a thing."} for i in range(3)]
    records.append({"question": "Broken?", "answer": None})
    src.write_text(json.dumps({"version": 1, "data": records}), encoding="cp1252")
    out = tmp_path / "run"
    first = CliRunner().invoke(main, ["pipeline", str(src), "--out", str(out)])
    assert first.exit_code == 1 and "--records-key data" in first.output, first.output
    assert not out.exists()  # the failed convert left no empty data/ nor an empty --out folder
    second = CliRunner().invoke(
        main,
        [
            "pipeline",
            str(src),
            "--out",
            str(out),
            "--records-key",
            "data",
            "--skip-invalid",
            "--encoding",
            "cp1252",
            "--model-size",
            "tiny",
            "--num-epochs",
            "1",
        ],
    )
    assert "No such option" not in second.output, second.output
    assert "[1/7] Convert" in second.output and "3 pairs ->" in second.output, second.output
    assert read_qa_text_list(out / "data" / "qa.txt")[0] == QAPair("What is item 0?", "Item 0 is a thing.")


def read_qa_text_list(path: Path) -> list[QAPair]:
    from gptmed.core import read_qa_text

    return list(read_qa_text(path))
