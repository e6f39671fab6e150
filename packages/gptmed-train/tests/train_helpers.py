"""Shared helpers of the gptmed-train tests (a uniquely named module, so test suites of several
packages can run in one pytest session): tiny datasets built with numpy + DatasetManifest (no tokenizer), tiny configs,
and a runner for trainer subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gptmed.configs.train_config import TrainingConfig
from gptmed.core import DEFAULT_TEMPLATE, SPECIAL_IDS, DatasetManifest

torch.set_num_threads(1)

VOCAB = 48
SEQ = 32


def write_dataset(
    folder: Path,
    *,
    n_train: int = 48,
    n_val: int = 8,
    vocab: int = VOCAB,
    seq: int = SEQ,
    seed: int = 0,
    dtype: str = "uint16",
    tokenizer_sha256: str = "a" * 64,
    input_sha256: str = "b" * 64,
) -> Path:
    """A packed Q&A-shaped dataset: rows of ``bos q.. a.. eos`` pairs, answer = question reversed."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.zeros((n, seq), dtype=dtype)
        mask = np.zeros((n, seq), dtype=np.uint8)
        for r in range(n):
            pos = 0
            while True:
                q = rng.integers(4, vocab, size=int(rng.integers(2, 5)))
                pair = [SPECIAL_IDS.bos, *q.tolist(), *q[::-1].tolist(), SPECIAL_IDS.eos]
                if pos + len(pair) > seq:
                    break
                tokens[r, pos : pos + len(pair)] = pair
                mask[r, pos + 1 + len(q) : pos + len(pair)] = 1
                pos += len(pair)
        return tokens, mask

    tr, trm = rows(n_train)
    va, vam = rows(n_val)
    np.save(folder / "train.npy", tr)
    np.save(folder / "train.mask.npy", trm)
    np.save(folder / "val.npy", va)
    np.save(folder / "val.mask.npy", vam)
    DatasetManifest(
        tokenizer_sha256=tokenizer_sha256,
        vocab_size=vocab,
        max_length=seq,
        stride=seq,
        train_sequences=n_train,
        val_sequences=n_val,
        train_pairs=n_train * 3,
        val_pairs=n_val * 3,
        input_sha256=input_sha256,
        seed=seed,
        train_split=0.9,
        dtype=dtype,
        special_ids=SPECIAL_IDS,
        template=DEFAULT_TEMPLATE,
        tokenizer_path=str(folder / "tok.model"),
        files={
            "train": "train.npy",
            "val": "val.npy",
            "train_mask": "train.mask.npy",
            "val_mask": "val.mask.npy",
        },
    ).save(folder / "metadata.json")
    return folder / "train.npy"


TINY_MODEL = {"model_size": "tiny", "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64}


def tiny_config(data: Path, ckpt: Path, **changes: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(
        TINY_MODEL,
        batch_size=8,
        num_epochs=2,
        learning_rate=3e-3,
        warmup_steps=2,
        train_data_path=str(data),
        val_data_path=str(data.with_name("val.npy")),
        checkpoint_dir=str(ckpt),
        device="cpu",
        seed=1,
        progress=False,
    )
    base.update(changes)
    return TrainingConfig(**base)


def cli_args(config: TrainingConfig) -> list[str]:
    """Command-line flags that reproduce ``config`` (the fields tests use)."""
    args: list[str] = []
    d = TrainingConfig.defaults()
    for name, value in config.to_dict().items():
        if name in ("progress",) or value == d.get(name) or value is None:
            continue
        flag = "--" + name.replace("_", "-").replace("-path", "")
        if name == "compile":
            continue
        if isinstance(value, bool):
            if value:
                args.append(flag)
            continue
        args += [flag, str(value)]
    return [*args, "--no-progress"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    return env


TRAIN_CMD = [
    sys.executable,
    "-c",
    "import torch; torch.set_num_threads(1); from gptmed.training.train import main; main()",
]


def run_trainer(
    args: list[str], *, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*TRAIN_CMD, *args], capture_output=True, text=True, timeout=timeout, env=subprocess_env()
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"trainer exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def train_losses(ckpt: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (ckpt / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out
