"""``%train`` / ``api.train`` of a scikit-learn estimator: the same split, run, metrics and
result record as a torch training (``tracking.run_training``), the fit being the estimator's
own ``fit`` on the training split. The estimator takes the features as they are (no
``--scale``: a ``Pipeline`` with a scaler carries its own scaling), so the registered version
takes raw rows; classification targets become class indices, named by the version's classes.
The run and the registration are ``own_fit``'s, shared with Keras's training.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput
from kernel_magics.frameworks.own_fit import Evaluation, Split, train_with_own_fit
from kernel_magics.naming import validate_name
from kernel_magics.store import Store
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
    if data.X_train.ndim != 2:
        shape = tuple(data.X_train.shape)
        raise InvalidInput(f"a scikit-learn model takes rows of features, got {shape}")

    def fit(split: Split) -> Any:
        return model.fit(split.X_train, split.y_train)

    def evaluate(split: Split, fitted: Any) -> Evaluation:
        outputs = _outputs(model, split.X_val, task)
        metrics = task_metrics(task, split.y_val, outputs) if len(split.X_val) else {}
        # the converted graph is checked on the validation rows too
        return Evaluation(metrics=metrics, sample=split.X_val)

    return train_with_own_fit(
        store,
        model,
        data,
        name=name,
        config=config,
        params=_params(model, data),
        fit=fit,
        evaluate=evaluate,
        reference=reference,
        answers=EstimatorOutputs(model, task),
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


def _params(model: Any, data: Any) -> dict[str, str]:
    """The estimator's own parameters (``own_fit`` adds the class, task, split and seed)."""
    params: dict[str, Any] = {"n_features": data.n_features}
    for key, value in model.get_params(deep=False).items():
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
        params[key] = text[:MAX_PARAM_CHARS]
    return {k: str(v) for k, v in params.items()}
