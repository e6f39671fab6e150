"""gptmed-infer: answer questions with an exported bundle on onnxruntime (no torch).

``from gptmed.inference import TextGenerator`` ; ``TextGenerator.from_bundle("bundle/")``.
The ONNX exporter (:mod:`gptmed.inference.export`) needs the ``[export]`` extra; the runtime
modules never import torch or onnx.
"""

from importlib.metadata import PackageNotFoundError, version

from gptmed.inference.bundle import Bundle, load_bundle
from gptmed.inference.generator import GenerationResult, TextGenerator
from gptmed.inference.sampling import Sampler, make_config
from gptmed.inference.streaming import AnswerStream

try:
    __version__ = version("gptmed-infer")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
