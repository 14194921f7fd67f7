"""One training = one MLflow run + (if it finishes) one new registered version.

The run holds the parameters (from the ``TrainConfig``), per-epoch metrics and the model; the
version is registered through ``registration.register_version``, the path every model takes.
An interrupted or failed training ends its run as KILLED/FAILED and registers nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.naming import validate_name
from kernel_magics.registration import register_version
from kernel_magics.runs import mlflow_run, store_errors
from kernel_magics.store import Store, retry_locked
from kernel_magics.views import front_end_view

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch

    from kernel_magics.preprocess import TableEncoder
    from kernel_magics.registration import RegisterResult
    from kernel_magics.training.config import TrainConfig
    from kernel_magics.training.data import PreparedData
    from kernel_magics.training.fit import EpochResult, FitResult


@dataclass
class TrainResult:
    """What ``%train`` returns (``r = %train ...``)."""

    name: str
    version: int
    run_id: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)  # one dict per epoch: r.history
    # The registered module: raw features in, raw units out (the scaling fitted on the
    # training split inside it, see training/scaling.py). ``net`` is the module that was
    # trained, the same object the caller passed in; it takes scaled features.
    model: Any = field(repr=False)
    format: str = "pt2"
    train_seconds: float = 0.0
    bookkeeping_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    net: Any = field(default=None, repr=False)
    encoder: TableEncoder | None = field(default=None, repr=False)  # --encode onehot

    def predict(self, X: Any) -> np.ndarray:
        """The registered version's outputs for raw ``X`` (a DataFrame with string columns when
        it was trained with ``encode="onehot"``), computed here: what the served version
        answers for the same rows."""
        import torch

        from kernel_magics.training.inputs import model_input_array

        rows = self.encoder.encode(X) if self.encoder else model_input_array(X, "X")
        with torch.inference_mode():
            return self.model(torch.from_numpy(rows)).numpy()

    def __repr__(self) -> str:
        """One line, whatever the epochs (``print(r)`` of 300 epochs was a wall of text); the
        per-epoch figures stay in ``r.history``."""
        figures = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        epochs = len(self.history)
        return (
            f"TrainResult({self.name} v{self.version}, run {self.run_id}, {self.format}; "
            f"{figures}; {epochs} epoch{'s' if epochs != 1 else ''} in r.history)"
        )

    def _repr_html_(self) -> str | None:
        # The HTML view belongs to the front end (``%load_ext`` registers it with IPython's
        # formatter); this only answers callers who ask the object itself.
        return front_end_view(self, "text/html")


def run_training(
    store: Store,
    name: str,
    model: torch.nn.Module,
    data: PreparedData,
    config: TrainConfig,
    fit_fn: Callable[..., FitResult],
    *,
    register: Callable[[Any, PreparedData], tuple[Any, RegisterResult]] | None = None,
    extra_params: dict[str, Any] | None = None,
    reference: Any = None,
) -> TrainResult:
    """Wrap ``fit_fn(on_epoch=...) -> FitResult`` in an MLflow run and register the model.

    ``register(model, data) -> (registered model, RegisterResult)`` registers it another way
    than as a pt2 graph (a language model with its tokenizer, ``training/text.py``), inside
    the same run; ``extra_params`` are logged with the configuration's. ``reference`` (raw
    rows; default the training split) becomes the version's reference profile for drift."""
    import mlflow

    from kernel_magics.training.scaling import registered_model

    validate_name(name)
    with store.tracking(), mlflow_run(store, f"{name}-train") as run:
        with store.write_lock():
            params = config.params(data.task)
            params.update(
                model_class=type(model).__name__, task=data.task, n_features=data.n_features
            )
            params.update(extra_params or {})
            if data.scaling is not None:
                params["scaled_features"] = data.scaling.describe()
            if data.target_scaling is not None:
                params["scaled_targets"] = data.target_scaling.describe()
            mlflow.log_params(params)
            mlflow.set_tags({"km.model": name})

        def on_epoch(result: EpochResult) -> None:
            values = {"train_loss": result.train_loss, "val_loss": result.val_loss}
            values.update(result.metrics)
            with store.write_lock(), store_errors("could not log metrics to the store"):
                retry_locked(mlflow.log_metrics, values, step=result.epoch)

        fitted = fit_fn(on_epoch=on_epoch)
        started = time.perf_counter()
        if register is not None:
            served, registered = register(model, data)
        else:
            served = registered_model(model, data)
            registered = register_version(
                store,
                served,
                data.input_example,
                name=name,
                task=data.task,
                classes=data.classes,
                encoder=data.encoder,
                reference=data.training_rows() if reference is None else reference,
            )
        bookkeeping = time.perf_counter() - started

    return TrainResult(
        name=name,
        version=registered.version,
        run_id=run.info.run_id,
        metrics=dict(fitted.final_metrics),
        history=[
            {"epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.val_loss, **r.metrics}
            for r in fitted.history
        ],
        model=served,
        format=registered.format,
        train_seconds=fitted.seconds,
        bookkeeping_seconds=bookkeeping,
        notes=registered.notes,
        net=model,
        encoder=data.encoder,
    )
