"""gptmed-tokenizer: SentencePiece training for Q&A text, the tokenizer wrapper, dataset tokenization.

>>> from gptmed.tokenizer import Tokenizer, train_tokenizer, tokenize_dataset
"""

from typing import Any

from gptmed.core import installed_version
from gptmed.tokenizer.dataset import FILES, load_split, token_dtype, tokenize_dataset
from gptmed.tokenizer.inputs import iter_pairs, read_pairs
from gptmed.tokenizer.tokenizer import TokenIdError, Tokenizer
from gptmed.tokenizer.training import (
    MODEL_TYPES,
    TrainResult,
    VocabSizeError,
    kept_tokenizer_path,
    train_tokenizer,
    vocab_size_range,
)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # lazy: see gptmed.core.installed_version
        return installed_version("gptmed-tokenizer")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FILES",
    "MODEL_TYPES",
    "TokenIdError",
    "Tokenizer",
    "TrainResult",
    "VocabSizeError",
    "__version__",
    "iter_pairs",
    "kept_tokenizer_path",
    "load_split",
    "read_pairs",
    "token_dtype",
    "tokenize_dataset",
    "train_tokenizer",
    "vocab_size_range",
]
