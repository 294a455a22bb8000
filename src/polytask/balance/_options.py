"""Validation of balancing options, which arrive untyped from a config's ``balance.options``.

Each checker returns the value with its proper Python type or raises :class:`TypeError` with
one line naming the option, what it must be and what it got; ``build_balancer`` and the config
loader turn that into a :class:`polytask.ConfigError` naming ``balance.options``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """One of ``allowed`` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise TypeError(f"{name} must be one of {listed}, got {value!r}")
    return value


def real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number (bools are refused) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise TypeError(f"{name} must be in {bounds}, got {value!r}")
    return float(value)


def integer(name: str, value: Any, *, low: int | None = None) -> int:
    """An int (bools are refused), at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    """true or false (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value
