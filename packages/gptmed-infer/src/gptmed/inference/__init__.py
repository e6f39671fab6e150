"""gptmed-infer: answer questions with an exported bundle on onnxruntime (no torch).

``from gptmed.inference import TextGenerator`` ; ``TextGenerator.from_bundle("bundle/")``.
The ONNX exporter (:mod:`gptmed.inference.export`) needs the ``[export]`` extra; the runtime
modules never import torch or onnx.
"""

from typing import Any

from gptmed.core import installed_version
from gptmed.inference.bundle import Bundle, load_bundle
from gptmed.inference.generator import GenerationResult, TextGenerator
from gptmed.inference.sampling import Sampler, make_config
from gptmed.inference.streaming import AnswerStream


def __getattr__(name: str) -> Any:
    if name == "__version__":  # lazy: see gptmed.core.installed_version
        return installed_version("gptmed-infer")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnswerStream",
    "Bundle",
    "GenerationResult",
    "Sampler",
    "TextGenerator",
    "__version__",
    "load_bundle",
    "make_config",
]
