"""``%train`` / ``api.train`` of a model that brings its own ``fit`` (a compiled Keras model, a
scikit-learn estimator): the bookkeeping every such training shares, so that it is the same as a
torch training's (``tracking.run_training``) in one place.

One MLflow run named ``NAME-train`` with the model's class, task, split and seed as parameters
(and what the framework adds), the fit timed and its failure one line, the per-epoch metrics the
fit reports and the project's validation metrics logged, then the version registered as
``%register`` registers one (``register_version``, with the reference profile of the training
split unless a reference is given), and the same ``TrainResult``. What differs per framework is
the fit itself and how its outputs become metrics: the two callables the caller passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.registration import register_version
from kernel_magics.runs import mlflow_run, store_errors
from kernel_magics.store import Store, retry_locked
from kernel_magics.tracking import TrainResult

if TYPE_CHECKING:
    from kernel_magics.training.config import TrainConfig
    from kernel_magics.training.data import PreparedData

SAMPLE_ROWS = 200  # rows the registered version's answers are checked on, beside the example


@dataclass(frozen=True)
class Split:
    """The training and validation rows as numpy arrays (no validation split: empty ones)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass
class Evaluation:
    """What a fitted model's outputs say, in the project's terms."""

    metrics: dict[str, float]  # the project's metrics (training.metrics), validation rows
    sample: np.ndarray  # rows the registered version is checked on (their first SAMPLE_ROWS)
    # metrics the fit reported per epoch, oldest first (empty: the fit reports none)
    history: list[dict[str, float]] = field(default_factory=list)


def train_with_own_fit(
    store: Store,
    model: Any,
    data: PreparedData,
    *,
    name: str,
    config: TrainConfig,
    params: dict[str, Any],
    fit: Callable[[Split], Any],
    evaluate: Callable[[Split, Any], Evaluation],
    reference: Any = None,
    answers: Any = None,
) -> TrainResult:
    """Fit ``model`` with ``fit(split)`` inside the run and register it; ``evaluate(split,
    what fit returned)`` gives its metrics. ``params`` are logged beside the common ones;
    ``answers`` is the result's ``model`` (tensor in, the served answers out; default: the
    model itself)."""
    import mlflow

    split = Split(
        data.X_train.numpy(), data.y_train.numpy(), data.X_val.numpy(), data.y_val.numpy()
    )
    common = {
        "model_class": type(model).__name__,
        "task": data.task,
        "val_split": config.val_split,
        "seed": config.seed,
    }
    with store.tracking(), mlflow_run(store, f"{name}-train") as run:
        with store.write_lock(), store_errors("could not log to the store"):
            mlflow.log_params(common | params)
            mlflow.set_tags({"km.model": name})
        started = time.perf_counter()
        try:
            fitted = fit(split)
        except Exception as err:
            raise InvalidInput(
                f"{type(model).__name__}.fit failed: {type(err).__name__}: {first_line(err)}"
            ) from err
        train_seconds = time.perf_counter() - started
        evaluation = evaluate(split, fitted)
        metrics = evaluation.metrics
        history = [dict(logs) for logs in evaluation.history] or [{}]
        with store.write_lock(), store_errors("could not log metrics to the store"):
            for step, logs in enumerate(history, start=1):
                if logs:
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
            sample=evaluation.sample[:SAMPLE_ROWS],
            reference=data.training_rows() if reference is None else reference,
        )
        bookkeeping = time.perf_counter() - started
    history[-1].update(metrics)  # the last epoch's line carries the validation metrics
    return TrainResult(
        name=name,
        version=registered.version,
        run_id=run.info.run_id,
        metrics=metrics,
        history=[{"epoch": i, **logs} for i, logs in enumerate(history, start=1)],
        model=model if answers is None else answers,
        format=registered.format,
        train_seconds=train_seconds,
        bookkeeping_seconds=bookkeeping,
        notes=registered.notes,
        net=model,
    )
