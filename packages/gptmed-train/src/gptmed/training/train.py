"""The manual's entry point: ``from gptmed.training.train import main``.

* ``main()`` parses ``sys.argv`` like the ``gptmed-train`` command (that is what the console script runs),
  except in a script that defines one ``TrainingConfig`` and passes no flags: it trains with that config;
* ``main(config)`` trains with a :class:`~gptmed.training.config.TrainingConfig` and prints the
  same report; it returns the :class:`~gptmed.training.TrainResult` (errors print one line and exit 1).
* ``torchrun --nproc_per_node=N -m gptmed.training.train ...`` runs the same command under DDP.
"""

from __future__ import annotations

import sys

import click
from gptmed.core import ConfigError, cli_errors
from gptmed.training.callbacks import TrainResult
from gptmed.training.config import TrainingConfig

__all__ = ["main", "script_configs"]


def script_configs() -> dict[str, TrainingConfig]:
    """The ``TrainingConfig`` objects held in global variables of the running script (the
    ``__main__`` module), by variable name. The user manual's "Custom Training Configuration"
    script assigns one (``train_config = TrainingConfig(...)``) and then calls ``main()``."""
    script = sys.modules.get("__main__")
    names = vars(script) if script is not None else {}
    return {name: value for name, value in names.items() if isinstance(value, TrainingConfig)}


def main(config: TrainingConfig | None = None) -> TrainResult | None:
    """Train from ``config``, or from the command line when it is None.

    When ``main()`` gets no config and no command-line flags, and the running script defines
    exactly one ``TrainingConfig`` in a global variable, it trains with that one (and says so);
    with several it refuses to guess.
    """
    if config is None and len(sys.argv) <= 1:
        found = script_configs()
        if len(found) > 1:
            with cli_errors(debug=False):  # one line and exit 1, like every other error of main()
                raise ConfigError(
                    f"main() got no config and the script defines {len(found)} TrainingConfigs "
                    f"({', '.join(found)}); pass the one to train with, e.g. main({next(iter(found))})"
                )
        if found:
            name, config = next(iter(found.items()))
            click.echo(f"main() got no config: training with `{name}`, the TrainingConfig the script defines")
    if config is None:
        from gptmed.training.cli import cli

        cli(prog_name="gptmed-train")
        return None
    from gptmed.training.cli import run_with_console

    return run_with_console(config)


if __name__ == "__main__":
    main()
