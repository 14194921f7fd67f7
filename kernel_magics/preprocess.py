"""Preprocessing that travels with a model version: feature and target scaling, one-hot codes.

``%train --scale`` fits a ``Scaling`` on the training split; ``training/scaling.py`` puts it
*inside* the exported graph (``(x - center) / scale`` before the network and the inverse on
regression outputs), so every consumer of the version (the inference process, ``%evaluate``,
``%optimize``'s ONNX export, MLflow's own loader) takes raw features and answers in raw units.

``%train --encode onehot`` fits a ``TableEncoder`` on a DataFrame's string and categorical
columns. Strings cannot enter a tensor graph, so the encoder is a declared step: a JSON file in
the model folder (``extra_files/km_preprocess.json``, covered by the version's SHA-256) that the
inference process and ``evaluation.loading`` apply before the graph. The graph's input is the
encoded matrix: numeric columns as they are, then one 0/1 column per category.

numpy and pandas only: the inference process imports this module.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput, clip

SCALES = ("standard", "minmax", "none")
ENCODINGS = ("onehot", "none")
PREPROCESS_FILE = "km_preprocess.json"
_FOLDER_PATH = Path("extra_files") / PREPROCESS_FILE  # where MLflow's extra_files puts it
_MAX_SHOWN = 8


# -- scaling ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scaling:
    """``(x - center) / scale``: per column for (rows, columns) data; one center and scale for
    every value of higher-rank rows (images, sequences keep their relative structure)."""

    method: str  # "standard" | "minmax"
    center: np.ndarray  # float64, shape (columns,) or ()
    scale: np.ndarray  # never 0: a constant column keeps scale 1

    @classmethod
    def fit(cls, values: np.ndarray, method: str) -> Scaling:
        check_scale(method)
        if method == "none":
            raise ValueError("Scaling.fit needs a method other than 'none'")
        data = np.asarray(values, dtype=np.float64)
        per_column = data.ndim == 2
        axis = 0 if per_column else None
        if method == "standard":
            center, spread = data.mean(axis=axis), data.std(axis=axis)
        else:
            center = data.min(axis=axis)
            spread = data.max(axis=axis) - center
        spread = np.where(np.abs(spread) > 1e-12, spread, 1.0)
        return cls(method, np.asarray(center, np.float64), np.asarray(spread, np.float64))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.center) / self.scale).astype(values.dtype, copy=False)

    def invert(self, values: np.ndarray) -> np.ndarray:
        return (values * self.scale + self.center).astype(values.dtype, copy=False)

    def describe(self) -> str:
        """``standard over 10 columns``: for the run's parameters."""
        where = f"{self.center.size} columns" if self.center.ndim else "all values"
        return f"{self.method} over {where}"


def check_scale(method: Any) -> None:
    if method not in SCALES:
        raise InvalidInput(f"scale must be one of {', '.join(SCALES)}, got {method!r}")


def check_encode(encoding: Any) -> None:
    if encoding is not None and encoding not in ENCODINGS:
        raise InvalidInput(f"encode must be one of {', '.join(ENCODINGS)}, got {encoding!r}")


# -- one-hot encoding ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    categories: tuple[str, ...] | None = None  # None: a numeric column, passed through

    @property
    def width(self) -> int:
        return len(self.categories) if self.categories is not None else 1

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Category → its 0/1 column; built once, not on every request."""
        return {c: i for i, c in enumerate(self.categories or ())}


@dataclass(frozen=True)
class TableEncoder:
    """A table's columns in training order; categorical ones become one 0/1 column per category.

    Rows to encode come as a DataFrame (columns by name; extra columns are ignored, as MLflow's
    schema enforcement does), a list of records ``[{"age": 40, "color": "red"}]`` or rows of
    values in training column order ``[[40, "red"]]``. A category not seen in training is a
    400-style ``InvalidInput`` naming the column, the value and the known ones: an all-zero
    code would silently answer for a row the model never learnt about.
    """

    columns: tuple[Column, ...]
    # float32 for a torch graph; float64 where the model compares numbers in double precision
    # (a scikit-learn tree's thresholds: float32 rounding would change its answers)
    dtype: str = "float32"

    @classmethod
    def fit(cls, frame: Any) -> TableEncoder:
        import pandas as pd

        columns = []
        for name in frame.columns:
            series = frame[name]
            if numeric_dtype(series.dtype):
                columns.append(Column(str(name)))
                continue
            if series.isna().any():
                raise InvalidInput(f"X column {str(name)!r} has missing values: drop or fill them")
            if isinstance(series.dtype, pd.CategoricalDtype):
                series = series.cat.remove_unused_categories()
                labels = [_label(c) for c in series.cat.categories]
            else:
                labels = sorted({_label(v) for v in series.to_numpy()})
            columns.append(Column(str(name), tuple(labels)))
        return cls(tuple(columns))

    @property
    def categorical(self) -> bool:
        return any(c.categories is not None for c in self.columns)

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def feature_names(self) -> list[str]:
        """The graph's input columns: ``age``, ``color=red``, ``color=blue`` …"""
        out: list[str] = []
        for column in self.columns:
            if column.categories is None:
                out.append(column.name)
            else:
                out.extend(f"{column.name}={c}" for c in column.categories)
        return out

    def encode(self, rows: Any) -> np.ndarray:
        """``rows`` as the (rows, width) matrix the graph takes, in ``dtype``."""
        frame = self._frame(rows)
        if len(frame) == 0:
            raise InvalidInput("empty batch: send at least one row")
        out = np.zeros((len(frame), self.width), dtype=np.dtype(self.dtype))
        at = 0
        for column in self.columns:
            values = frame[column.name].to_numpy()
            if column.categories is None:
                out[:, at] = _numbers(values, column.name)
            else:
                codes = np.fromiter(
                    (column.index.get(_label(v), -1) for v in values),
                    dtype=np.int64,
                    count=len(values),
                )
                if (codes < 0).any():
                    bad = values[int(np.flatnonzero(codes < 0)[0])]
                    raise InvalidInput(
                        f"column {column.name!r} has the value {clip(_label(bad))!r}, not seen in "
                        f"training (known: {_shown(column.categories)})"
                    )
                out[np.arange(len(frame)), at + codes] = 1.0
            at += column.width
        return out

    def _frame(self, rows: Any) -> Any:
        import pandas as pd

        # a request's rows come as JSON: a list (or the frame or array a kernel caller passes)
        if not isinstance(rows, pd.DataFrame | np.ndarray | list):
            raise InvalidInput("rows must be a list of records or of lists of values")
        return rows_to_frame(rows, [c.name for c in self.columns])

    # -- the file in the model folder ----------------------------------------------------------
    def to_json(self) -> str:
        doc = {
            "encoding": "onehot",
            "columns": [
                {"name": c.name}
                | ({"categories": list(c.categories)} if c.categories is not None else {})
                for c in self.columns
            ],
        } | ({"dtype": self.dtype} if self.dtype != "float32" else {})
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> TableEncoder:
        doc = json.loads(text)
        return cls(
            tuple(
                Column(
                    c["name"], tuple(c["categories"]) if c.get("categories") is not None else None
                )
                for c in doc["columns"]
            ),
            dtype=doc.get("dtype", "float32"),
        )

    def write(self, folder: Path) -> Path:
        path = folder / PREPROCESS_FILE
        path.write_text(self.to_json())
        return path


@dataclass(frozen=True)
class RowWording:
    """How a caller's messages speak of rows that are not a table of its columns: the rule
    (``rows_to_frame``) is one, the words fit where the rows came from."""

    shape: str = (
        "each row must be a record with the columns {columns} or a list of {count} values "
        "in that order"
    )
    missing: str = "rows miss the column(s) {missing}"
    names: Callable[[Sequence[str]], str] = lambda names: _shown(names)


def rows_to_frame(rows: Any, columns: Sequence[str], wording: RowWording = RowWording()) -> Any:
    """What a table row is, for every reader of table rows (the encoding step, the reference
    profile and drift): ``rows`` as a DataFrame with at least ``columns`` (str names).

    ``rows`` is a DataFrame (copied, its column names as str; extra columns are kept and the
    caller ignores them, as MLflow's schema enforcement does), or rows that are all records
    ``{column: value}`` or all lists of ``len(columns)`` values in that order (an array's rows
    count as lists). Anything else, or records without one of ``columns``, is an
    ``InvalidInput`` in the caller's ``wording``."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        frame = rows.rename(columns=str)  # a copy: the caller's frame stays as it was
    else:
        if isinstance(rows, list):
            records = rows  # a request's rows: no copy on the request path
        else:
            records = rows.tolist() if isinstance(rows, np.ndarray) else list(rows)
        if records and all(isinstance(r, dict) for r in records):
            frame = pd.DataFrame.from_records(records)
        elif all(isinstance(r, list | tuple) and len(r) == len(columns) for r in records):
            frame = pd.DataFrame.from_records(records, columns=list(columns))
        else:
            raise InvalidInput(
                wording.shape.format(columns=wording.names(columns), count=len(columns))
            )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(wording.missing.format(missing=wording.names(missing)))
    return frame


def read_encoder(model_folder: Path) -> TableEncoder | None:
    """The declared encoding step of a version's MLflow folder, if it has one."""
    path = Path(model_folder) / _FOLDER_PATH
    return TableEncoder.from_json(path.read_text()) if path.is_file() else None


# -- helpers ------------------------------------------------------------------------------------
def numeric_dtype(dtype: Any) -> bool:
    """Numbers or booleans (not complex): what a model takes as it is, without encoding."""
    import pandas as pd

    return pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )


def _label(value: Any) -> str:
    """One spelling per category, whatever the JSON or pandas type: ``2``, ``2.0`` and ``"2"``
    are the same category."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _numbers(values: np.ndarray, column: str) -> np.ndarray:
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"column {column!r} takes numbers") from None
    if not np.isfinite(numbers).all():
        raise InvalidInput(f"column {column!r} has NaN or infinite values")
    return numbers


def _shown(values: Any) -> str:
    items = [repr(v) for v in list(values)[:_MAX_SHOWN]]
    more = len(values) - _MAX_SHOWN
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")
