"""``%train`` / ``api.train`` of a scikit-learn estimator: the same split, run, metrics and
result record as a torch training (``tracking.run_training``), the fit being the estimator's
own ``fit`` on the training split. The estimator takes the features as they are (no
``--scale``: a ``Pipeline`` with a scaler carries its own scaling), so the registered version
takes raw rows; classification targets become class indices, named by the version's classes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.naming import validate_name
from kernel_magics.registration import register_version
from kernel_magics.runs import mlflow_run, store_errors
from kernel_magics.store import Store, retry_locked
from kernel_magics.tracking import TrainResult

if TYPE_CHECKING:
    import torch

    from kernel_magics.training.config import TrainConfig

MAX_PARAM_CHARS = 500  # an estimator's nested parameters can print long


def train_estimator(
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
    from sklearn.base import is_classifier

    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.metrics import task_metrics

    validate_name(name)
    task = "classification" if is_classifier(model) else "regression"
    if config.task not in (None, task):
        raise InvalidInput(f"a {type(model).__name__} trains for {task}, not {config.task}")
    if config.encode:
        raise InvalidInput("--encode is for torch models: put a OneHotEncoder in a Pipeline")
    data = prepare_data(X, y, task=task, val_split=config.val_split, seed=config.seed)
    X_train, y_train = data.X_train.numpy(), data.y_train.numpy()
    X_val, y_val = data.X_val.numpy(), data.y_val.numpy()
    if X_train.ndim != 2:
        raise InvalidInput(f"a scikit-learn model takes rows of features, got {X_train.shape}")
    with store.tracking(), mlflow_run(store, f"{name}-train") as run:
        with store.write_lock(), store_errors("could not log to the store"):
            mlflow.log_params(_params(model, data, config))
            mlflow.set_tags({"km.model": name})
        started = time.perf_counter()
        try:
            model.fit(X_train, y_train)
        except Exception as err:
            raise InvalidInput(
                f"{type(model).__name__}.fit failed: {type(err).__name__}: {first_line(err)}"
            ) from err
        train_seconds = time.perf_counter() - started
        outputs = _outputs(model, X_val, task)
        metrics = task_metrics(task, y_val, outputs) if len(X_val) else {}
        with store.write_lock(), store_errors("could not log metrics to the store"):
            if metrics:
                retry_locked(mlflow.log_metrics, metrics, step=1)
        started = time.perf_counter()
        registered = register_version(
            store,
            model,
            data.input_example,
            name=name,
            task=task,
            classes=data.classes,
            sample=X_val[:200],  # the converted graph is checked on these rows too
            reference=data.training_rows() if reference is None else reference,
        )
        bookkeeping = time.perf_counter() - started
    return TrainResult(
        name=name,
        version=registered.version,
        run_id=run.info.run_id,
        metrics=metrics,
        history=[{"epoch": 1, **metrics}],
        model=EstimatorOutputs(model, task),
        format=registered.format,
        train_seconds=train_seconds,
        bookkeeping_seconds=bookkeeping,
        notes=registered.notes,
        net=model,
    )


class EstimatorOutputs:
    """``TrainResult.model`` of an estimator: tensor in, what the served version answers out
    (class probabilities, or predictions as (rows, targets)), so ``result.predict`` works."""

    def __init__(self, estimator: Any, task: str) -> None:
        self.estimator, self.task = estimator, task

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(_outputs(self.estimator, x.numpy(), self.task))


def _outputs(model: Any, rows: np.ndarray, task: str) -> np.ndarray:
    out = model.predict_proba(rows) if task == "classification" else model.predict(rows)
    return np.asarray(out).reshape(len(rows), -1)


def _params(model: Any, data: Any, config: TrainConfig) -> dict[str, str]:
    params: dict[str, Any] = {
        "model_class": type(model).__name__,
        "task": data.task,
        "n_features": data.n_features,
        "val_split": config.val_split,
        "seed": config.seed,
    }
    for key, value in model.get_params(deep=False).items():
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
        params[key] = text[:MAX_PARAM_CHARS]
    return {k: str(v) for k, v in params.items()}
