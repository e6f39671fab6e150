"""``Choice``: a setting a command chose for the user, with its reason (printed, overridable)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Choice"]


@dataclass(frozen=True)
class Choice:
    """One setting chosen for the user: the flag that overrides it, the value, and why."""

    flag: str  # e.g. "--learning-rate"
    value: int | float | str
    reason: str

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else str(self.value)
        return f"{self.flag} {value}: {self.reason}"
