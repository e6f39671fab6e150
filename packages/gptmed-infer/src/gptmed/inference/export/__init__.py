"""The torch side of gptmed-infer: everything that needs the ``[export]`` extra (torch, onnx,
gptmed-model). The rest of ``gptmed.inference`` is the torch-free runtime and never imports
torch, onnx or the model (an import-linter contract); it reaches this package only lazily, for
``gptmed-infer export`` and for torch models and ``.pt`` checkpoints.

* :mod:`~gptmed.inference.export.writer`: checkpoint -> bundle folder (:func:`export_bundle`);
* :mod:`~gptmed.inference.export.graph`: the decode graph, written node by node;
* :mod:`~gptmed.inference.export.parity`: the parity gate (ONNX vs torch);
* :mod:`~gptmed.inference.export.int8`: ``--quantize int8`` and its gate;
* :mod:`~gptmed.inference.export.genai`: ``genai_config.json`` for onnxruntime-genai;
* :mod:`~gptmed.inference.export.torch_backend`: the generator's backend for torch models.

Importing this package needs neither torch nor onnx; running an export does.
"""

from gptmed.inference.export.genai import genai_config
from gptmed.inference.export.graph import build_graph, export_onnx, graph_weights
from gptmed.inference.export.int8 import INT8_MIN_AGREEMENT, quantize_int8
from gptmed.inference.export.parity import PARITY_ATOL, PARITY_PROMPTS, ParityError, check_parity
from gptmed.inference.export.writer import (
    ExportProgress,
    ExportReport,
    export_bundle,
    export_bundle_report,
    export_stages,
)

__all__ = [
    "INT8_MIN_AGREEMENT",
    "PARITY_ATOL",
    "PARITY_PROMPTS",
    "ExportProgress",
    "ExportReport",
    "ParityError",
    "build_graph",
    "check_parity",
    "export_bundle",
    "export_bundle_report",
    "export_onnx",
    "export_stages",
    "genai_config",
    "graph_weights",
    "quantize_int8",
]
