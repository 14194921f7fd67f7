"""Checking a request's array against a model's input signature, before it is queued: rank and
trailing shape (any rank; the batch dimension is free), whether the values fit the model's
dtype, the row limit. A refusal is one line that says what was expected, e.g.
``expected int64 values shaped (N, 12); got numbers with a fraction or out of int64 range``.

The codecs decode bodies without knowing the model (any numeric dtype, booleans, or an object /
string array for values that are not numbers); what fits is decided here, in one place. The
common case (the body already has the model's dtype, or numbers cast to a float model) costs a
dtype comparison, a cast and, for floats, one finiteness pass: no Python loop over values.
"""

from __future__ import annotations

import numpy as np

from kernel_magics.errors import InvalidInput
from kernel_magics.formats.model_files import Signature, fmt_shape
from kernel_magics.serving.request.codecs import PayloadTooLarge

_NOT_NUMBERS = "non-numeric values (strings, null or objects)"
_KINDS = {"b": "booleans", "f": "numbers", "i": "numbers", "u": "numbers", "c": "complex numbers"}


def expectation(sig: Signature) -> str:
    """``expected float32 values shaped (N, 1, 8, 8)``."""
    return f"expected {sig.dtype.name} values shaped {fmt_shape(sig.shape)}"


def check_rows(array: np.ndarray, sig: Signature, max_rows: int) -> np.ndarray:
    """``array`` as the model takes it (its dtype, C-contiguous); InvalidInput (or
    PayloadTooLarge) naming what is wrong. Nothing that fails here reaches the batcher."""
    shape = sig.shape
    if array.ndim != len(shape):
        if array.ndim == len(shape) - 1 and array.shape == tuple(shape[1:]):
            raise InvalidInput(
                f"expected a list of rows (a {len(shape)}-D array); got a single row — "
                "wrap it in another list"
            )
        raise InvalidInput(
            f"expected a {len(shape)}-D array of rows shaped {fmt_shape(shape)}, "
            f"got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise InvalidInput("empty batch: send at least one row")
    check_row_count(array.shape[0], max_rows)
    for want, got in zip(shape[1:], array.shape[1:], strict=True):
        if want != -1 and want != got:
            if len(shape) == 2:
                raise InvalidInput(f"expected rows of {want} features, got {got}")
            raise InvalidInput(f"{expectation(sig)}; got rows shaped {fmt_shape(array.shape[1:])}")
    if array.dtype != sig.dtype:
        array = _cast(array, sig)
    if sig.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput("input contains NaN or infinity")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def check_row_count(rows: int, max_rows: int) -> None:
    """The one row limit of every route (``:predict``, ``/invocations``, v2): 413 over it."""
    if rows > max_rows:
        raise PayloadTooLarge(f"{rows} rows is over the limit of {max_rows} rows per request")


def _cast(array: np.ndarray, sig: Signature) -> np.ndarray:
    """What fits: a float model takes any numbers; an integer model whole numbers within its
    range (floats too when every value is whole: ``1.0`` is a valid token id); a bool model
    only true / false."""
    want, kind = sig.dtype, array.dtype.kind
    if want.kind == "f":
        fits = kind in "fiu"
    elif want.kind in "iu":
        fits = kind in "fiu"
        if fits and not np.can_cast(array.dtype, want):
            _check_whole_in_range(array, sig)
    else:  # bool; any other kind takes only its own
        fits = kind == want.kind
    if not fits:
        raise InvalidInput(f"{expectation(sig)}; got {_KINDS.get(kind, _NOT_NUMBERS)}")
    # float64 → float32 may overflow to infinity: the finiteness check after refuses it
    return array.astype(want)


def _check_whole_in_range(array: np.ndarray, sig: Signature) -> None:
    bounds = np.iinfo(sig.dtype)
    if array.dtype.kind == "f":
        # float(max) + 1 rounds to the first value out of range (2**63 for int64): compare with <
        low, high = float(bounds.min), float(bounds.max) + 1
        if not (np.trunc(array) == array).all() or array.min() < low or array.max() >= high:
            raise InvalidInput(
                f"{expectation(sig)}; got numbers with a fraction or out of {sig.dtype.name} range"
            )
    elif array.min() < bounds.min or array.max() > bounds.max:
        raise InvalidInput(f"{expectation(sig)}; got integers out of {sig.dtype.name} range")
