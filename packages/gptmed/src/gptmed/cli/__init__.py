"""gptmed: the meta package and the umbrella ``gptmed`` command."""

from typing import Any

from gptmed.cli.main import component_commands, main
from gptmed.core import installed_version


def __getattr__(name: str) -> Any:
    if name == "__version__":  # lazy: see gptmed.core.installed_version
        return installed_version("gptmed")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "component_commands", "main"]
