"""Turn what a notebook user has (arrays, tensors, DataFrames) into tensors ready to train on.

Every problem with the data is found here, before an MLflow run exists, and reported as one
``InvalidInput`` line that names what to fix.

Features: rows of any shape, (N, ...) — tabular rows, images (N, C, H, W), sequences (N, T, F),
token ids (N, T). Their dtype follows ``training.inputs`` (int64 and bool kept, float32
otherwise); a DataFrame is tabular float32 features.

String and categorical columns of a DataFrame are refused unless ``encode="onehot"``: then a
``preprocess.TableEncoder`` fitted on X turns each into one 0/1 column per category (the version
carries it; see ``preprocess.py``). Scaling is not done here but in ``training/scaling.py``, on
the training split.

Targets: class labels (N,), or one label per position (N, T) for a model that answers
(N, T, classes); numbers (N,) or (N, k) for regression. A DataFrame's columns are separate
targets, so several of them are regression targets only.

Task inference (``task=None``): a float target is regression. A bool, string, object or
categorical target is classification. An integer target is classification when it has at most
``MAX_INFERRED_CLASSES`` (50) distinct values and at most 20% of the rows are distinct values (a
target with only 2 distinct values always counts), otherwise regression (counts, years, prices
in cents). Pass ``task=`` to override.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from kernel_magics.errors import InvalidInput
from kernel_magics.preprocess import Scaling, TableEncoder, check_encode
from kernel_magics.training.config import TASKS, check_split_options
from kernel_magics.training.inputs import (
    as_array,
    frame_features,
    model_input_array,
    names,
    numeric_dtype,
    plain,
)

__all__ = ["TASKS", "PreparedData", "prepare_data"]
MAX_INFERRED_CLASSES = 50
MAX_CLASS_FRACTION = 0.2


@dataclass
class PreparedData:
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    task: str  # "classification" | "regression"
    n_features: int  # values per row (columns of tabular data)
    n_outputs: int  # classes for classification, target columns for regression
    classes: list | None  # original label values in index order (classification)
    feature_names: list[str] | None
    input_example: np.ndarray  # first 5 rows of the features, in the model's input dtype
    # "validation", or "train" when val_split=0 left no validation set: then val_loss and the
    # metrics are computed on the training rows.
    metrics_on: str = "validation"
    stratified: bool = False  # whether the split kept the class proportions
    target_name: str | None = None
    row_shape: tuple[int, ...] = ()  # the shape of one row of X: (64,), (1, 8, 8), (T, F)
    # The declared encoding step (encode="onehot" on a DataFrame with string columns): X and
    # input_example are already encoded.
    encoder: TableEncoder | None = None
    # Set by training.scaling.scale_data: X_train/X_val (and y for regression) are scaled
    # with these; input_example stays raw, as the registered graph takes it.
    scaling: Scaling | None = None
    target_scaling: Scaling | None = None
    # Next-token rows of a text (training/text.py): the metrics are perplexity and next-token
    # accuracy, not per-class scores over the vocabulary.
    language_model: bool = False
    # The features as the caller gave them (the DataFrame before encoding, or the rows) and the
    # training split's positions in them: the default reference profile for drift.
    raw_features: Any = field(default=None, repr=False)
    train_index: np.ndarray | None = field(default=None, repr=False)

    def training_rows(self) -> Any:
        """The training split's raw rows (what a client sends), for the reference profile."""
        if self.raw_features is None or self.train_index is None:
            return None
        if hasattr(self.raw_features, "iloc"):
            return self.raw_features.iloc[self.train_index]
        return self.raw_features[self.train_index]


def prepare_data(
    X: Any,
    y: Any = None,
    *,
    task: str | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    encode: str | None = None,
) -> PreparedData:
    """Validate and convert (X, y), infer the task, and make a seeded train/validation split.

    ``y`` may be the name of a column of the DataFrame ``X``; that column becomes the target and
    is dropped from the features. ``encode="onehot"`` one-hot encodes string and categorical
    columns of a DataFrame ``X``.
    """
    check_split_options(task, val_split, seed)
    check_encode(encode)
    target_name = None
    if isinstance(y, str):
        X, y, target_name = _split_target_column(X, y)
    elif y is None:
        raise InvalidInput(
            "y is missing: pass the targets, or the name of a target column of the DataFrame X"
        )
    elif isinstance(y, pd.Series) and y.name is not None:
        target_name = str(y.name)

    # Values too large for float32 become inf; the finiteness check reports them, so numpy's
    # overflow warning would only repeat it less clearly.
    with np.errstate(over="ignore", invalid="ignore"):
        return _prepare(X, y, task, val_split, seed, target_name, encode == "onehot")


def _prepare(
    X: Any,
    y: Any,
    task: str | None,
    val_split: float,
    seed: int,
    target_name: str | None,
    onehot: bool,
) -> PreparedData:
    encoder = _fit_encoder(X) if onehot else None
    features, feature_names = _encoded(X, encoder) if encoder else _features(X)
    target = _target_frame(y)
    if len(target) != len(features):
        raise InvalidInput(f"X has {len(features)} rows but y has {len(target)}")
    if len(features) < 2:
        raise InvalidInput(f"X has {len(features)} row(s): training needs at least 2")

    task = task or _infer_task(target)
    if task == "classification":
        per_position = target.shape[1] > 1 and not isinstance(y, pd.DataFrame)
        y_all, classes = _position_indices(target) if per_position else _class_indices(target)
        n_outputs = len(classes)
    else:
        y_all, classes = _regression_targets(target), None
        n_outputs = y_all.shape[1]

    train_idx, val_idx, stratified = _split(len(features), y_all, task, val_split, seed)
    # torch warns on read-only arrays (a DataFrame's values can be one): copy only those
    X_all = torch.from_numpy(features if features.flags.writeable else features.copy())
    y_tensor = torch.from_numpy(y_all)
    train_rows, val_rows = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    metrics_on = "validation" if len(val_rows) else "train"
    return PreparedData(
        X_train=X_all[train_rows],
        y_train=y_tensor[train_rows],
        X_val=X_all[val_rows],
        y_val=y_tensor[val_rows],
        task=task,
        n_features=math.prod(features.shape[1:]),
        n_outputs=n_outputs,
        classes=classes,
        feature_names=feature_names,
        input_example=features[:5].copy(),
        metrics_on=metrics_on,
        stratified=stratified,
        target_name=target_name,
        row_shape=tuple(features.shape[1:]),
        encoder=encoder,
        raw_features=X if isinstance(X, pd.DataFrame) else features,
        train_index=train_idx,
    )


# -- arguments ----------------------------------------------------------------------------------
def _split_target_column(X: Any, column: str) -> tuple[pd.DataFrame, pd.Series, str]:
    if not isinstance(X, pd.DataFrame):
        raise InvalidInput(
            f"y={column!r} names a column, but X is a {type(X).__name__}, not a DataFrame"
        )
    if column not in X.columns:
        raise InvalidInput(f"X has no column {column!r}; its columns are {names(X.columns)}")
    target = X[column]
    if isinstance(target, pd.DataFrame):
        raise InvalidInput(f"X has more than one column named {column!r}")
    return X.drop(columns=[column]), target, column


# -- features -----------------------------------------------------------------------------------
def _fit_encoder(X: Any) -> TableEncoder | None:
    """The one-hot encoder of a DataFrame's string and categorical columns (None: it has none,
    so there is nothing to encode)."""
    if not isinstance(X, pd.DataFrame):
        raise InvalidInput(
            f"encode='onehot' encodes the string columns of a DataFrame; X is a {type(X).__name__}"
        )
    if X.shape[0] == 0:
        raise InvalidInput("X is empty: it has no rows")
    encoder = TableEncoder.fit(X)
    return encoder if encoder.categorical else None


def _encoded(X: pd.DataFrame, encoder: TableEncoder) -> tuple[np.ndarray, list[str]]:
    return encoder.encode(X), encoder.feature_names()


def _features(X: Any) -> tuple[np.ndarray, list[str] | None]:
    """Features as a C-contiguous (rows, ...) array in the model's input dtype, plus column
    names if any."""
    columns = None
    if isinstance(X, pd.DataFrame | pd.Series):
        array, columns = frame_features(X, "X")
    else:
        array = model_input_array(X, "X")
    if array.ndim == 1:  # one feature
        array = array.reshape(-1, 1)
    if array.shape[0] == 0:
        raise InvalidInput("X is empty: it has no rows")
    if array.ndim == 2 and array.shape[1] == 0:
        raise InvalidInput("X has no feature columns")
    if 0 in array.shape[1:]:
        raise InvalidInput(f"X has an empty dimension: its shape is {tuple(array.shape)}")
    if array.dtype.kind == "f":  # integers and bools are always finite
        _check_finite(array, "X", columns)
    return array, columns


def _check_finite(array: np.ndarray, what: str, columns: list[str] | None) -> None:
    """float32 conversion can overflow to inf, so this runs on the converted array."""
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    count = int(bad.sum())
    if columns is not None:  # a DataFrame: (rows, columns)
        where = f"in columns {names([columns[i] for i in np.flatnonzero(bad.any(axis=0))])}"
    else:
        where = f"first at row {int(np.argwhere(bad)[0][0])}"
    raise InvalidInput(f"{what} has {count} NaN or infinite value(s) {where}: drop or fill them")


# -- target -------------------------------------------------------------------------------------
def _target_frame(y: Any) -> pd.DataFrame:
    """The target as a DataFrame of 1+ columns, keeping pandas dtypes (categorical, strings)."""
    if isinstance(y, pd.Series):
        frame = y.to_frame()
    elif isinstance(y, pd.DataFrame):
        frame = y
    else:
        array = as_array(y, "y")
        if array.ndim > 2:
            raise InvalidInput(f"y must be 1-D or 2-D, got shape {tuple(array.shape)}")
        frame = pd.DataFrame(array.reshape(len(array), -1))
    frame = frame.reset_index(drop=True)
    if frame.shape[1] == 0:
        raise InvalidInput("y has no columns")
    if len(frame) == 0:
        raise InvalidInput("y is empty")
    missing = int(frame.isna().to_numpy().sum())
    if missing:
        raise InvalidInput(f"y has {missing} missing (NaN/None) value(s): drop or fill them")
    for name in frame.columns:
        if pd.api.types.is_float_dtype(frame[name].dtype):
            _check_finite(frame[name].to_numpy(dtype=np.float64), "y", None)
    return frame


def _infer_task(target: pd.DataFrame) -> str:
    if target.shape[1] > 1:
        return "regression"
    column = target.iloc[:, 0]
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return "classification"
    if pd.api.types.is_float_dtype(dtype):
        return "regression"
    distinct = column.nunique()
    few = distinct <= MAX_INFERRED_CLASSES and distinct <= max(2, MAX_CLASS_FRACTION * len(column))
    return "classification" if few else "regression"


def _class_indices(target: pd.DataFrame) -> tuple[np.ndarray, list]:
    if target.shape[1] != 1:
        raise InvalidInput(
            f"classification needs one target column, y has {target.shape[1]}; "
            "pass task='regression' for several numeric targets"
        )
    return _encode_labels(target.iloc[:, 0])


def _position_indices(target: pd.DataFrame) -> tuple[np.ndarray, list]:
    """One label per position (rows, positions): the classes are shared by every position."""
    rows, positions = target.shape
    codes, classes = _encode_labels(pd.Series(target.to_numpy().reshape(-1)))
    return codes.reshape(rows, positions), classes


def _encode_labels(column: pd.Series) -> tuple[np.ndarray, list]:
    """Class indices of a column of labels, and the labels in index order."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.cat.remove_unused_categories()  # unused categories would be dead outputs
        classes = list(column.cat.categories)
        codes = column.cat.codes.to_numpy()
    else:
        values = column.to_numpy()
        try:
            classes_arr, codes = np.unique(values, return_inverse=True)
            classes = list(classes_arr)
        except TypeError:  # mixed types (e.g. 1 and "a") do not sort: keep first-seen order
            codes, uniques = pd.factorize(column)
            classes = list(uniques)
    classes = [plain(c) for c in classes]
    if len(classes) < 2:
        raise InvalidInput(
            f"y has only one distinct value ({classes[0]!r}): classification needs at least 2"
        )
    return np.asarray(codes, dtype=np.int64).reshape(-1), classes


def _regression_targets(target: pd.DataFrame) -> np.ndarray:
    bad = [c for c in target.columns if not numeric_dtype(target[c].dtype)]
    if bad:
        raise InvalidInput(
            "task 'regression' needs numeric targets, but y has non-numeric values; "
            "use task='classification' for labels"
        )
    # a copy: pandas may hand out a read-only view, which torch.from_numpy warns about
    array = np.array(target.to_numpy(dtype=np.float32), order="C")
    _check_finite(array, "y", None)
    return array


# -- split --------------------------------------------------------------------------------------
def _split(
    n: int, y: np.ndarray, task: str, val_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Seeded train/validation indices; stratified when every class can appear on both sides."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(n)
    if val_split == 0:
        return everything, everything[:0], False
    n_val = math.ceil(val_split * n)
    if n_val >= n:
        raise InvalidInput(
            f"val_split={val_split} leaves no training rows out of {n}: lower it or pass 0"
        )
    stratify = None
    if task == "classification" and y.ndim == 1:  # not for per-position labels
        counts = np.bincount(y)
        k = len(counts)
        if counts.min() >= 2 and n_val >= k and n - n_val >= k:
            stratify = y
    train_idx, val_idx = train_test_split(
        everything, test_size=n_val, random_state=seed, stratify=stratify
    )
    return np.sort(train_idx), np.sort(val_idx), stratify is not None
