"""Human durations in the YAML file: `500ms`, `1s`, `10m`, `1h`, `2d`, or plain seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

MAX_SECONDS = 366 * 86400.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds as a float; raises ValueError with a message fit for the operator."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (match := _PATTERN.match(value)):
            seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        else:
            raise ValueError(
                f"{str(value)[:40]!r} is not a duration (use e.g. 500ms, 30s, 10m, 1h, 2d)"
            )
    except OverflowError:
        raise ValueError("duration too large") from None
    if seconds != seconds:  # NaN
        raise ValueError("not a duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_SECONDS:
        raise ValueError("a duration longer than a year is surely a mistake")
    return seconds


def parse_age(text: str) -> float:
    """For CLI filters like `--since 1h`."""
    return parse_duration(text)


Duration = Annotated[float, BeforeValidator(parse_duration)]
