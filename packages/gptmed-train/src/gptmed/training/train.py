"""The manual's entry point: ``from gptmed.training.train import main``.

* ``main()`` parses ``sys.argv`` like the ``gptmed-train`` command (that is what the console script runs);
* ``main(config)`` trains with a :class:`~gptmed.configs.train_config.TrainingConfig` and prints the
  same report; it returns the :class:`~gptmed.training.TrainResult` (errors print one line and exit 1).
* ``torchrun --nproc_per_node=N -m gptmed.training.train ...`` runs the same command under DDP.
"""

from __future__ import annotations

from gptmed.configs.train_config import TrainingConfig
from gptmed.training.trainer import TrainResult

__all__ = ["main"]


def main(config: TrainingConfig | None = None) -> TrainResult | None:
    """Train from ``config``, or from the command line when it is None."""
    if config is None:
        from gptmed.training.cli import cli

        cli(prog_name="gptmed-train")
        return None
    from gptmed.training.cli import run_with_console

    return run_with_console(config)


if __name__ == "__main__":
    main()
