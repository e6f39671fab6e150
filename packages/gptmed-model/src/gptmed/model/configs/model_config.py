"""``ModelConfig`` and the presets, as the user manual imports them.

The types live in :mod:`gptmed.core.config` (one definition for every package); this module only
re-exports them so that ``from gptmed.model.configs.model_config import get_small_config`` works.
"""

from gptmed.core.config import (
    PRESETS,
    ModelConfig,
    get_config,
    get_medium_config,
    get_small_config,
    get_tiny_config,
)

__all__ = ["PRESETS", "ModelConfig", "get_config", "get_medium_config", "get_small_config", "get_tiny_config"]
