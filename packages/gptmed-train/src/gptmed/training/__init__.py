"""gptmed-train: the training loop, checkpoints, exact resume, signals, metrics and DDP.

``train_model(TrainingConfig(...)) -> TrainResult`` is the library call under ``gptmed-train``.
"""

from importlib.metadata import PackageNotFoundError, version

from gptmed.configs.train_config import TrainingConfig
from gptmed.training.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from gptmed.training.data import Dataset, load_dataset, make_synthetic_dataset
from gptmed.training.errors import NonFiniteLossError, TrainingError, TrainingInterrupted
from gptmed.training.metrics import plot_metrics, read_metrics
from gptmed.training.trainer import RunInfo, TrainCallbacks, TrainResult, build_model_config, train_model

try:
    __version__ = version("gptmed-train")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Dataset",
    "NonFiniteLossError",
    "RunInfo",
    "TrainCallbacks",
    "TrainResult",
    "TrainingConfig",
    "TrainingError",
    "TrainingInterrupted",
    "__version__",
    "build_model_config",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "make_synthetic_dataset",
    "plot_metrics",
    "read_metrics",
    "save_checkpoint",
    "train_model",
]
