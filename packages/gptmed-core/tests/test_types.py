"""Configs, template, manifests, atomic IO, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gptmed.core import (
    DEFAULT_TEMPLATE,
    SPECIAL_IDS,
    BundleManifest,
    CheckpointManifest,
    ConfigError,
    DatasetManifest,
    GenerationConfig,
    ManifestError,
    ModelConfig,
    atomic_open,
    atomic_write_text,
    check_compatible,
    get_config,
    get_medium_config,
    get_small_config,
    get_tiny_config,
    sha256_file,
    sweep_temp_files,
)
from gptmed.core.io import TEMP_MARKER


@pytest.mark.parametrize(
    ("builder", "target"), [(get_tiny_config, 2e6), (get_small_config, 10e6), (get_medium_config, 50e6)]
)
def test_presets_are_within_15_percent_of_their_size(builder, target: float) -> None:
    config = builder()
    assert config.vocab_size == 8000 and config.max_seq_len == 512
    assert abs(config.num_parameters() - target) / target < 0.15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 100, "n_heads": 3}, r"d_model \(100\) must be divisible by n_heads \(3\)"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"d_model": 12, "n_heads": 4}, "RoPE needs an even head dim"),
        ({"max_seq_len": True}, "max_seq_len must be a positive integer"),
        ({"activation": "relu"}, r"activation must be one of \['gelu', 'gelu_tanh'\], got 'relu'"),
    ],
)
def test_model_config_errors_name_the_numbers(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_manual_model_config_and_unknown_size() -> None:
    config = ModelConfig(
        vocab_size=8000,
        d_model=512,
        n_layers=8,
        n_heads=8,
        d_ff=2048,
        max_seq_len=512,
        dropout=0.1,
        use_rope=True,
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        get_config("huge")
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_length": 0}, "max_length"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": "\nQ:"}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),  # numpy's generators take only non-negative seeds
        ({"temperature": 10**400}, "temperature"),  # beyond float's range: not an OverflowError
        ({"top_k": -(10**5000)}, "top_k"),  # its repr would raise: the message says its size
        ({"max_length": -(10**5000)}, "max_length"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"frequency_penalty": math.nan}, "frequency_penalty"),
        ({"presence_penalty": -2.01}, "presence_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"no_repeat_ngram_size": 3.0}, "no_repeat_ngram_size"),
    ],
)
def test_generation_config_errors_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        GenerationConfig(**kwargs)


def test_generation_config_roundtrip() -> None:
    config = GenerationConfig(temperature=0.0, stop=["\nQ:", "###"], seed=3)
    assert config.stop == ("\nQ:", "###")
    assert GenerationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    tuned = config.replace(frequency_penalty=0.5, presence_penalty=-0.5, no_repeat_ngram_size=4)
    assert GenerationConfig.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned


def test_generation_config_of_an_older_manifest_keeps_its_values_and_gets_todays_new_fields() -> None:
    """A bundle's gptmed.json written before a field existed: what it records stands, the fields
    it does not know take today's defaults."""
    old = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_length": 100, "repetition_penalty": 1.0,
           "stop": ["\nQ:"], "seed": None}  # fmt: skip
    loaded = GenerationConfig.from_dict(old)
    assert loaded.repetition_penalty == 1.0 and loaded.stop == ("\nQ:",)
    today = GenerationConfig()
    for name in ("frequency_penalty", "presence_penalty", "no_repeat_ngram_size"):
        assert getattr(loaded, name) == getattr(today, name), name


def test_template_renders_the_architecture_format() -> None:
    assert DEFAULT_TEMPLATE.render_prompt("Why?") == "Q: Why?\nA:"
    assert DEFAULT_TEMPLATE.render_pair("Why?", "Because.") == "Q: Why?\nA: Because."
    assert (SPECIAL_IDS.pad, SPECIAL_IDS.unk, SPECIAL_IDS.bos, SPECIAL_IDS.eos) == (0, 1, 2, 3)


def _manifests() -> list:
    cfg = get_tiny_config()
    return [
        DatasetManifest(
            tokenizer_sha256="ab" * 32,
            vocab_size=8000,
            max_length=512,
            stride=512,
            train_sequences=10,
            val_sequences=2,
            train_pairs=90,
            val_pairs=10,
            input_sha256="cd" * 32,
            seed=42,
            train_split=0.9,
            dtype="uint16",
            files={"train": "train.npy"},
            extra={"note": "ü"},
        ),
        CheckpointManifest(model_config=cfg, step=5, epoch=1, training_config={"lr": 3e-4}),
        BundleManifest(
            model_config=cfg, files={"model.onnx": "00" * 32}, inputs=["input_ids"], outputs=["logits"]
        ),
    ]


@pytest.mark.parametrize("manifest", _manifests(), ids=lambda m: type(m).__name__)
def test_manifests_roundtrip_through_json_files(tmp_path: Path, manifest) -> None:
    path = tmp_path / "m.json"
    manifest.save(path)
    assert type(manifest).load(path) == manifest
    data = json.loads(path.read_text())
    assert data["format"] == manifest.FORMAT and data["version"] == 1


def test_manifest_errors(tmp_path: Path) -> None:
    ds = _manifests()[0]
    with pytest.raises(ManifestError, match="version 2 is not supported"):
        DatasetManifest.from_dict({**ds.to_dict(), "version": 2})
    with pytest.raises(ManifestError, match="format is 'gptmed.bundle'"):
        DatasetManifest.from_dict({**ds.to_dict(), "format": "gptmed.bundle"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        DatasetManifest.load(tmp_path / "bad.json")
    with pytest.raises(ManifestError, match="file not found"):
        DatasetManifest.load(tmp_path / "missing.json")


def test_check_compatible_names_both_values() -> None:
    ds = _manifests()[0]
    ck = CheckpointManifest(model_config=get_tiny_config(), step=1, epoch=0, tokenizer_sha256="ef" * 32)
    with pytest.raises(
        ManifestError, match="tokenizer_sha256: metadata.json has 'abab.*checkpoint has 'efef"
    ):
        check_compatible(ds, "metadata.json", ck, "checkpoint")
    check_compatible(ds, "a", CheckpointManifest(model_config=get_tiny_config(), step=1, epoch=0), "b")


def test_atomic_open_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as fh:
        fh.write(b"new partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "a" / "data" / "qa.txt"
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("partial")
        raise RuntimeError("bad record")
    assert list(tmp_path.iterdir()) == []  # no empty runs/a/data/ left behind
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "kept" / "new" / "x.txt") as fh:
        raise RuntimeError("bad record")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_a_write_survives_another_writers_cleanup_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer's failed write removes the folder it made between this writer's mkdir and
    its temp file (forced here): the write makes the folder again."""
    real = os.open

    def folder_gone_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(os, "open", real)
        (tmp_path / "new").rmdir()
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "open", folder_gone_first)
    atomic_write_text(tmp_path / "new" / "x.txt", "ok")  # was: FileNotFoundError
    assert (tmp_path / "new" / "x.txt").read_text() == "ok"


def test_a_signal_right_after_the_temp_file_is_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM under cli_errors) lands as the temp file's open returns, before the
    writer holds its descriptor (forced here). With mkstemp the name was not bound yet, so the
    temp file and its folder stayed: split's SIGTERM test found its folder left in 1 of 4
    fresh-clone CI runs."""
    real = os.open

    def interrupted(name: Any, *args: Any, **kwargs: Any) -> Any:
        fd = real(name, *args, **kwargs)
        if TEMP_MARKER in str(name):
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "made" / "x.txt", "never")
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_stale_temp_files(tmp_path: Path) -> None:
    (tmp_path / ".ckpt.pt.tmp-abc").write_text("stale")
    (tmp_path / "ckpt.pt").write_text("good")
    assert [p.name for p in sweep_temp_files(tmp_path, "ckpt.pt")] == [".ckpt.pt.tmp-abc"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256_file(tmp_path / "x") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_core_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import gptmed.core; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "bad = sorted(m for m in new if m not in sys.stdlib_module_names and m != 'gptmed'); "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_errors_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    code = (
        "from gptmed.core import cli_errors, DataError\n"
        "with cli_errors(debug=False):\n"
        "    raise DataError('bad record', where='qa.txt:3', hint='fix it')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "Error: qa.txt:3: bad record; fix it\n"


def test_a_sigterm_inside_sigterm_held_waits_for_the_block_then_unwinds_with_143() -> None:
    """Native code that runs Python inside a call (onnx's checker) aborts the process when the
    SIGTERM handler raises there; sigterm_held makes the handler wait for the block's end."""
    code = (
        "import os, signal\n"
        "from gptmed.core import cli_errors, sigterm_held\n"
        "with cli_errors(debug=False):\n"
        "    try:\n"
        "        with sigterm_held():\n"
        "            with sigterm_held():  # nested: only the outermost end raises\n"
        "                os.kill(os.getpid(), signal.SIGTERM)\n"
        "                sum(range(100_000))  # bytecode runs: the handler has had its turn\n"
        "            print('inner block finished', flush=True)\n"
        "        print('never', flush=True)\n"
        "    finally:\n"
        "        print('cleanup', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        143,
        "inner block finished\ncleanup\n",
        "Terminated.\n",
    )


def test_sigterm_under_cli_errors_cleans_up_like_ctrl_c_and_exits_143(tmp_path: Path) -> None:
    """A killed writer left its hidden temp file and the folders made for it (SIGTERM's default
    action ends the process with no cleanup); under cli_errors it unwinds like Ctrl-C."""
    code = (
        "import sys, time\n"
        "from gptmed.core import atomic_open, cli_errors\n"
        "with cli_errors(debug=False):\n"
        "    with atomic_open(sys.argv[1]) as fh:\n"
        "        fh.write('half')\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(60)\n"
    )
    target = tmp_path / "made" / "deeper" / "out.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    assert len(list(target.parent.iterdir())) == 1  # the temp file
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (143, "Terminated.\n")
    assert list(tmp_path.iterdir()) == []  # no temp file, no folders made for it


def test_a_closed_output_pipe_ends_quietly() -> None:
    """`gptmed-infer export ... | head -1` ended with `Error: Broken pipe` (and Python's own
    complaint when it flushed stdout at exit)."""
    code = (
        "from gptmed.core import cli_errors\n"
        "with cli_errors(debug=False):\n"
        "    for i in range(200000):\n"
        "        print('line', i)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # the reader goes away, like `head -1`
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert (proc.wait(timeout=30), stderr) == (141, b"")


def test_output_folder_errors_name_the_file_in_the_way(tmp_path: Path) -> None:
    from gptmed.core import GptmedError, atomic_write_text, make_folder

    (tmp_path / "afile").write_text("x")
    with pytest.raises(GptmedError, match=r"cannot create the output folder .*sub: .*afile is a file"):
        atomic_write_text(tmp_path / "afile" / "sub" / "out.txt", "x")
    with pytest.raises(GptmedError, match=r"cannot create checkpoint folder .*afile: .*afile is a file"):
        make_folder(tmp_path / "afile", "checkpoint folder")


def test_activation_default_and_roundtrip() -> None:
    assert ModelConfig().activation == "gelu"
    cfg = ModelConfig(activation="gelu_tanh")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
