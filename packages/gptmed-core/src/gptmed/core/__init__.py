"""gptmed-core: the interface types every gptmed component shares (standard library only)."""

from typing import Any

from gptmed.core.choice import Choice
from gptmed.core.config import (
    ACTIVATIONS,
    DEFAULT_MODEL_SIZE,
    PRESETS,
    GenerationConfig,
    ModelConfig,
    get_config,
    get_medium_config,
    get_small_config,
    get_tiny_config,
)
from gptmed.core.durations import format_duration, parse_duration
from gptmed.core.errors import (
    BundleError,
    CheckpointError,
    ConfigError,
    DataError,
    GptmedError,
    ManifestError,
    Terminated,
    TokenizerError,
    cli_errors,
    sigterm_held,
)
from gptmed.core.io import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    make_folder,
    missing_folders,
    remove_empty_folders,
    sha256_bytes,
    sha256_file,
    sweep_temp_files,
)
from gptmed.core.manifests import (
    BundleManifest,
    CheckpointManifest,
    DatasetManifest,
    check_compatible,
    installed_version,
)
from gptmed.core.protocols import AnswerGenerator, Tokenizer
from gptmed.core.qa import (
    QAPair,
    format_pair,
    iter_qa_lines,
    normalize_text,
    read_qa_records,
    read_qa_text,
    utf16_codec,
    write_qa_text,
)
from gptmed.core.template import DEFAULT_STOP, DEFAULT_TEMPLATE, SPECIAL_IDS, PromptTemplate, SpecialIds


def __getattr__(name: str) -> Any:
    # Lazy: importlib.metadata pulls in the email package, ~25 ms of every CLI's start-up.
    if name == "__version__":
        return installed_version("gptmed-core")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS",
    "DEFAULT_MODEL_SIZE",
    "DEFAULT_STOP",
    "DEFAULT_TEMPLATE",
    "PRESETS",
    "SPECIAL_IDS",
    "AnswerGenerator",
    "BundleError",
    "BundleManifest",
    "CheckpointError",
    "CheckpointManifest",
    "Choice",
    "ConfigError",
    "DataError",
    "DatasetManifest",
    "GenerationConfig",
    "GptmedError",
    "ManifestError",
    "ModelConfig",
    "PromptTemplate",
    "QAPair",
    "SpecialIds",
    "Terminated",
    "Tokenizer",
    "TokenizerError",
    "__version__",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_compatible",
    "cli_errors",
    "format_duration",
    "format_pair",
    "get_config",
    "get_medium_config",
    "get_small_config",
    "get_tiny_config",
    "installed_version",
    "iter_qa_lines",
    "make_folder",
    "missing_folders",
    "normalize_text",
    "parse_duration",
    "read_qa_records",
    "read_qa_text",
    "remove_empty_folders",
    "sha256_bytes",
    "sha256_file",
    "sigterm_held",
    "sweep_temp_files",
    "utf16_codec",
    "write_qa_text",
]
