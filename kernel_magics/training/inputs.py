"""Model inputs from what a notebook user has: arrays, tensors, lists, DataFrames.

One rule for the dtype a model gets, used for training data and for registration examples
alike, so a version is exported with the dtype it was trained on: int64 stays int64 (token ids
for an ``nn.Embedding``), bool stays bool, every other number becomes float32 (float64 from
numpy and pandas included). A DataFrame is tabular features: always float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.preprocess import numeric_dtype

KEPT_DTYPES = (np.dtype(np.int64), np.dtype(np.bool_))


def model_input_array(value: Any, what: str) -> np.ndarray:
    """``value`` as a C-contiguous array of rows in the dtype the model takes."""
    if isinstance(value, pd.DataFrame | pd.Series):
        return frame_features(value, what)[0]
    array = as_array(value, what)
    if array.dtype.kind not in "biuf":
        try:
            array = array.astype(np.float32)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"{what} has non-numeric values (dtype {array.dtype}): convert it to numbers first"
            ) from None
    dtype = array.dtype if array.dtype in KEPT_DTYPES else np.dtype(np.float32)
    return np.ascontiguousarray(array, dtype=dtype)


def input_rows(value: Any, what: str) -> np.ndarray:
    """``value`` as rows the model takes (``model_input_array``): one row given as a vector
    becomes a batch of one; no rows at all is refused."""
    array = model_input_array(value, what)
    if array.ndim == 1:  # one row, as %predict takes one row
        array = array.reshape(1, -1)
    if len(array) == 0:
        raise InvalidInput(f"{what} has no rows: pass a few input rows of the model")
    return array


def frame_features(frame: pd.DataFrame | pd.Series, what: str) -> tuple[np.ndarray, list[str]]:
    """A DataFrame's values as float32 (rows, columns) and its column names."""
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    bad = [c for c in frame.columns if not numeric_dtype(frame[c].dtype)]
    if bad:
        raise InvalidInput(
            f"{what} has non-numeric columns {names(bad)}: encode them as numbers first "
            "(%train --encode onehot, or pandas.get_dummies)"
        )
    array = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    return np.ascontiguousarray(array), [str(c) for c in frame.columns]


def as_array(value: Any, what: str) -> np.ndarray:
    """A tensor, array or nested list as a numpy array (any dtype), with one-line errors."""
    if hasattr(value, "detach") and hasattr(value, "is_complex"):  # a torch tensor
        import torch

        value = value.detach().cpu()
        if value.is_complex():
            raise InvalidInput(f"{what} is a complex tensor: use real numbers")
        if value.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            value = value.float()
        return value.resolve_conj().resolve_neg().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise InvalidInput(f"{what} cannot be read as an array: {first_line(exc)}") from None
    if array.dtype.kind == "c":
        raise InvalidInput(f"{what} has complex numbers: use real numbers")
    if array.ndim == 0:
        raise InvalidInput(
            f"{what} is a single {type(value).__name__}, not an array or tensor of rows"
        )
    return array


def plain(value: Any) -> Any:
    """numpy scalars (and 0-d arrays or tensors) become Python values, so labels and metrics
    compare, print and JSON-encode simply."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def names(columns: Any, limit: int = 8) -> str:
    """``'a', 'b' and 3 more``: column names for a message."""
    shown = [repr(str(c)) for c in list(columns)[:limit]]
    more = len(list(columns)) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
