"""Durations as people type them (``90s``, ``10m``, ``2h``, ``1h30m``) and as commands print them."""

from __future__ import annotations

import math
import re

from gptmed.core.errors import ConfigError

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_duration(value: str | float | int, *, name: str | None = None) -> float:
    """Seconds in ``90s``, ``10m``, ``2h``, ``1h30m`` or a plain number of seconds; > 0. A bad
    value raises :class:`ConfigError`, its message starting with ``name`` (the flag or field)."""
    what = f"{name}: " if name else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or _DURATION.sub("", text).strip():
                raise ConfigError(
                    f"{what}{value!r} is not a duration; use e.g. 90s, 10m, 2h or 1h30m"
                ) from None
            seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    else:
        raise ConfigError(f"{what}a duration like 10m is needed, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{what}a positive duration is needed, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``24m 32s`` style, ``1h 02m 05s`` past an hour, ``7s`` under a minute."""
    s = round(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{m}m {sec}s"
    return f"{sec}s"
