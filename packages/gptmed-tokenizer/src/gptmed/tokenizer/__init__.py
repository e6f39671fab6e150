"""gptmed-tokenizer: SentencePiece training for Q&A text, the tokenizer wrapper, dataset tokenization.

>>> from gptmed.tokenizer import Tokenizer, train_tokenizer, tokenize_dataset
"""

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("gptmed-tokenizer")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
