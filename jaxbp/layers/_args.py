"""Argument checks for layer constructors: a bad argument is a :class:`LayerError` at construction.

Each check takes the constructor's name (``"Dense"``), the argument's name and its value, and
returns the value normalised (a Python ``int``, ``float``, ``bool``, tuple or dtype), so a
constructor starts with e.g. ``features = positive_int("Dense", "features", features)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from jaxbp.errors import LayerError


def _fail(layer: str, what: str, expected: str, value: Any) -> LayerError:
    verb = "lie in" if expected.startswith("a finite number in") else "be"
    expected = expected.removeprefix("a finite number in ") if verb == "lie in" else expected
    return LayerError(f"{layer}: {what} must {verb} {expected}, got {value!r} ({type(value).__name__})")


def positive_int(layer: str, what: str, value: Any) -> int:
    """``value`` as an int >= 1 (NumPy integers accepted; bools, floats and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _fail(layer, what, "a positive int", value)
    return int(value)


def integer(layer: str, what: str, value: Any) -> int:
    """``value`` as an int of any sign (an axis)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(layer, what, "an int", value)
    return int(value)


def real(
    layer: str,
    what: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``lo_open``/``hi_open``: that bound excluded)."""
    left = "(-inf" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    expected = f"a finite number in {left}, {right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(layer, what, expected, value)
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        raise _fail(layer, what, expected, value)
    return float(value)


def flag(layer: str, what: str, value: Any) -> bool:
    """``value`` as a bool (``True``/``False``, or a NumPy bool)."""
    if not isinstance(value, (bool, jnp.bool_)):
        raise _fail(layer, what, "True or False", value)
    return bool(value)


def positive_ints(layer: str, what: str, value: Any, rank: int | None = None) -> tuple[int, ...]:
    """``value`` as a non-empty tuple of ints >= 1 (of length ``rank`` when given; an int is repeated)."""
    given = value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and rank is not None:
        value = (value,) * rank
    try:
        t = tuple(value)
    except TypeError:
        raise _fail(layer, what, "a sequence of positive ints", given) from None
    ok = t and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in t)
    if not ok or (rank is not None and len(t) != rank):
        length = f"{rank} " if rank is not None else ""
        raise _fail(layer, what, f"{length}positive ints".strip(), given)
    return tuple(int(v) for v in t)


def padding(layer: str, value: Any, rank: int | None) -> Any:
    """``"SAME"``/``"VALID"`` (any case), an int >= 0, or ``rank`` ``(lo, hi)`` pairs of ints >= 0."""
    pairs_of = f"{rank} non-negative" if rank else "non-negative"
    expected = f"'SAME', 'VALID', an int >= 0 or {pairs_of} (lo, hi) pairs"
    if isinstance(value, str):
        if value.upper() not in ("SAME", "VALID"):
            raise _fail(layer, "padding", expected, value)
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 0:
            raise _fail(layer, "padding", expected, value)
        return int(value)
    try:
        pairs = [tuple(p) for p in value]
    except TypeError:
        raise _fail(layer, "padding", expected, value) from None
    nonneg = all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for p in pairs for v in p
    )
    if not nonneg or any(len(p) != 2 for p in pairs) or (rank is not None and len(pairs) != rank):
        raise _fail(layer, "padding", expected, value)
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def initializer(layer: str, what: str, value: Any) -> Callable:
    """``value`` if callable (an initializer ``(key, shape, dtype) -> array``)."""
    if not callable(value):
        raise _fail(layer, what, "an initializer (key, shape, dtype) -> array", value)
    return value


def float_dtype(layer: str, what: str, value: Any) -> Any:
    """``value`` if it names a floating-point dtype (``jnp.float32``, ``"bfloat16"``, ...)."""
    try:
        ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise _fail(layer, what, "a floating-point dtype", value)
    return value


def target_shape(layer: str, value: Any) -> tuple[int, ...]:
    """``value`` as a tuple of ints >= 1, at most one of them -1 (a reshape target)."""
    try:
        t = tuple(value)
    except TypeError:
        raise _fail(layer, "shape", "a sequence of ints >= 1 (one may be -1)", value) from None
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in t)
    if not ints or any(v < 1 and v != -1 for v in t) or sum(v == -1 for v in t) > 1:
        raise _fail(layer, "shape", "a sequence of ints >= 1 (one may be -1)", value)
    return tuple(int(v) for v in t)
