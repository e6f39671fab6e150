"""The manual's entry point: ``from gptmed.training.train import main``.

* ``main()`` parses ``sys.argv`` like the ``gptmed-train`` command (that is what the console script runs),
  except in a script that built one ``TrainingConfig`` and passes no flags: it trains with that config;
* ``main(config)`` trains with a :class:`~gptmed.configs.train_config.TrainingConfig` and prints the
  same report; it returns the :class:`~gptmed.training.TrainResult` (errors print one line and exit 1).
* ``torchrun --nproc_per_node=N -m gptmed.training.train ...`` runs the same command under DDP.
"""

from __future__ import annotations

import sys

import click
from gptmed.configs.train_config import TrainingConfig, built_by_user
from gptmed.core import ConfigError, cli_errors
from gptmed.training.trainer import TrainResult

__all__ = ["main"]


def main(config: TrainingConfig | None = None) -> TrainResult | None:
    """Train from ``config``, or from the command line when it is None.

    The user manual's "Custom Training Configuration" script builds a ``TrainingConfig`` and then
    calls ``main()`` without it. So when ``main()`` gets no config and no command-line flags, and
    the calling script built exactly one ``TrainingConfig``, it trains with that one (and says so);
    with several it refuses to guess.
    """
    if config is None and len(sys.argv) <= 1:
        built = built_by_user()
        if len(built) > 1:
            places = ", ".join(where for _, where in built)
            with cli_errors(debug=False):  # one line and exit 1, like every other error of main()
                raise ConfigError(
                    f"main() got no config and {len(built)} TrainingConfigs were built ({places}); "
                    "pass the one to train with: main(train_config)"
                )
        if built:
            config, where = built[0]
            click.echo(f"main() got no config: training with the TrainingConfig built at {where}")
    if config is None:
        from gptmed.training.cli import cli

        cli(prog_name="gptmed-train")
        return None
    from gptmed.training.cli import run_with_console

    return run_with_console(config)


if __name__ == "__main__":
    main()
