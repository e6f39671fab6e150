"""The user manual's import path for :class:`~gptmed.training.config.TrainingConfig`.

``from gptmed.configs.train_config import TrainingConfig`` keeps working; the class lives in
:mod:`gptmed.training.config` (as gptmed-model keeps ``gptmed.model.configs.model_config``).
"""

from gptmed.training.config import LOSS_ON, PRECISIONS, TrainingConfig

__all__ = ["LOSS_ON", "PRECISIONS", "TrainingConfig"]
