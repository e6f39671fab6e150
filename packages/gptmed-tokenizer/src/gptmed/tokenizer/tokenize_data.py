"""The user manual's Step 3: ``python -m gptmed.tokenizer.tokenize_data --input F --tokenizer P.model ...``.

Same command as ``gptmed-tokenizer tokenize``.
"""

from gptmed.tokenizer.cli import tokenize_command
from gptmed.tokenizer.dataset import tokenize_dataset

__all__ = ["main", "tokenize_dataset"]


def main(argv: "list[str] | None" = None) -> None:
    tokenize_command.main(args=argv, prog_name="python -m gptmed.tokenizer.tokenize_data")


if __name__ == "__main__":
    main()
