"""TrainingConfig: the manual's fields and defaults, validation, config files, resume merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gptmed.configs.train_config import TrainingConfig
from gptmed.core import ConfigError


def test_manual_example_constructs() -> None:
    cfg = TrainingConfig(
        batch_size=32,
        learning_rate=3e-4,
        num_epochs=15,
        warmup_steps=500,
        grad_clip=1.0,
        weight_decay=0.01,
        save_every=1,
        eval_every=100,
        train_data_path="data/tokenized/train.npy",
        val_data_path="data/tokenized/val.npy",
        checkpoint_dir="model/checkpoints",
        device="cuda",
        seed=42,
    )
    assert cfg.batch_size == 32 and cfg.eval_every == 100


def test_defaults_are_the_manuals() -> None:
    cfg = TrainingConfig()
    assert cfg.resolved_model_size == "small"
    assert (cfg.epoch_limit, cfg.batch_size, cfg.seed) == (10, 16, 42)
    # the learning rate, warmup and dropout are chosen per run (gptmed.training.recipe), printed
    assert (cfg.learning_rate, cfg.warmup_steps, cfg.dropout, cfg.num_epochs) == (None, None, None, None)
    assert TrainingConfig(time_budget="10m").epoch_limit is None  # as many epochs as fit
    assert cfg.train_data_path == "data/tokenized/train.npy"
    assert cfg.val_data_path == "data/tokenized/val.npy"
    assert cfg.checkpoint_dir == "model/checkpoints"
    assert cfg.device == "auto" and cfg.loss_on == "answer"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number"),
        ("learning_rate", -1.0, "learning_rate must be > 0"),
        ("model_size", "huge", "unknown model size 'huge'"),
        ("loss_on", "prompt", "loss_on must be one of"),
        ("precision", "fp8", "precision must be one of"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
        ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainingConfig(**{field: value})  # type: ignore[arg-type]


def test_config_files(tmp_path: Path) -> None:
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"batch-size": 4, "num_epochs": 3}))
    assert TrainingConfig.from_file(j).batch_size == 4
    t = tmp_path / "c.toml"
    t.write_text("[training]\nlearning_rate = 0.001\nmodel_size = 'tiny'\n")
    cfg = TrainingConfig.from_file(t)
    assert cfg.learning_rate == 0.001 and cfg.model_size == "tiny"
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_sise": 4}')
    with pytest.raises(ConfigError, match=r"unknown training setting\(s\) \['batch_sise'\]"):
        TrainingConfig.from_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainingConfig.from_file(bad)


def test_resume_merge_takes_unset_settings_from_the_checkpoint() -> None:
    saved = TrainingConfig(
        model_size="tiny", batch_size=4, learning_rate=1e-3, checkpoint_dir="old", device="cuda"
    ).to_dict()
    now = TrainingConfig(resume=True, learning_rate=5e-4, checkpoint_dir="here")
    merged = now.merged_with_checkpoint(saved)
    assert merged.model_size == "tiny" and merged.batch_size == 4
    assert merged.learning_rate == 5e-4  # changed now: overrides
    assert merged.checkpoint_dir == "here" and merged.device == "auto" and merged.resume
    # with the CLI's explicit set, a flag equal to its default still overrides
    merged = TrainingConfig(resume=True, batch_size=16).merged_with_checkpoint(saved, explicit={"batch_size"})
    assert merged.batch_size == 16 and merged.learning_rate == 1e-3
