"""gptmed-model: the GPT decoder and the attention kernels it runs on.

``from gptmed.model import GPTTransformer`` ; attention backends live in :mod:`gptmed.model.attention`.
"""

from typing import Any

from gptmed.core import installed_version
from gptmed.model.architecture import GPTTransformer, KVCache, clean_state_dict, unwrap
from gptmed.model.attention import select_backend, set_backend, use_backend
from gptmed.model.configs.model_config import (
    PRESETS,
    ModelConfig,
    get_config,
    get_medium_config,
    get_small_config,
    get_tiny_config,
)
from gptmed.model.loss import linear_cross_entropy
from gptmed.model.sizes import SizeReport, size_report


def __getattr__(name: str) -> Any:
    if name == "__version__":  # lazy: see gptmed.core.installed_version
        return installed_version("gptmed-model")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "GPTTransformer",
    "KVCache",
    "ModelConfig",
    "SizeReport",
    "__version__",
    "clean_state_dict",
    "get_config",
    "get_medium_config",
    "get_small_config",
    "get_tiny_config",
    "linear_cross_entropy",
    "select_backend",
    "set_backend",
    "size_report",
    "unwrap",
    "use_backend",
]
