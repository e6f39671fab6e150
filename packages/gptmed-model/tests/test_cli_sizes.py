from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from gptmed.model import GPTTransformer, get_config, size_report
from gptmed.model.cli import main
from gptmed.model.sizes import format_size_table, preset_reports


def test_sizes_table_lists_presets_with_counts() -> None:
    result = CliRunner().invoke(main, ["sizes", "--batch-size", "8", "--seq-len", "256"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "params" in lines[0] and "B=8, T=256" in lines[0]
    for name in ("tiny", "small", "medium"):
        row = next(line for line in lines if line.startswith(name))
        assert f"{get_config(name).num_parameters():,}" in row


def test_sizes_json_and_info() -> None:
    result = CliRunner().invoke(main, ["sizes", "--json", "--vocab-size", "1000"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["name"] for d in data] == ["tiny", "small", "medium"]
    assert data[0]["params"] == get_config("tiny", vocab_size=1000).num_parameters()
    info = CliRunner().invoke(main, ["info", "--model-size", "small"])
    assert info.exit_code == 0, info.output
    assert "parameters: 9,946,112" in info.output and "attention backend:" in info.output
    assert "d_model: 256" in info.output


def test_cli_errors_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).exit_code == 0
    assert runner.invoke(main, ["sizes", "--help"]).exit_code == 0
    bad = runner.invoke(main, ["info", "--model-size", "huge"])
    assert bad.exit_code == 2
    too_long = runner.invoke(main, ["sizes", "--seq-len", "600"])
    assert too_long.exit_code == 1
    assert "seq_len must be in [1, 512]" in too_long.output


def test_flops_and_memory_formulas() -> None:
    cfg = get_config("small")
    r = size_report(cfg, batch_size=4, seq_len=128)
    C, L, F, V = 256, 10, 1024, 8000
    matmul = L * (4 * C * C + 2 * C * F) + V * C
    assert r.matmul_params == matmul
    assert r.fwd_flops_per_token == 2 * matmul + 4 * L * 128 * C
    assert r.train_flops_per_token == 3 * r.fwd_flops_per_token
    assert r.weights_bytes == 4 * r.params
    assert size_report(cfg, dtype="bf16").weights_bytes == 2 * r.params
    with torch.device("meta"):
        model = GPTTransformer(cfg)
    assert r.non_embedding_params == model.num_parameters(non_embedding=True)
    assert "small" in format_size_table(preset_reports())
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        size_report(cfg, batch_size=0)
