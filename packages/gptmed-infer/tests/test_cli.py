"""The console scripts, run as real processes (and with CliRunner where a process adds nothing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gptmed.inference.cli import main
from gptmed.inference.generate_cli import _unescape, generate_main


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from gptmed.inference.cli import main; from gptmed.inference.generate_cli import generate_main; sys.argv[0] = 'x'; "
    code += "generate_main()" if args[0] == "gptmed-generate" else "main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args[1:]],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_quick_start_defaults_prompt_alone(artifacts) -> None:  # type: ignore[no-untyped-def]
    # checkpoint defaults to model/checkpoints/best_model.pt, the tokenizer to the one it records
    r = _run(["gptmed-generate", "--prompt", "What is fever?", "--temperature", "0"], artifacts.root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "A body temperature above 38 degrees."


def test_manual_flags_on_a_bundle_and_stream(artifacts) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    base = ["--checkpoint", str(artifacts.bundle), "--tokenizer", str(artifacts.bundle / "tokenizer.model")]
    r = runner.invoke(
        generate_main,
        [
            *base,
            "--prompt",
            "Explain 腎臓.",
            "--max-length",
            "40",
            "--temperature",
            "0",
            "--top-k",
            "50",
            "--top-p",
            "0.9",
            "--stream",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "The kidney (腎臓) filters the blood."
    r = runner.invoke(
        generate_main,
        [
            "--checkpoint",
            str(artifacts.bundle / "model.onnx"),
            "--prompt",
            "What is fever?",
            "--temperature",
            "1",
            "--seed",
            "3",
            "--repetition-penalty",
            "1.1",
            "--int8",
        ],
    )
    assert r.exit_code == 0, r.output


def test_prompts_from_stdin_give_qa_text(artifacts) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(
        generate_main,
        ["--checkpoint", str(artifacts.bundle), "--temperature", "0", "--prompts-file", "-"],
        input="What is fever?\n\nExplain asthma.\n",
    )
    assert r.exit_code == 0, r.output
    assert r.output == (
        "Q: What is fever?\nA: A body temperature above 38 degrees.\n\n"
        "Q: Explain asthma.\nA: A disease that narrows the airways.\n\n"
    )
    r = CliRunner().invoke(
        generate_main,
        [
            "--checkpoint",
            str(artifacts.bundle),
            "--temperature",
            "0",
            "--json",
            "--prompt",
            "What is fever?",
            "--stop",
            "38",
        ],
    )
    assert json.loads(r.output) == {"prompt": "What is fever?", "answer": "A body temperature above"}


def test_a_prompts_file_of_one_question_gives_qa_text_and_drops_a_bom(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    one = tmp_path / "one.txt"
    one.write_bytes("\ufeffWhat is fever?\n".encode())  # as Windows Notepad saves it
    args = ["--checkpoint", str(artifacts.bundle), "--temperature", "0", "--prompts-file", str(one)]
    r = CliRunner().invoke(generate_main, args)
    assert r.exit_code == 0, r.output
    assert r.output == "Q: What is fever?\nA: A body temperature above 38 degrees.\n\n"  # was the bare answer
    r = CliRunner().invoke(generate_main, [*args, "--json"])
    assert json.loads(r.output)["prompt"] == "What is fever?"


def test_a_too_long_question_in_a_prompts_file_is_named_by_its_place(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    questions = tmp_path / "q.txt"
    questions.write_text(
        "What is fever?\nExplain asthma.\nWhy " + "is fever high " * 40 + "?\n", encoding="utf-8"
    )
    args = ["gptmed-generate", "--checkpoint", str(artifacts.bundle), "--prompts-file", str(questions)]
    r = _run([*args, "--batch-size", "2"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    # was "prompt 0 has ...": its place in the second batch, and a max_length fix that cannot work
    assert r.stderr.startswith(
        "Error: question 3 ('Why is fever high is fever high is fever high i...') has "
    ), r.stderr
    assert "it fills the model's context of 96 tokens; shorten it" in r.stderr


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("é", "é"), ("Ответ", "Ответ"), ("\\nQ:", "\nQ:"), ("\\", "\\"), ("\\x", "\\x"), ("a\\\\n", "a\\n")],
)
def test_stop_values_keep_their_text_and_only_known_escapes(stop: str, expected: str) -> None:
    assert _unescape(stop) == expected  # 'é' became 'Ã©'; '\\' raised


def test_stop_with_a_lone_backslash_answers(artifacts) -> None:  # type: ignore[no-untyped-def]
    args = ["--checkpoint", str(artifacts.bundle), "--temperature", "0", "--prompt", "What is fever?"]
    r = _run(["gptmed-generate", *args, "--stop", "\\"], artifacts.root)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == "A body temperature above 38 degrees.\n"
    r = _run(["gptmed-generate", *args, "--stop", "température"], artifacts.root)
    assert r.stdout == "A body temperature above 38 degrees.\n"


def test_interactive(artifacts) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(
        generate_main,
        ["--checkpoint", str(artifacts.bundle), "--temperature", "0", "-i"],
        input="What is fever?\nexit\n",
    )
    assert r.exit_code == 0, r.output
    assert "A: A body temperature above 38 degrees." in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "nan"], "Error: temperature must be a finite number"),
        (["--top-p", "1.5"], "Error: top_p must be in (0, 1]"),
        (["--top-k", "-1"], "Error: top_k must be an integer >= 0"),
        (["--seed", "-1"], "Error: seed must be an integer >= 0"),  # was numpy's traceback
        (["--max-length", "500"], "Error: prompt has 10 tokens + max_length 500"),  # was "prompt 0 has"
    ],
)
def test_bad_input_is_one_line_exit_1(artifacts, args, message) -> None:  # type: ignore[no-untyped-def]
    r = _run(
        ["gptmed-generate", "--checkpoint", str(artifacts.bundle), "--prompt", "What is fever?", *args],
        artifacts.root,
    )
    assert r.returncode == 1
    assert r.stderr.startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("content", [b"\n\n  \n", b""])
def test_a_prompts_file_without_questions_is_one_line_exit_1(
    artifacts, tmp_path: Path, content: bytes
) -> None:  # type: ignore[no-untyped-def]
    blank = tmp_path / "blank.txt"
    blank.write_bytes(content)
    what = "only blank lines" if content else "it is empty"
    args = ["gptmed-generate", "--checkpoint", str(artifacts.bundle), "--prompts-file"]
    r = _run([*args, "blank.txt"], tmp_path)
    # was exit 2 with a usage block: "give --prompt TEXT, --prompts-file FILE ..." though it was given
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr == f"Error: blank.txt: no questions ({what}); write one question per line\n"
    r = _run([*args, "-"], tmp_path, stdin=content.decode())
    assert (r.returncode, r.stderr) == (
        1,
        f"Error: stdin: no questions ({what}); write one question per line\n",
    )


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_prompt_errors_number_prompts_from_1_and_name_a_single_one_without_a_number(
    artifacts, stream
) -> None:  # type: ignore[no-untyped-def]
    args = ["gptmed-generate", "--checkpoint", str(artifacts.bundle), *stream, "--temperature", "0"]
    long = "Why " + "is fever high " * 40 + "?"
    r = _run([*args, "--prompt", long], artifacts.root)
    assert r.returncode == 1 and r.stderr.startswith("Error: prompt has "), r.stderr  # was "prompt 0 has"
    r = _run([*args, "--prompt", "What is fever?", "--prompt", ""], artifacts.root)
    assert r.returncode == 1  # was "prompt is empty; pass a question": which one?
    assert r.stderr == "Error: prompt 2 ('') is empty; pass a question\n", r.stderr
    r = _run([*args, "--prompt", ""], artifacts.root)
    assert r.stderr == "Error: prompt is empty; pass a question\n", r.stderr


def test_export_of_a_bundle_folder_says_export_needs_a_pt_checkpoint(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    export = ["gptmed-infer", "export", "--out", str(tmp_path / "ex"), "--checkpoint"]
    r = _run([*export, str(artifacts.bundle)], tmp_path)
    # was "BUNDLE: checkpoint not found; ... or pass --checkpoint (a .pt file or an exported bundle folder)"
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(
        f"Error: export needs a training checkpoint (.pt file); {artifacts.bundle} is already an exported "
        f"bundle; pass --checkpoint {artifacts.checkpoint} (the checkpoint it was exported from)"
    ), r.stderr
    r = _run([*export, str(artifacts.bundle / "model.onnx")], tmp_path)
    assert r.returncode == 1 and "is already an exported bundle" in r.stderr, r.stderr
    (tmp_path / "folder").mkdir()
    r = _run([*export, "folder"], tmp_path)
    assert r.returncode == 1 and "folder is a folder; pass --checkpoint with a .pt file" in r.stderr, r.stderr
    r = _run([*export, "nope.pt"], tmp_path)
    assert r.stderr == (
        "Error: nope.pt: checkpoint not found; train one (gptmed-train) or pass --checkpoint with a "
        "training checkpoint (.pt file)\n"
    )
    assert not (tmp_path / "ex").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_not_found_suggests_only_valid_candidates_in_the_options_word(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("good", ".ex6.tmp-3oigbqdr", "b_badjson", "b_empty"):
        (tmp_path / name).mkdir()
    shutil.copyfile(artifacts.bundle / "gptmed.json", tmp_path / "good" / "gptmed.json")
    shutil.copyfile(artifacts.bundle / "gptmed.json", tmp_path / ".ex6.tmp-3oigbqdr" / "gptmed.json")
    (tmp_path / "b_badjson" / "gptmed.json").write_text("{", encoding="utf-8")
    (tmp_path / "b_empty" / "gptmed.json").write_text("", encoding="utf-8")
    runs = tmp_path / "model" / "checkpoints"
    (runs / "run1").mkdir(parents=True)
    shutil.copyfile(artifacts.checkpoint, runs / "run1" / "best_model.pt")
    (runs / ".hidden.pt").write_bytes(b"")
    r = _run(["gptmed-generate", "--checkpoint", "nope", "--prompt", "hi"], tmp_path)
    # was "(found: .ex6.tmp-3oigbqdr, b_badjson, b_empty, ...)"
    assert r.returncode == 1 and r.stderr.endswith(
        "with a .pt file or an exported bundle folder (found: model/checkpoints/run1/best_model.pt, good)\n"
    ), r.stderr
    r = _run(["gptmed-infer", "serve", "--bundle", "nope", "--port", "0"], tmp_path)
    # was "nope: checkpoint not found; ... pass --bundle with a .pt file ..."
    assert r.returncode == 1 and r.stderr == (
        "Error: nope: bundle not found; export one (gptmed-infer export --out DIR) or pass --bundle "
        "with an exported bundle folder (found: good)\n"
    ), r.stderr


def test_serve_help_says_what_a_public_bind_without_a_key_does() -> None:
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0
    help_text = " ".join(r.output.split())
    assert "public binds need --api-key" not in help_text  # it only warned, and served
    assert "without --api-key it serves anyone who can reach it (with a warning at start)" in help_text
    assert "0 picks a free one" in help_text


def test_missing_checkpoint_and_usage_errors(tmp_path: Path) -> None:
    r = _run(["gptmed-generate", "--prompt", "hi"], tmp_path)
    assert r.returncode == 1 and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr
    r2 = CliRunner().invoke(generate_main, ["--max-length", "0", "--prompt", "x"])
    assert r2.exit_code == 2


def test_eval_table_and_json(artifacts) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    r = runner.invoke(
        main, ["eval", "--bundle", str(artifacts.bundle), "--data", str(artifacts.qa), "--limit", "6"]
    )
    assert r.exit_code == 0, r.output
    for metric in (
        "answer BPB",
        "perplexity",
        "EOS share",
        "loop rate",
        "exact match",
        "token F1",
        "ROUGE-L",
    ):
        assert metric in r.output
    r = runner.invoke(
        main,
        ["eval", "--bundle", str(artifacts.bundle), "--data", str(artifacts.qa), "--json", "--limit", "6"],
    )
    report = json.loads(r.output)
    assert report["pairs"] == 6
    assert report["exact_match"] >= 0.8 and report["perplexity"] < 2.0
    # the fixture model knows its answers: they end, do not loop, and cost few bits
    assert report["eos_share"] == 1.0 and report["loop_rate"] == 0.0 and report["answer_bpb"] < 0.1
    assert report["finish_reasons"] == {"eos": 6} and report["max_length"] == 448
    assert report["decoding"]["temperature"] == 0.0
    r = runner.invoke(
        main,
        [
            *("eval", "--bundle", str(artifacts.bundle), "--data", str(artifacts.qa), "--json"),
            *("--limit", "6", "--sample", "--seed", "3", "--max-length", "4"),
        ],
    )
    sampled = json.loads(r.output)
    assert sampled["decoding"]["temperature"] == 0.7 and sampled["decoding"]["seed"] == 3
    assert sampled["eos_share"] == 0.0 and sampled["finish_reasons"] == {"length": 6}  # 4 tokens: none ends
    assert sampled["answer_bpb"] == report["answer_bpb"]  # teacher forced: decoding does not change it


def test_eval_skips_and_counts_pairs_that_do_not_fit_the_context(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    long_q = "Why " + "is fever high " * 60 + "?"  # far beyond the 96-token context
    long_a = "A body temperature above 38 degrees. " * 30
    data = tmp_path / "held.txt"
    data.write_text(
        "Q: What is fever?\nA: A body temperature above 38 degrees.\n\n"
        f"Q: {long_q}\nA: Fever.\n\n"
        f"Q: What is fever?\nA: {long_a}\n",
        encoding="utf-8",
    )
    r = _run(
        ["gptmed-infer", "eval", "--bundle", str(artifacts.bundle), "--data", str(data), "--json"], tmp_path
    )
    assert r.returncode == 0, r.stderr  # was: "prompt 1 has N tokens ... lower max_length", exit 1
    report = json.loads(r.stdout)
    assert (report["pairs"], report["skipped"], report["windowed_answers"]) == (2, 1, 1)
    assert report["skipped_where"] == [f"{data}:4"]
    table = _run(["gptmed-infer", "eval", "--bundle", str(artifacts.bundle), "--data", str(data)], tmp_path)
    assert f"skipped 1 pair(s) whose question fills the model's context ({data}:4)" in table.stderr
    only_long = tmp_path / "long.txt"
    only_long.write_text(f"Q: {long_q}\nA: Fever.\n", encoding="utf-8")
    r = _run(["gptmed-infer", "eval", "--bundle", str(artifacts.bundle), "--data", str(only_long)], tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("Error: every question of the 1 pairs fills"), r.stderr
    no_data = _run(
        ["gptmed-infer", "eval", "--bundle", str(artifacts.bundle), "--data", "nope.txt"], tmp_path
    )
    assert (
        no_data.returncode == 2
        and "Invalid value for '--data': File 'nope.txt' does not exist" in no_data.stderr
    )
    missing = _run(
        ["gptmed-infer", "eval", "--bundle", str(tmp_path / "nope"), "--data", str(data)], tmp_path
    )
    assert missing.returncode == 1 and "pass --bundle with" in missing.stderr, missing.stderr


def test_export_and_info_commands(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    out = tmp_path / "b2"
    r = runner.invoke(main, ["export", "--checkpoint", str(artifacts.checkpoint), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "parity" in r.output and (out / "gptmed.json").is_file()
    r = runner.invoke(main, ["info", str(out)])
    assert r.exit_code == 0 and '"format": "gptmed.bundle"' in r.output
    r = runner.invoke(
        main, ["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b3")]
    )
    assert r.exit_code == 1 and "checkpoint not found" in r.output
    assert runner.invoke(main, ["--version"]).exit_code == 0
    q = _run(
        [
            "gptmed-infer",
            "export",
            "--checkpoint",
            str(artifacts.checkpoint),
            "--out",
            str(tmp_path / "q"),
            "--quantize",
            "int8",
        ],
        tmp_path,
    )
    assert q.returncode == 0, q.stderr
    assert "Please consider" not in q.stdout + q.stderr  # onnxruntime's quantizer advice stays out


def test_a_truncated_checkpoint_is_one_short_line(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """torch.load's error (a page on weights_only, or 'an internal miniz error') was cut into the line."""
    cut = tmp_path / "best_model.pt"
    cut.write_bytes(artifacts.checkpoint.read_bytes()[:1000])
    r = _run(["gptmed-generate", "--checkpoint", str(cut), "--prompt", "hi?"], tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"Error: {cut}: not a checkpoint (truncated, or another kind of file); "
        "pass a .pt file written by gptmed-train, or an exported bundle folder"
    ), r.stderr


def test_serve_runs_two_workers_when_there_are_two_threads_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers' default: 2 with 2+ onnxruntime threads and a batch to split, else 1; the threads
    come from --threads, else GPTMED_NUM_THREADS, else the cores this process may use."""
    from gptmed.inference.cli import _serve_workers, _total_threads

    monkeypatch.delenv("GPTMED_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _total_threads(None) == _total_threads(0) == cores
    assert _serve_workers(None, 4, 16) == 2
    assert _serve_workers(None, 1, 16) == 1  # one thread: one batch
    assert _serve_workers(None, 4, 1) == 1  # one row: nothing to split
    assert _serve_workers(3, 1, 16) == 3  # given: as given
    monkeypatch.setenv("GPTMED_NUM_THREADS", "1")
    assert _total_threads(None) == 1 and _serve_workers(None, None, 16) == 1
