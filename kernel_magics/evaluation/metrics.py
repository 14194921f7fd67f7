"""Evaluation metrics, all computed by scikit-learn.

Classification: accuracy and macro precision / recall / F1 (the same functions training
reports with, ``training.metrics``), per-class precision / recall / F1 / support, the confusion
matrix, and ROC AUC where it applies: binary, or one-vs-rest over every class when each class
occurs in the data (probabilities: the softmax of the outputs; a single output column is a
binary logit, probabilities by the sigmoid). Regression: MSE, MAE, R² and the residuals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernel_magics.errors import InvalidInput

HEADLINE = {
    "classification": ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"),
    "regression": ("mse", "mae", "r2"),
}


@dataclass
class Scores:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    notes: list[str] = field(default_factory=list)


def probabilities(outputs: np.ndarray, *, already: bool = False) -> np.ndarray:
    """(N, C) class probabilities from raw outputs: softmax, or the sigmoid of one logit.
    ``already``: the outputs are probabilities (a scikit-learn classifier's, a Keras sigmoid
    or softmax layer's); one column is the positive class's."""
    logits = outputs.astype(np.float64).reshape(len(outputs), -1)
    if already:
        if logits.shape[1] == 1:
            return np.stack([1.0 - logits[:, 0], logits[:, 0]], axis=1)
        return logits
    if logits.shape[1] == 1:
        positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classification(
    y_true: np.ndarray, outputs: np.ndarray, labels: list[Any], *, probabilities_out: bool = False
) -> Scores:
    """``y_true``: class indices (N,); ``outputs``: the model's scores (N, C) or one logit
    (``probabilities_out``: probabilities, see ``probabilities``)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from kernel_magics.training.metrics import classification_metrics

    probs = probabilities(outputs, already=probabilities_out)
    predicted = probs.argmax(axis=1)
    index = list(range(probs.shape[1]))
    scores = Scores(classification_metrics(y_true, predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=index, zero_division=0
    )
    for i, label in enumerate(labels):
        scores.per_class[str(label)] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
    scores.confusion = confusion_matrix(y_true, predicted, labels=index).tolist()
    auc, note = roc_auc(y_true, probs)
    if auc is not None:
        scores.metrics["roc_auc"] = auc
    if note:
        scores.notes.append(note)
    return scores


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> tuple[float | None, str | None]:
    from sklearn.metrics import roc_auc_score

    n_classes = probs.shape[1]
    present = np.unique(y_true)
    if len(present) < n_classes:
        return None, (
            f"no ROC AUC: {n_classes - len(present)} of {n_classes} classes do not occur in y"
        )
    if n_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1])), None
    return float(roc_auc_score(y_true, probs, multi_class="ovr", labels=list(range(n_classes)))), (
        None
    )


def regression(y_true: np.ndarray, predicted: np.ndarray) -> tuple[Scores, np.ndarray]:
    """MSE, MAE, R² (averaged over target columns) and the residuals ``y - prediction``."""
    from kernel_magics.training.metrics import regression_metrics

    truth = y_true.astype(np.float64).reshape(len(y_true), -1)
    pred = predicted.astype(np.float64).reshape(len(predicted), -1)
    if truth.shape != pred.shape:
        raise InvalidInput(
            f"the model answers {pred.shape[1]} value(s) per row but y has {truth.shape[1]}"
        )
    return Scores(regression_metrics(truth, pred)), truth - pred
