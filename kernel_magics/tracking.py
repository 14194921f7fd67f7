"""One training = one MLflow run + (if it finishes) one new registered version.

The run holds the parameters (from the ``TrainConfig``), per-epoch metrics and the model; the
version is registered through ``registration.register_version``, the path every model takes.
An interrupted or failed training ends its run as KILLED/FAILED and registers nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.registration import register_version
from kernel_magics.runs import mlflow_run, store_errors
from kernel_magics.store import Store, retry_locked, validate_name
from kernel_magics.views import front_end_view

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

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
    history: list[dict[str, float]]
    model: Any = field(repr=False)
    format: str = "pt2"
    train_seconds: float = 0.0
    bookkeeping_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

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
) -> TrainResult:
    """Wrap ``fit_fn(on_epoch=...) -> FitResult`` in an MLflow run and register the model."""
    import mlflow

    validate_name(name)
    with store.tracking(), mlflow_run(store, f"{name}-train") as run:
        with store.write_lock():
            params = config.params(data.task)
            params.update(
                model_class=type(model).__name__, task=data.task, n_features=data.n_features
            )
            mlflow.log_params(params)
            mlflow.set_tags({"km.model": name})

        def on_epoch(result: EpochResult) -> None:
            values = {"train_loss": result.train_loss, "val_loss": result.val_loss}
            values.update(result.metrics)
            with store.write_lock(), store_errors("could not log metrics to the store"):
                retry_locked(mlflow.log_metrics, values, step=result.epoch)

        fitted = fit_fn(on_epoch=on_epoch)
        started = time.perf_counter()
        registered = register_version(
            store, model, data.input_example, name=name, task=data.task, classes=data.classes
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
        model=model,
        format=registered.format,
        train_seconds=fitted.seconds,
        bookkeeping_seconds=bookkeeping,
        notes=registered.notes,
    )
