"""The one reader of the services' ``MYCA_*`` variables (their environment files, written by the
roles): on/off switches, whole numbers and numbers.  Unset or empty is the default; a value that
is not one raises ValueError naming the variable, the value and what it takes."""

from __future__ import annotations

from collections.abc import Mapping

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def switch(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """1/true/yes/on or 0/false/no/off, in any case."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ValueError(f"{name} is {env[name]!r}: expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")


def whole(env: Mapping[str, str], name: str, default: int, minimum: int = 0, unit: str = "") -> int:
    """A whole number of `unit`, at least `minimum`."""
    raw = env.get(name) or ""
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number{' of ' + unit if unit else ''}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be {minimum} or more, got {value}")
    return value


def number(env: Mapping[str, str], name: str, default: float, unit: str = "seconds", positive: bool = False) -> float:
    """A number of `unit`, 0 or more (more than 0 when `positive`)."""
    raw = env.get(name) or ""
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number of {unit}, got {raw!r}") from None
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'more than 0' if positive else '0 or more'}, got {raw!r}")
    return value
