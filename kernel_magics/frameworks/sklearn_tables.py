"""scikit-learn pipelines that take a DataFrame with string columns: a ``Pipeline`` whose first
step is a ``ColumnTransformer`` one-hot encoding the string columns (``OneHotEncoder``) and
transforming the numeric ones (``StandardScaler`` …).

Strings cannot enter a float tensor graph, so the version's declared encoding step
(``preprocess.TableEncoder``, the one ``%train --encode onehot`` registers) takes the string
columns, with the ``OneHotEncoder``'s own categories; the served model is the *same* pipeline
on the encoded matrix: its ``ColumnTransformer`` rebuilt to pass the one-hot columns through and
apply the fitted numeric transformers to the numeric columns, the later steps unchanged. That
numeric pipeline is what ``sklearn_models`` converts to ONNX (or serves itself, with the reason
said) and logs; it is checked against the original pipeline's answers on the DataFrame rows
given, so a rebuilt pipeline that answers differently is never served. The inference process
then takes JSON rows with named columns (records, ``dataframe_split``/``dataframe_records``) as
it does for a torch version with an encoding step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput

SUPPORTED = (
    "a Pipeline whose first step is a ColumnTransformer that one-hot encodes the string "
    "columns (OneHotEncoder, drop=None) and transforms or drops the rest"
)


@dataclass
class TablePipeline:
    """The DataFrame pipeline as an encoding step and a pipeline on the encoded matrix."""

    encoder: Any  # preprocess.TableEncoder
    numeric: Any  # the same pipeline on encoder.encode(frame)


def string_columns(frame: Any) -> list[str]:
    from kernel_magics.preprocess import numeric_dtype

    return [str(c) for c in frame.columns if not numeric_dtype(frame[c].dtype)]


def split_table_pipeline(model: Any, frame: Any) -> TablePipeline:
    """``model`` (fitted, taking ``frame``'s columns) as an encoder and a numeric pipeline;
    InvalidInput names what is not supported."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from kernel_magics.preprocess import Column, TableEncoder

    strings = string_columns(frame)
    first = model.steps[0][1] if isinstance(model, Pipeline) else None
    if not isinstance(first, ColumnTransformer):
        raise InvalidInput(
            f"the example has string columns {strings}: a model taking them must be {SUPPORTED}"
        )
    names = [str(c) for c in getattr(first, "feature_names_in_", [])]
    missing = [c for c in names if c not in frame.columns]
    if not names or missing:
        raise InvalidInput(f"the example lacks the columns {missing} the pipeline was fitted on")
    categories: dict[str, tuple[str, ...]] = {}
    for _, transformer, columns in first.transformers_:
        if not isinstance(transformer, OneHotEncoder):
            continue
        if transformer.drop is not None or getattr(transformer, "infrequent_categories_", None):
            raise InvalidInput(f"a OneHotEncoder with drop= or infrequent categories: {SUPPORTED}")
        for name, found in zip(_names(columns, names), transformer.categories_, strict=True):
            categories[name] = tuple(str(c) for c in found)
    unencoded = [c for c in strings if c in names and c not in categories]
    if unencoded:
        raise InvalidInput(f"string columns {unencoded} are not one-hot encoded: {SUPPORTED}")
    # double precision: the numbers reach the pipeline as they reached it in training
    encoder = TableEncoder(tuple(Column(n, categories.get(n)) for n in names), dtype="float64")
    positions = _positions(encoder)
    rebuilt = []
    for step, transformer, columns in first.transformers_:
        if _is_keyword(transformer) and transformer == "drop":
            continue
        at = [i for name in _names(columns, names) for i in positions[name]]
        kept = "passthrough" if isinstance(transformer, OneHotEncoder) else transformer
        rebuilt.append((step, copy.deepcopy(kept), at))
    numeric_ct = ColumnTransformer(rebuilt, remainder="drop")
    encoded = encoder.encode(frame[names])
    try:
        numeric_ct.fit(encoded)  # the structure (column indices, output widths) only …
    except Exception as err:
        raise InvalidInput(f"the pipeline's transformers cannot be rebuilt: {err}") from None
    # … then the fitted transformers themselves (the one-hot steps stay passed through, the
    # remainder dropped)
    fitted = {
        step: t
        for step, t, _ in first.transformers_
        if not _is_keyword(t) and not isinstance(t, OneHotEncoder)
    }
    numeric_ct.transformers_ = [
        (step, _unnamed(fitted[step]) if step in fitted else t, at)
        for step, t, at in numeric_ct.transformers_
    ]
    numeric = Pipeline([(model.steps[0][0], numeric_ct), *model.steps[1:]])
    return TablePipeline(encoder, numeric)


def _unnamed(transformer: Any) -> Any:
    """A copy that takes unnamed columns: it now sees the encoded matrix, and would warn at
    every call that the matrix has no column names."""
    kept = copy.deepcopy(transformer)
    if hasattr(kept, "feature_names_in_"):
        del kept.feature_names_in_
    return kept


def _is_keyword(transformer: Any) -> bool:
    return isinstance(transformer, str)  # "passthrough" / "drop"


def _names(columns: Any, names: list[str]) -> list[str]:
    """A transformer's columns (names, positions, a boolean mask) as column names."""
    values = list(columns) if not isinstance(columns, str) else [columns]
    if values and isinstance(values[0], bool | np.bool_):
        return [n for n, keep in zip(names, values, strict=True) if keep]
    return [names[int(v)] if isinstance(v, int | np.integer) else str(v) for v in values]


def _positions(encoder: Any) -> dict[str, list[int]]:
    """Each column's places in the encoded matrix (one for a number, one per category)."""
    out, at = {}, 0
    for column in encoder.columns:
        out[column.name] = list(range(at, at + column.width))
        at += column.width
    return out
