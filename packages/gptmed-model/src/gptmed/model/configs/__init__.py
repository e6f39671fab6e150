"""Model configuration: re-exports of :mod:`gptmed.core`'s ``ModelConfig`` and its presets."""

from gptmed.model.configs.model_config import (
    PRESETS,
    ModelConfig,
    get_config,
    get_medium_config,
    get_small_config,
    get_tiny_config,
)

__all__ = ["PRESETS", "ModelConfig", "get_config", "get_medium_config", "get_small_config", "get_tiny_config"]
