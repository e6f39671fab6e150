"""``python -m gptmed.tokenizer`` is ``gptmed-tokenizer``."""

from gptmed.tokenizer.cli import main

if __name__ == "__main__":
    main(prog_name="python -m gptmed.tokenizer")
