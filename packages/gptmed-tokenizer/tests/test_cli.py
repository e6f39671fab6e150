"""The CLI: the manual's two commands (as subprocesses) and the click group (CliRunner)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_corpus
from gptmed.core import QAPair, TokenizerError
from gptmed.tokenizer import Tokenizer, __version__
from gptmed.tokenizer.cli import cli

RULE = "=" * 60


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_manual_step2_and_step3_as_subprocesses(corpus: Path, tmp_path: Path) -> None:
    """The user manual's commands, unchanged (relative paths, run from the working folder)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_qa_data.txt").write_bytes(corpus.read_bytes())
    step2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptmed.tokenizer.train_tokenizer",
            "--input",
            "data/my_qa_data.txt",
            "--output-prefix",
            "tokenizer/my_tokenizer",
            "--vocab-size",
            "500",
            "--model-type",
            "bpe",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert step2.returncode == 0, step2.stderr
    assert step2.stdout.startswith(
        "Training SentencePiece Tokenizer\n" + RULE + "\nInput: data/my_qa_data.txt\n"
        "Output prefix: tokenizer/my_tokenizer\nVocab size: 500\nModel type: bpe\n\nTraining tokenizer...\n"
        "✓ Tokenizer trained successfully!\n  Model: tokenizer/my_tokenizer.model\n  Vocab: tokenizer/my_tokenizer.vocab\n"
    )
    step3 = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptmed.tokenizer.tokenize_data",
            "--input",
            "data/my_qa_data.txt",
            "--tokenizer",
            "tokenizer/my_tokenizer.model",
            "--output-dir",
            "data/tokenized",
            "--max-length",
            "128",
            "--train-split",
            "0.9",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert step3.returncode == 0, step3.stderr
    meta = json.loads((tmp_path / "data" / "tokenized" / "metadata.json").read_text())
    assert step3.stdout.startswith(
        "Tokenizing Dataset\n"
        + RULE
        + "\nInput: data/my_qa_data.txt\nTokenizer: tokenizer/my_tokenizer.model\n"
        "Max length: 128\nTrain split: 0.9\n\nProcessing...\n✓ Tokenization complete!\n"
        f"  Train sequences: {meta['train_sequences']:,}\n  Val sequences: {meta['val_sequences']:,}\n"
    )
    assert "    - data/tokenized/train.npy\n    - data/tokenized/val.npy\n" in step3.stdout
    assert meta["tokenizer_path"] == str((tmp_path / "tokenizer" / "my_tokenizer.model").resolve())
    assert np.load(tmp_path / "data" / "tokenized" / "train.npy", mmap_mode="r").shape[1] == 128


def test_error_is_one_line_exit_1(tmp_path: Path) -> None:
    js = tmp_path / "qa.json"
    js.write_text('[{"question": "q", "answer": "a"}]', encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gptmed.tokenizer.train_tokenizer",
            "--input",
            str(js),
            "--output-prefix",
            "t/tok",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "gptmed-data convert qa.json" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "t").exists()
    code, stdout, err = run(
        "train", "--input", str(tmp_path / "nope.txt"), "--output-prefix", str(tmp_path / "t")
    )
    assert (
        code == 1 and err == f"Error: {tmp_path / 'nope.txt'}: input file not found; check the --input path\n"
    )
    assert stdout == ""  # no "Training tokenizer..." header for a file that is not there


def test_version_and_help() -> None:
    code, out, _ = run("--version")
    assert code == 0 and __version__ in out
    for command in ("train", "tokenize", "encode", "decode", "inspect"):
        code, out, _ = run(command, "--help")
        assert code == 0 and "Usage:" in out and "--debug" in out


def test_train_errors(corpus: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "train", "--input", str(corpus), "--output-prefix", str(tmp_path / "t"), "--vocab-size", "100000"
    )
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("Error: ") and "too large for this corpus" in err and "--vocab-size in " in err
    code, _, err = run(
        "train", "--input", str(corpus), "--output-prefix", str(tmp_path / "t"), "--vocab-size", "0"
    )
    assert code == 2  # usage error
    assert not list(tmp_path.iterdir())


def test_debug_shows_the_exception(corpus: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "--debug",
            "train",
            "--input",
            str(corpus),
            "--output-prefix",
            str(tmp_path / "t"),
            "--vocab-size",
            "50",
        ],
    )
    assert result.exit_code == 1 and isinstance(result.exception, TokenizerError)


def test_tokenize_command(corpus: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, stdout, err = run(
        "tokenize",
        "--input",
        str(corpus),
        "--tokenizer",
        str(trained),
        "--output-dir",
        str(out),
        "--max-length",
        "64",
        "--stride",
        "32",
        "--seed",
        "3",
        "--num-threads",
        "1",
    )
    assert code == 0, err
    assert "✓ Tokenization complete!" in stdout and f"    - {out / 'train.mask.npy'}" in stdout
    assert json.loads((out / "metadata.json").read_text())["stride"] == 32
    assert "Replacing the earlier tokenization" not in stdout
    again = run("tokenize", "--input", str(corpus), "--tokenizer", str(trained), "--output-dir", str(out))
    assert again[0] == 0 and f"Replacing the earlier tokenization in {out}" in again[1]  # said, not silent
    code, _, err = run(
        "tokenize",
        "--input",
        str(corpus),
        "--tokenizer",
        str(trained),
        "--output-dir",
        str(tmp_path / "x"),
        "--max-length",
        "64",
        "--stride",
        "65",
    )
    assert code == 2 and "--stride" in err
    code, _, err = run(
        "tokenize", "--input", str(corpus), "--tokenizer", str(corpus), "--output-dir", str(tmp_path / "y")
    )
    assert (
        code == 1 and err.startswith("Error: ") and "corrupt tokenizer model" in err and err.count("\n") == 1
    )


def test_tokenize_reports_long_pairs_and_refuses_a_length_no_answer_fits(
    trained: Path, tok: Tokenizer, tmp_path: Path
) -> None:
    pairs = [QAPair(f"What is item {i}?", f"Item {i} is a thing.") for i in range(20)]
    pairs.append(QAPair("Why " + "is it so " * 12 + "?", "Because."))  # its prompt alone is long
    pairs.append(QAPair("What is long?", " ".join(f"word{i}" for i in range(60))))
    corpus = write_corpus(tmp_path / "qa.txt", pairs)
    long_prompt = len(tok.encode_prompt(pairs[20].question))
    assert 16 < long_prompt < 128
    args = ["tokenize", "--input", str(corpus), "--tokenizer", str(trained), "--num-threads", "1"]
    code, stdout, err = run(*args, "--output-dir", str(tmp_path / "a"), "--max-length", str(long_prompt))
    assert code == 0, err
    assert "Pairs longer than" in stdout and " of 22 (cut into windows" in stdout  # was silent
    assert "Warning: 1 question(s) fill all" in err
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["extra"]["questions_over_max_length"] == 1
    code, _, err = run(*args, "--output-dir", str(tmp_path / "b"), "--max-length", "4")
    assert code == 1 and "max_length 4 leaves no room for an answer after any question" in err, err
    assert not (tmp_path / "b").exists()  # was: "Tokenization complete!", and a model that answers nothing


def test_encode_decode_round_trip(trained: Path, tok: Tokenizer) -> None:
    text = "What is </s> 42?\nA: 中文 🙂"
    code, out, _ = run("encode", "-t", str(trained), text)
    assert code == 0
    ids = [int(x) for x in out.split()]
    assert ids == tok.encode(text)
    code, out, _ = run("decode", "-t", str(trained), *map(str, [2, *ids, 3]))
    assert code == 0 and out == text + "\n"
    result = CliRunner().invoke(cli, ["decode", "-t", str(trained)], input=", ".join(map(str, ids)))
    assert result.exit_code == 0 and result.stdout == text + "\n"
    code, out, _ = run("encode", "-t", str(trained), "--prompt", "Why?")
    assert [int(x) for x in out.split()] == tok.encode_prompt("Why?")
    code, out, _ = run("encode", "-t", str(trained), "--pieces", "a\nb")
    assert code == 0 and "\\n" in out


def test_decode_errors(trained: Path) -> None:
    code, _, err = run("decode", "-t", str(trained), "5", "600")
    assert code == 1 and err.startswith("Error: ") and "out of range" in err and err.count("\n") == 1
    code, _, err = run("decode", "-t", str(trained), "5", "abc")
    assert code == 2


def test_inspect(trained: Path, corpus: Path, tmp_path: Path) -> None:
    code, out, _ = run("inspect", str(trained), "--json", "--text", "Q: hi")
    info = json.loads(out)
    assert (
        code == 0
        and info["kind"] == "tokenizer"
        and info["vocab_size"] == 600
        and info["model_type"] == "bpe"
    )
    assert info["example"]["pieces"][0] == "Q"
    code, out, _ = run("inspect", str(trained))
    assert code == 0 and "byte_fallback: True" in out
    run("tokenize", "--input", str(corpus), "--tokenizer", str(trained), "--output-dir", str(tmp_path / "ds"))
    code, out, _ = run("inspect", str(tmp_path / "ds"), "--json")
    info = json.loads(out)
    assert code == 0 and info["kind"] == "dataset" and info["arrays"]["train"]["shape"][1] == 512
    (tmp_path / "ds" / "val.npy").unlink()
    code, _, err = run("inspect", str(tmp_path / "ds"))
    assert code == 1 and "val.npy" in err
    # a truncated array (a copy cut short): one line, not numpy's traceback
    train = tmp_path / "ds" / "train.npy"
    train.write_bytes(train.read_bytes()[:2000])
    code, _, err = run("inspect", str(tmp_path / "ds"))
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        f"Error: {train} is not a readable .npy array (mmap length is greater than file size); "
        "re-run gptmed-tokenizer tokenize to rebuild the folder"
    )


def test_train_tokenizer_name_stays_callable(corpus: Path, tmp_path: Path) -> None:
    import gptmed.tokenizer.train_tokenizer  # noqa: F401  (shadows the package attribute with the module)
    from gptmed.tokenizer import train_tokenizer

    result = train_tokenizer(corpus, tmp_path / "tok", vocab_size=400)
    assert result.model_path.exists()


@pytest.mark.parametrize("module", ["gptmed.tokenizer", "gptmed.tokenizer.tokenize_data"])
def test_module_help(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "Usage: python -m " + module in proc.stdout
