"""Per-epoch metrics, computed with scikit-learn so they match what users compute themselves.

Tensors are recognised without importing torch: the progress reporters import the formatting
helpers below when the extension loads, before anything needs torch.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
REGRESSION_METRICS = ("mse", "mae", "r2")


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        # float() first: numpy has no bfloat16, and half precision would blur the metrics.
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def classification_metrics(y_true: Any, logits: Any) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of ``argmax(logits)`` against class indices.

    ``logits`` is (rows, classes), or (rows, positions, classes) against (rows, positions)
    labels (every position counts once); a 1-D array is taken as predicted class indices.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    truth = _numpy(y_true).reshape(-1)
    scores = _numpy(logits)
    predicted = scores.argmax(axis=-1).reshape(-1) if scores.ndim >= 2 else scores.reshape(-1)
    if len(truth) == 0:
        return {name: math.nan for name in CLASSIFICATION_METRICS}
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }


def regression_metrics(y_true: Any, pred: Any) -> dict[str, float]:
    """MSE, MAE and R² (averaged over target columns); R² is NaN with fewer than 2 rows."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    truth = _numpy(y_true).astype(np.float64)
    predicted = _numpy(pred).astype(np.float64)
    truth = truth.reshape(len(truth), -1)
    predicted = predicted.reshape(len(predicted), -1)
    if len(truth) == 0:
        return {name: math.nan for name in REGRESSION_METRICS}
    with warnings.catch_warnings():  # R² on one row warns and returns NaN: NaN is the answer
        warnings.simplefilter("ignore")
        r2 = float(r2_score(truth, predicted)) if len(truth) >= 2 else math.nan
    return {
        "mse": float(mean_squared_error(truth, predicted)),
        "mae": float(mean_absolute_error(truth, predicted)),
        "r2": r2,
    }


def language_model_metrics(loss: float, y_true: Any, logits: Any) -> dict[str, float]:
    """Perplexity (exp of the mean next-token cross-entropy ``loss``) and next-token accuracy
    (the most likely token is the next one) of a language model's logits."""
    truth, scores = _numpy(y_true), _numpy(logits)
    accuracy = float((scores.argmax(axis=-1) == truth).mean()) if truth.size else math.nan
    return {"perplexity": math.exp(min(loss, 700.0)), "accuracy": accuracy}


def task_metrics(task: str, y_true: Any, output: Any) -> dict[str, float]:
    """The metrics for ``task`` ("classification" or "regression") from the model's output;
    none when the output does not line up with the targets (a custom loss may pair them in
    its own way, and then only the loss says how training goes)."""
    truth, out = tuple(y_true.shape), tuple(output.shape)
    if task == "classification":
        if out[:-1] == truth or out == truth:  # scores per class, or predicted indices
            return classification_metrics(y_true, output)
        return {}
    if out == truth or (len(truth) == 2 and truth[1] == 1 and out == truth[:1]):
        return regression_metrics(y_true, output)
    return {}


def format_value(value: float) -> str:
    """Three decimals for losses and scores; large errors (MSE on raw prices) without noise;
    small ones with three significant digits, so a loss of 0.0003 does not read 0.000."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
