"""The user manual's Step 2: ``python -m gptmed.tokenizer.train_tokenizer --input F --output-prefix P ...``.

Same command as ``gptmed-tokenizer train``. Importing this module shadows the package attribute
``gptmed.tokenizer.train_tokenizer`` (Python sets it to the submodule), so the module is made
callable: ``gptmed.tokenizer.train_tokenizer(...)`` keeps calling the function either way.
"""

import sys
import types
from typing import Any

from gptmed.tokenizer.cli import train_command
from gptmed.tokenizer.training import TrainResult, train_tokenizer

__all__ = ["main", "train_tokenizer"]


def main(argv: "list[str] | None" = None) -> None:
    train_command.main(args=argv, prog_name="python -m gptmed.tokenizer.train_tokenizer")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train_tokenizer(*args, **kwargs)


if __name__ == "__main__":
    main()
else:
    sys.modules[__name__].__class__ = _CallableModule
