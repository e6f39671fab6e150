"""gptmed-train: the training loop, checkpoints, exact resume, signals, metrics and DDP.

``train_model(TrainingConfig(...)) -> TrainResult`` is the library call under ``gptmed-train``.
"""

from typing import Any

from gptmed.core import installed_version, parse_duration
from gptmed.training.budget import BudgetPlan
from gptmed.training.callbacks import RunInfo, TrainCallbacks, TrainResult
from gptmed.training.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from gptmed.training.config import TrainingConfig
from gptmed.training.data import Dataset, load_dataset, make_synthetic_dataset
from gptmed.training.errors import NonFiniteLossError, TrainingError, TrainingInterrupted
from gptmed.training.launch import train_model
from gptmed.training.metrics import plot_metrics, read_metrics
from gptmed.training.parts import build_model_config
from gptmed.training.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name == "__version__":  # lazy: see gptmed.core.installed_version
        return installed_version("gptmed-train")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BudgetPlan",
    "Dataset",
    "NonFiniteLossError",
    "RunInfo",
    "TrainCallbacks",
    "TrainResult",
    "Trainer",
    "TrainingConfig",
    "TrainingError",
    "TrainingInterrupted",
    "__version__",
    "build_model_config",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "make_synthetic_dataset",
    "parse_duration",
    "plot_metrics",
    "read_metrics",
    "save_checkpoint",
    "train_model",
]
