"""Checks for the bundled callbacks' parameters, shared by their constructors and
``set_params`` (through :attr:`CallbackBase._param_checks`): a bad value is refused with a
message naming the parameter and what it takes, before anything is set."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from .._protocol import ParamError

Check = Callable[[Any], Any]


def checks(**by_name: Check) -> Mapping[str, Check]:
    """A callback class's ``_param_checks`` (read-only)."""
    return MappingProxyType(by_name)


def whole(name: str, low: int = 1) -> Check:
    """An integer ``>= low`` (not a bool, not a string, not a float)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ParamError(f"{name} must be an integer >= {low}, got {value!r}")
        return value

    return check


def number(name: str, *, above: float | None = None, low: float | None = None,
           high: float | None = None) -> Check:  # fmt: skip
    """A finite number (int or float, not a bool), ``> above``, ``>= low``, ``<= high``."""
    if above is not None:
        want = f"a number > {above:g}"
    elif low is not None:
        want = f"a number >= {low:g}"
    else:
        want = "a finite number"
    if high is not None:
        want += f" and <= {high:g}"

    def check(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or (above is not None and value <= above)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise ParamError(f"{name} must be {want}, got {value!r}")
        return float(value)

    return check


def flag(name: str) -> Check:
    """``True`` or ``False`` (a string such as ``"false"`` is refused, never truthy)."""

    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ParamError(f"{name} must be true or false, got {value!r}")
        return value

    return check


def text(name: str) -> Check:
    """A non-empty string."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ParamError(f"{name} must be a non-empty string, got {value!r}")
        return value

    return check


def choice(name: str, choices: Sequence[str]) -> Check:
    """One of ``choices``."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ParamError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def names(name: str, *, optional: bool = False) -> Check:
    """A list of non-empty strings, or one string (comma-separated names: ``"loss,acc"``).
    With ``optional``, None or an empty list is None (no filter)."""
    want = "a list of names or a comma-separated string" + (" (or null)" if optional else "")

    def check(value: Any) -> list[str] | None:
        if value is None and optional:
            return None
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
            out = [v for v in items if v]
        elif isinstance(value, (list, tuple)):
            if not all(isinstance(v, str) and v.strip() for v in value):
                raise ParamError(f"{name} must be {want}, got {value!r}: not all non-empty strings")
            out = [v.strip() for v in value]
        else:
            raise ParamError(f"{name} must be {want}, got {value!r}")
        if not out and optional:
            return None
        return out

    return check
