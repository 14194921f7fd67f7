"""``%train`` / ``api.train`` of a compiled Keras 3 model: the same split, run, metrics and
result record as a torch training, the fit being Keras's own ``model.fit`` on the training split
(its optimizer, loss and metrics as compiled; ``--epochs`` and ``--batch-size`` apply). Keras's
per-epoch logs become the run's per-epoch metrics; the validation metrics are the project's
own (``training.metrics``) on the model's outputs, a sigmoid or softmax read as probabilities.
Then the model is registered as ``%register`` registers one (``keras_models``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.registration import register_version
from kernel_magics.runs import mlflow_run, store_errors
from kernel_magics.store import Store, retry_locked, validate_name
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
    import mlflow

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
    X_train, y_train = data.X_train.numpy(), data.y_train.numpy()
    X_val, y_val = data.X_val.numpy(), data.y_val.numpy()
    with store.tracking(), mlflow_run(store, f"{name}-train") as run:
        with store.write_lock(), store_errors("could not log to the store"):
            mlflow.log_params(
                {
                    "model_class": type(model).__name__,
                    "task": data.task,
                    "epochs": config.epochs,
                    "batch_size": config.batch_size,
                    "val_split": config.val_split,
                    "seed": config.seed,
                    "loss": str(model.loss),
                }
            )
            mlflow.set_tags({"km.model": name})
        started = time.perf_counter()
        try:
            fitted = model.fit(
                X_train,
                y_train,
                epochs=config.epochs,
                batch_size=config.batch_size,
                validation_data=(X_val, y_val) if len(X_val) else None,
                verbose=0,
            )
        except Exception as err:
            raise InvalidInput(
                f"{type(model).__name__}.fit failed: {type(err).__name__}: {first_line(err)}"
            ) from err
        train_seconds = time.perf_counter() - started
        history = _history(fitted.history)
        rows = X_val if len(X_val) else X_train
        truth = y_val if len(X_val) else y_train
        outputs = np.asarray(model.predict(rows, verbose=0), dtype=np.float64)
        if data.task == "classification" and answers_probabilities(model):
            outputs = _as_class_scores(outputs)
        metrics = task_metrics(data.task, truth, outputs)
        with store.write_lock(), store_errors("could not log metrics to the store"):
            for step, logs in enumerate(history, start=1):
                retry_locked(mlflow.log_metrics, logs, step=step)
            if metrics:
                retry_locked(mlflow.log_metrics, metrics, step=len(history))
        started = time.perf_counter()
        registered = register_version(
            store,
            model,
            data.input_example,
            name=name,
            task=data.task,
            classes=data.classes,
            sample=rows[:200],  # the exported program is checked on these rows too
            reference=data.training_rows() if reference is None else reference,
        )
        bookkeeping = time.perf_counter() - started
    history[-1].update(metrics)
    return TrainResult(
        name=name,
        version=registered.version,
        run_id=run.info.run_id,
        metrics=metrics,
        history=[{"epoch": i, **logs} for i, logs in enumerate(history, start=1)],
        model=model,
        format=registered.format,
        train_seconds=train_seconds,
        bookkeeping_seconds=bookkeeping,
        notes=registered.notes,
        net=model,
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
