"""metrics: scikit-learn's numbers, from logits or predictions, without warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from kernel_magics.training.metrics import (
    classification_metrics,
    format_value,
    regression_metrics,
)


def test_classification_from_logits():
    y = torch.tensor([0, 1, 2, 2])
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    m = classification_metrics(y, logits)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert all(type(v) is float for v in m.values())


def test_classification_zero_division_is_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(np.array([0, 0, 1]), np.array([[1.0, 0], [1.0, 0], [1.0, 0]]))
    assert m["precision_macro"] == pytest.approx(1 / 3)  # class 1 never predicted: counts 0


def test_regression():
    m = regression_metrics(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 5.0]))
    assert m == pytest.approx({"mse": 4 / 3, "mae": 2 / 3, "r2": 1 - 4 / 2})


def test_regression_r2_is_nan_for_one_row():
    m = regression_metrics(np.array([1.0]), np.array([2.0]))
    assert m["mse"] == 1.0
    assert math.isnan(m["r2"])


def test_format_value():
    assert format_value(0.41234) == "0.412"
    assert format_value(25431.27) == "25431.3"
    assert format_value(float("nan")) == "nan"
