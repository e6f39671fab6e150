"""Training configuration of gptmed-train (the manual's ``gptmed.configs.train_config``)."""

from gptmed.training.config import LOSS_ON, PRECISIONS, TrainingConfig

__all__ = ["LOSS_ON", "PRECISIONS", "TrainingConfig"]
