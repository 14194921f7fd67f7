"""``%train`` / ``api.train`` of a compiled Keras 3 model: the same split, run, metrics and
result record as a torch training, the fit being Keras's own ``model.fit`` on the training split
(its optimizer, loss and metrics as compiled; ``--epochs`` and ``--batch-size`` apply). Keras's
per-epoch logs become the run's per-epoch metrics; the validation metrics are the project's
own (``training.metrics``) on the model's outputs, a sigmoid or softmax read as probabilities.
Then the model is registered as ``%register`` registers one (``keras_models``); the run and the
registration are ``own_fit``'s, shared with scikit-learn's training.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput
from kernel_magics.frameworks.own_fit import Evaluation, Split, train_with_own_fit
from kernel_magics.store import Store, validate_name
from kernel_magics.tracking import TrainResult

if TYPE_CHECKING:
    from kernel_magics.training.config import TrainConfig


def train_keras(
    store: Store,
    model: Any,
    X: Any,
    y: Any,
    *,
    name: str,
    config: TrainConfig,
    reference: Any = None,
) -> TrainResult:
    from kernel_magics.frameworks.keras_models import answers_probabilities, check_backend
    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.metrics import task_metrics

    validate_name(name)
    check_backend()
    if getattr(model, "optimizer", None) is None or getattr(model, "loss", None) is None:
        raise InvalidInput(
            "the Keras model is not compiled: call model.compile(optimizer=..., loss=...) first"
        )
    if config.encode:
        raise InvalidInput("--encode is for torch models: encode the columns before Keras")
    data = prepare_data(X, y, task=config.target_task, val_split=config.val_split, seed=config.seed)

    def fit(split: Split) -> Any:
        return model.fit(
            split.X_train,
            split.y_train,
            epochs=config.epochs,
            batch_size=config.batch_size,
            validation_data=(split.X_val, split.y_val) if len(split.X_val) else None,
            verbose=0,
        )

    def evaluate(split: Split, fitted: Any) -> Evaluation:
        # no validation split: the training rows (Keras's own fit has no other to show)
        validated = len(split.X_val) > 0
        rows = split.X_val if validated else split.X_train
        truth = split.y_val if validated else split.y_train
        outputs = np.asarray(model.predict(rows, verbose=0), dtype=np.float64)
        if data.task == "classification" and answers_probabilities(model):
            outputs = _as_class_scores(outputs)
        return Evaluation(
            metrics=task_metrics(data.task, truth, outputs),
            sample=rows,  # the exported program is checked on these rows too
            history=_history(fitted.history),
        )

    params = {"epochs": config.epochs, "batch_size": config.batch_size, "loss": str(model.loss)}
    return train_with_own_fit(
        store,
        model,
        data,
        name=name,
        config=config,
        params=params,
        fit=fit,
        evaluate=evaluate,
        reference=reference,
    )


def _history(logs: dict[str, list[float]]) -> list[dict[str, float]]:
    """Keras's ``History.history`` (metric → values per epoch) as one dict per epoch."""
    epochs = max((len(v) for v in logs.values()), default=0)
    out: list[dict[str, float]] = [{} for _ in range(max(epochs, 1))]
    for key, values in logs.items():
        for i, value in enumerate(values):
            if isinstance(value, int | float) and math.isfinite(value):
                out[i][key] = float(value)
    return out


def _as_class_scores(outputs: np.ndarray) -> np.ndarray:
    """Probabilities as (rows, classes): one sigmoid column becomes (1 - p, p)."""
    scores = outputs.reshape(len(outputs), -1)
    if scores.shape[1] == 1:
        return np.concatenate([1.0 - scores, scores], axis=1)
    return scores
