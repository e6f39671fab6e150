"""gptmed: the meta package and the umbrella ``gptmed`` command."""

from importlib.metadata import PackageNotFoundError, version

from gptmed.cli.main import component_commands, main

try:
    __version__ = version("gptmed")
except PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"

__all__ = ["__version__", "component_commands", "main"]
