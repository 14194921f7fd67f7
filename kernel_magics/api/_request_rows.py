"""What ``api.predict`` sends: the rows a notebook has, as the array a serving target posts.

Numbers go as a numeric array (.npy on the wire); a DataFrame with string columns, or a list of
records, goes as a 1-D object array of records (JSON on the wire) for a version that declares an
encoding step (``preprocess.py``). numpy and pandas are imported when called.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.preprocess import numeric_dtype

if TYPE_CHECKING:
    import numpy as np


def request_rows(X: Any) -> np.ndarray:
    """Rows of any shape (N, ...) as numpy: floats as float32, integers as int64, bools as they
    are. A 1-D input is one row. The serving target checks shape and dtype against the
    version's signature and names what it expected."""
    import numpy as np

    if hasattr(X, "detach"):  # torch tensor
        X = X.detach().cpu().numpy()
    elif hasattr(X, "to_dict") and hasattr(X, "columns"):  # a DataFrame
        # strings or categories: table rows for an encoding step (complex numbers are refused below)
        if any(not numeric_dtype(d) and d.kind != "c" for d in X.dtypes):
            return _records(X.to_dict(orient="records"))
        X = X.to_numpy()
    elif hasattr(X, "to_numpy"):  # a Series
        X = X.to_numpy()
    elif isinstance(X, list) and X and all(isinstance(row, dict) for row in X):
        return _records(X)
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"cannot turn the input into an array: {first_line(err)}") from None
    if array.dtype.kind == "O":  # e.g. a DataFrame of mixed numeric columns
        with contextlib.suppress(TypeError, ValueError):
            array = array.astype(np.float32)
    kind = array.dtype.kind
    if kind == "f":
        array = array.astype(np.float32, copy=False)
    elif kind in "iu":
        array = array.astype(np.int64, copy=False)
    elif kind != "b":
        raise InvalidInput(
            f"the input must hold numbers or booleans, got {array.dtype} values "
            "(encode strings and categories as numbers first)"
        )
    if array.ndim == 0:
        raise InvalidInput("expected rows, got a single number")
    return array.reshape(1, -1) if array.ndim == 1 else array


def _records(rows: list[dict]) -> np.ndarray:
    """Table rows with strings, for a version that declares an encoding step (--encode
    onehot): a 1-D object array of records, which the target sends as JSON."""
    import numpy as np

    array = np.empty(len(rows), dtype=object)
    array[:] = rows
    return array
