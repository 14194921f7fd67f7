"""prepare_data: every input form, task inference, the seeded stratified split, bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kernel_magics.errors import InvalidInput
from kernel_magics.training.data import PreparedData, prepare_data


def test_numpy_classification(digits_xy):
    X, y = digits_xy
    d = prepare_data(X, y)
    assert isinstance(d, PreparedData)
    assert d.task == "classification"
    assert (d.n_features, d.n_outputs) == (64, 10)
    assert d.classes == list(range(10))
    assert all(type(c) is int for c in d.classes)
    assert d.feature_names is None
    assert d.X_train.dtype == torch.float32
    assert d.y_train.dtype == torch.int64
    assert len(d.X_train) + len(d.X_val) == 1797
    assert len(d.X_val) == 360
    assert d.X_train.shape[1] == 64
    assert d.y_val.ndim == 1
    assert d.input_example.dtype == np.float32
    assert d.input_example.shape == (5, 64)
    np.testing.assert_array_equal(d.input_example, X[:5].astype(np.float32))
    assert d.metrics_on == "validation"
    assert d.stratified


def test_tensors_give_the_same_data_as_arrays(digits_xy):
    X, y = digits_xy
    a = prepare_data(X, y, seed=3)
    t = prepare_data(torch.tensor(X, requires_grad=True), torch.from_numpy(y), seed=3)
    assert t.task == "classification"
    assert t.classes == a.classes
    assert torch.equal(a.X_train, t.X_train)
    assert torch.equal(a.y_val, t.y_val)


def test_dataframe_with_target_column():
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame  # 30 features + "target"
    d = prepare_data(frame, "target")
    assert d.task == "classification"
    assert d.classes == [0, 1]
    assert d.n_features == 30
    assert "target" not in d.feature_names
    assert d.feature_names == [str(c) for c in frame.columns if c != "target"]
    assert d.target_name == "target"
    assert len(d.X_train) + len(d.X_val) == len(frame)


def test_dataframe_with_series_target_keeps_feature_names(diabetes_xy):
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True)
    d = prepare_data(bunch.data, bunch.target)
    assert d.task == "regression"
    assert d.feature_names == list(bunch.data.columns)
    assert d.y_train.dtype == torch.float32
    assert d.y_train.shape[1] == 1
    assert d.n_outputs == 1


def test_string_labels_map_to_sorted_indices():
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = ["dog", "cat"] * 10
    d = prepare_data(X, y, val_split=0)
    assert d.classes == ["cat", "dog"]
    assert d.task == "classification"
    assert d.y_train.tolist() == [1, 0] * 10


def test_categorical_target_uses_category_order_and_drops_unused():
    y = pd.Series(pd.Categorical(["lo", "hi"] * 10, categories=["lo", "mid", "hi"]))
    d = prepare_data(np.ones((20, 3)), y, val_split=0)
    assert d.classes == ["lo", "hi"]
    assert d.n_outputs == 2
    assert d.y_train.tolist() == [0, 1] * 10


def test_bool_target_is_classification():
    d = prepare_data(np.random.default_rng(0).normal(size=(30, 2)), np.arange(30) % 2 == 0)
    assert d.task == "classification"
    assert d.classes == [False, True]


def test_one_dimensional_x_is_one_feature():
    d = prepare_data(np.linspace(0, 1, 50), np.linspace(0, 2, 50), val_split=0)
    assert d.n_features == 1
    assert d.X_train.shape == (50, 1)
    assert d.task == "regression"
    assert d.y_train.shape == (50, 1)


def test_dataframe_bool_and_nullable_int_features_become_float32():
    frame = pd.DataFrame(
        {"flag": [True, False] * 5, "n": pd.array(range(10), dtype="Int64"), "y": [0, 1] * 5}
    )
    d = prepare_data(frame, "y", val_split=0)
    assert d.X_train.dtype == torch.float32
    assert d.X_train[:, 0].tolist() == [1.0, 0.0] * 5


def test_multi_target_regression():
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = np.stack([X[:, 0], X[:, 1] * 2], axis=1)
    d = prepare_data(X, y)
    assert d.task == "regression"
    assert d.n_outputs == 2
    assert d.y_train.shape[1] == 2


@pytest.mark.parametrize(
    ("y", "task"),
    [
        (np.arange(100) % 3, "classification"),  # 3 distinct ints
        (np.arange(100) * 7, "regression"),  # 100 distinct ints: a count, not labels
        (np.arange(1000) % 60, "regression"),  # more than 50 distinct values
        (np.arange(100) % 3 * 0.5, "regression"),  # floats
        (np.array(["a", "b"] * 50), "classification"),
    ],
)
def test_task_inference(y, task):
    assert prepare_data(np.ones((len(y), 2)), y, val_split=0).task == task


def test_task_override():
    y = np.arange(100) * 7
    d = prepare_data(np.ones((100, 2)), y, task="classification", val_split=0)
    assert d.task == "classification"
    assert d.n_outputs == 100
    d = prepare_data(np.ones((100, 2)), np.arange(100) % 3, task="regression", val_split=0)
    assert d.task == "regression"
    assert d.y_train.dtype == torch.float32


def test_split_is_seeded(digits_xy):
    X, y = digits_xy
    a, b, c = (prepare_data(X, y, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.X_val, b.X_val)
    assert torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.X_val, c.X_val)


def test_split_is_stratified(digits_xy):
    X, y = digits_xy
    d = prepare_data(X, y, val_split=0.25, seed=1)
    overall = np.bincount(y) / len(y)
    in_val = np.bincount(d.y_val.numpy(), minlength=10) / len(d.y_val)
    assert np.abs(in_val - overall).max() < 0.01
    assert d.stratified


def test_split_falls_back_when_a_class_is_too_rare():
    y = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has one row: cannot be on both sides
    d = prepare_data(np.ones((41, 2)), y)
    assert not d.stratified
    assert len(d.X_val) == 9


def test_no_validation_set():
    d = prepare_data(np.ones((10, 2)), [0, 1] * 5, val_split=0)
    assert len(d.X_val) == 0
    assert len(d.X_train) == 10
    assert d.metrics_on == "train"


BAD_INPUTS = [
    (lambda X, y: (X, y[:100]), {}, "X has 1797 rows but y has 100"),
    (lambda X, y: (X, None), {}, "y is missing"),
    (lambda X, y: (X[:0], y[:0]), {}, "X is empty"),
    (lambda X, y: (np.ones((5, 0)), y[:5]), {}, "X has no feature columns"),
    (lambda X, y: (X[:1], y[:1]), {}, "training needs at least 2"),
    (lambda X, y: (X.reshape(1797, 8, 8)[:, :, :0], y), {}, "X has an empty dimension"),
    (lambda X, y: (X, y.reshape(1797, 1, 1)), {}, "y must be 1-D or 2-D"),
    (lambda X, y: (np.where(X[3, 5] == X, np.nan, X), y), {}, "NaN or infinite"),
    (lambda X, y: (np.where(X == 16, np.inf, X), y), {}, "NaN or infinite"),
    (lambda X, y: (X * 1e300, y), {}, "NaN or infinite"),  # overflows float32
    (lambda X, y: (X, np.where(y == 3, np.nan, y)), {}, "y has 183 missing"),
    (lambda X, y: (X, np.where(y == 3, np.inf, y * 1.5)), {}, "y has 183 NaN or infinite"),
    (lambda X, y: (X, y), {"val_split": 0.9}, "val_split must be in [0, 0.9)"),
    (lambda X, y: (X, y), {"val_split": -0.1}, "val_split must be in [0, 0.9)"),
    (lambda X, y: (X, y), {"val_split": float("nan")}, "val_split must be in [0, 0.9)"),
    (lambda X, y: (X, y), {"val_split": "0.2"}, "val_split must be a number"),
    (lambda X, y: (X, y), {"task": "clustering"}, "task must be 'classification' or"),
    (lambda X, y: (X, y), {"seed": 1.5}, "seed must be an integer"),
    (lambda X, y: (X, np.zeros(1797, dtype=int)), {}, "only one distinct value (0)"),
    (lambda X, y: (X, y.astype(str)), {"task": "regression"}, "needs numeric targets"),
    (lambda X, y: (X, y), {"val_split": 0.6, "_rows": 2}, "leaves no training rows"),
    (lambda X, y: (X, "label"), {}, "names a column, but X is a ndarray"),
    (lambda X, y: (X.astype(object) * "a", y), {}, "X has non-numeric values"),
    (lambda X, y: (X + 1j, y), {}, "X has complex numbers"),
    (lambda X, y: (X, pd.DataFrame({"a": y, "b": y})), {"task": "classification"}, "one target"),
]


@pytest.mark.parametrize(("make", "kwargs", "message"), BAD_INPUTS)
def test_bad_inputs(digits_xy, make, kwargs, message):
    X, y = digits_xy
    kwargs = dict(kwargs)
    rows = kwargs.pop("_rows", None)
    if rows:
        X, y = X[:rows], np.arange(rows)
    try:
        args = make(X, y)
    except TypeError:  # building the bad input itself failed (object * str): use strings
        args = (np.full(X.shape, "a", dtype=object), y)
    with pytest.raises(InvalidInput) as info:
        prepare_data(*args, **kwargs)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_mismatch_message_is_exact(digits_xy):
    X, y = digits_xy
    with pytest.raises(InvalidInput, match=r"^X has 1797 rows but y has 100$"):
        prepare_data(X, y[:100])


def test_non_numeric_columns_are_named():
    frame = pd.DataFrame(
        {"a": [1.0, 2.0], "city": ["x", "y"], "when": pd.to_datetime(["2024"] * 2)}
    )
    with pytest.raises(InvalidInput, match=r"non-numeric columns 'city', 'when'"):
        prepare_data(frame, [0, 1])


def test_unknown_column_lists_the_columns():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [0, 1]})
    with pytest.raises(InvalidInput, match=r"X has no column 'target'; its columns are 'a', 'b'"):
        prepare_data(frame, "target")


def test_nan_in_named_column_is_reported_by_name():
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with pytest.raises(InvalidInput, match=r"X has 1 NaN or infinite value\(s\) in columns 'a'"):
        prepare_data(frame, "y")


# -- rows of any shape, the dtype the model takes, one label per position --------------------------
def test_images_keep_their_shape(digits_xy):
    X, y = digits_xy
    images = prepare_data(X.reshape(-1, 1, 8, 8), y)
    flat = prepare_data(X, y)
    assert images.X_train.shape[1:] == (1, 8, 8)
    assert images.X_train.dtype == torch.float32
    assert images.row_shape == (1, 8, 8)
    assert images.n_features == 64
    assert images.input_example.shape == (5, 1, 8, 8)
    assert images.input_example.dtype == np.float32
    # the same rows in the same split as the flat features
    assert torch.equal(images.X_val.reshape(len(images.X_val), -1), flat.X_val)
    assert images.stratified


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float64, torch.float32),
        (np.float16, torch.float32),
        (np.int32, torch.float32),
        (np.uint8, torch.float32),
        (np.int64, torch.int64),  # token ids for an nn.Embedding
        (np.bool_, torch.bool),  # masks
    ],
)
def test_input_dtype_follows_the_data(dtype, expected):
    X = (np.arange(60).reshape(20, 3) % 5).astype(dtype)
    d = prepare_data(X, np.arange(20) % 2, val_split=0.25)
    assert d.X_train.dtype == d.X_val.dtype == expected
    assert str(d.input_example.dtype) == str(expected).removeprefix("torch.")


def test_int64_tensor_tokens_stay_int64():
    tokens = torch.randint(0, 50, (30, 7), generator=torch.Generator().manual_seed(0))
    d = prepare_data(tokens, np.arange(30) % 3)
    assert d.X_train.dtype == torch.int64
    assert d.row_shape == (7,)


def test_one_label_per_position():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, size=(50, 6))
    tags = np.where(tokens % 3 == 0, "noun", "verb")
    d = prepare_data(tokens, tags, task="classification")
    assert d.task == "classification"
    assert d.classes == ["noun", "verb"]
    assert d.n_outputs == 2
    assert d.y_train.shape[1:] == (6,)
    assert d.y_train.dtype == torch.int64
    assert not d.stratified  # stratifying is for one label per row
    expected = torch.from_numpy((tokens % 3 != 0).astype(np.int64))
    assert torch.equal(torch.cat([d.y_train, d.y_val]).sort(0).values, expected.sort(0).values)
    # without a task, several integer columns stay regression targets, as before
    assert prepare_data(tokens, tokens % 3).task == "regression"


def test_multi_output_regression_targets_keep_their_columns():
    X = np.random.default_rng(1).normal(size=(40, 4))
    d = prepare_data(X, X[:, :2] * 3.0)
    assert d.task == "regression"
    assert d.n_outputs == 2
    assert d.y_train.dtype == torch.float32
