"""Checks of the arguments of lmmfast's public functions.

Each check returns the argument in its working form or raises a
``DataError`` that names the argument, the value given and what is accepted.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import DataError

__all__ = ["describe", "as_flag", "as_count", "as_probability", "as_positive", "as_choice",
           "as_n_jobs"]


def describe(value) -> str:
    """A short description of ``value`` for a message (arrays by shape, not contents)."""
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return f"an array of shape {value.shape}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _scalar(value):
    """A 0-d array as its Python value; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def as_flag(value, name: str) -> bool:
    """``value`` as a bool: True, False (numpy's too) or the integers 1 and 0."""
    v = _scalar(value)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral) and v in (0, 1):
        return bool(v)
    raise DataError(f"{name} must be True or False, got {describe(value)}")


def as_count(value, name: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``; an integral float (``1e3``) is accepted, 2.5 is not."""
    v = _scalar(value)
    if not isinstance(v, (bool, np.bool_)):
        if isinstance(v, numbers.Integral) and v >= minimum:
            return int(v)
        if isinstance(v, numbers.Real) and math.isfinite(v) and float(v).is_integer() \
                and v >= minimum:
            return int(v)
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise DataError(f"{name} must be {what}, got {describe(value)}")


def as_positive(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``)."""
    v = _scalar(value)
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) \
            and math.isfinite(v) and (v > 0 or (allow_zero and v == 0)):
        return float(v)
    what = "a finite number >= 0" if allow_zero else "a finite number > 0"
    raise DataError(f"{name} must be {what}, got {describe(value)}")


def as_probability(value, name: str) -> float:
    """``value`` as a float strictly between 0 and 1 (a confidence level)."""
    v = _scalar(value)
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and 0 < v < 1:
        return float(v)
    raise DataError(f"{name} must be a number between 0 and 1 (e.g. 0.95), got {describe(value)}")


def as_choice(value, name: str, choices: tuple[str, ...], aliases: dict | None = None) -> str:
    """``value`` (a string, any case) as one of ``choices`` (or an alias of one)."""
    if isinstance(value, str):
        key = value.strip().lower()
        key = (aliases or {}).get(key, key)
        if key in choices:
            return key
    listed = ", ".join(repr(c) for c in choices)
    raise DataError(f"{name} must be one of {listed}, got {describe(value)}")


def as_n_jobs(value, cpus: int) -> int:
    """Workers from ``n_jobs``: None or -1 for ``cpus``, else a positive integer."""
    if value is None:
        return cpus
    v = _scalar(value)
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v == -1:
        return cpus
    try:
        return as_count(value, "n_jobs", minimum=1)
    except DataError:
        raise DataError(f"n_jobs must be a positive integer, or None or -1 for all cores, "
                        f"got {describe(value)}") from None
