"""The model's input contract, from the version's metadata, checked per request.

BentoML's own ``Shape`` validator reshapes whatever arrives into the declared
shape, so 64 flat numbers would pass for one 8×8 image, and its ``DType`` turns
``"1.5"``, ``true`` and ``null`` into numbers.  Here the shape must match exactly
(any batch size) and values are converted only when nothing is lost: numbers
of the right kind, in the dtype's range, integers exactly representable in a float dtype, and
finite (NaN and Infinity are refused on every route).  Every refusal is a ``ValueError`` that
says what was expected (a 400 on both routes).
"""

from __future__ import annotations

from itertools import chain
from dataclasses import dataclass
from typing import Any

from modelyard.registry.model.signature import InputSignature

import numpy as np

_NUMERIC_KINDS = "biuf"


@dataclass(frozen=True)
class InputSpec(InputSignature):
    """The declared input (``registry.model.signature`` owns its metadata form), checked per request."""

    def check(self, array: np.ndarray) -> np.ndarray:
        if array.ndim != len(self.shape) or tuple(array.shape[1:]) != self.shape[1:]:
            raise ValueError(f"expected an array of shape {list(self.shape)} (the first dimension is the batch), "
                             f"got shape {list(array.shape)}")
        if array.shape[0] == 0:
            raise ValueError("the batch is empty")
        return array

    def example(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, *self.shape[1:]), dtype=self.dtype)


def coerce(values: Any, dtype: str) -> np.ndarray:
    """``values`` (nested lists from JSON, or an array) as an array of ``dtype``, or ValueError.

    Refused: anything but numbers (strings, null, objects, complex), booleans for a
    numeric dtype and numbers for a boolean one, fractions for an integer dtype,
    ragged nesting, and values outside the dtype's range.
    """
    target = np.dtype(dtype)
    if isinstance(values, np.ndarray):
        array = values
    else:
        _check_leaf_types(values, boolean=target.kind == "b")
        try:
            array = np.asarray(values)
        except (ValueError, OverflowError) as exc:  # ragged nesting
            raise ValueError(f"inputs must be a rectangular array of numbers ({exc})") from None
    kind = array.dtype.kind
    if kind not in _NUMERIC_KINDS:
        raise ValueError(f"inputs must be a rectangular array of numbers, got {array.dtype} values"
                         + (" (an integer beyond 64 bits?)" if kind == "O" else ""))
    if (kind == "b") != (target.kind == "b"):
        raise ValueError(f"inputs must be {'booleans' if target.kind == 'b' else 'numbers'} for dtype {dtype}, "
                         f"got {array.dtype}")
    if np.can_cast(array.dtype, target, "safe") and not (kind in "iu" and target.kind == "f"):
        return _finite(array.astype(target, copy=False))
    if target.kind in "iu":
        if kind == "f":
            raise ValueError(f"inputs must be integers for dtype {dtype}, got fractions")
        info = np.iinfo(target)
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise ValueError(f"inputs are outside the range of {dtype} ({info.min}..{info.max})")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target, copy=False)
        # Only a wider float can overflow a narrower one; integers always fit a float's range.
        overflowed = kind == "f" and array.size and (np.isinf(converted) & ~np.isinf(array)).any()
    if overflowed:
        raise ValueError(f"inputs are outside the range of {dtype}")
    if kind in "iu" and target.kind == "f":
        _exact_integers(array, converted, dtype)
    return _finite(converted)


def _exact_integers(array: np.ndarray, converted: np.ndarray, dtype: str) -> None:
    """Integers must survive the conversion to a float dtype unchanged: ``2**40 + 1`` in float32 is
    another number.  Those within the mantissa's exact range need no look; the rest are compared
    one by one (as Python integers, which do not round)."""
    exact = 2 ** (np.finfo(converted.dtype).nmant + 1)
    suspect = np.flatnonzero((array > exact) | (array < -exact))
    flat, flat_converted = array.reshape(-1), converted.reshape(-1)
    for index in suspect:
        if int(flat_converted[index]) != int(flat[index]):
            raise ValueError(f"input {int(flat[index])} cannot be represented exactly in {dtype}: refused rather "
                             f"than rounded to {int(flat_converted[index])}")


def _finite(array: np.ndarray) -> np.ndarray:
    """NaN and infinities are refused on every route (JSON and binary, /predict and the Open Inference Protocol alike):
    a model fed them answers NaN, which JSON cannot even carry."""
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise ValueError("inputs must be finite numbers: NaN and Infinity are refused")
    return array


def _check_leaf_types(values: Any, *, boolean: bool) -> None:
    """Every leaf of nested lists is a number (or, for a boolean dtype, a bool).

    The nesting is flattened level by level with C-speed ``chain`` and the leaves' types
    collected with ``map``: a per-element Python loop cost ten times the array conversion.
    """
    level = values if isinstance(values, list) else [values]
    while level and isinstance(level[0], list):
        try:
            level = list(chain.from_iterable(level))
        except TypeError:  # a number beside a list: ragged (np.asarray words it better)
            return
    found = set(map(type, level))
    allowed = {bool} if boolean else {int, float}
    if not found <= allowed:
        other = sorted("null" if kind is type(None) else kind.__name__ for kind in found - allowed)
        raise ValueError(f"inputs must be {'booleans' if boolean else 'numbers'}, got {', '.join(other)}")

