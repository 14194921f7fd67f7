"""One training = one MLflow run + (if it finishes) one new registered version.

The run holds the parameters, per-epoch metrics and the model (MLflow pytorch flavor, pt2 via
torch.export so a class defined in a notebook serves without the notebook). The version is
created with its content hash, task and class labels as tags in one call, so there is never a
version without the hash the inference process checks before loading it. An interrupted or
failed training ends its run as KILLED/FAILED and registers nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import KernelMagicsError, StoreError, TrainingInterrupted
from kernel_magics.store import (
    TAG_CLASSES,
    TAG_FORMAT,
    TAG_SHA256,
    TAG_TASK,
    Store,
    hash_model_dir,
    retry_locked,
    validate_name,
)

if TYPE_CHECKING:
    import torch

    from kernel_magics.training.data import PreparedData
    from kernel_magics.training.fit import FitResult

log = logging.getLogger(__name__)


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

    def _repr_html_(self) -> str:
        from kernel_magics import display

        return display.train_result_html(self)


def _pip_requirements() -> list[str]:
    # Explicit requirements: letting MLflow infer them costs ~7 s per log_model.
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]


def _log_model(model: torch.nn.Module, example: Any) -> tuple[Any, str, list[str]]:
    """Log pt2 (no pickled code); fall back to MLflow's pickle format for models torch.export
    cannot trace (data-dependent control flow), and say so."""
    import mlflow.pytorch

    try:
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, pip_requirements=_pip_requirements()
        )
        return info, "pt2", []
    except Exception as err:  # torch.export failures come in many exception types
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        log.warning("torch.export failed (%s); saving with the pickle format", reason)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            pip_requirements=_pip_requirements() + ["cloudpickle"],
            serialization_format="pickle",
        )
        note = f"torch.export could not trace the model ({reason}); saved in MLflow's pickle format"
        return info, "pickle", [note]


def run_training(
    store: Store,
    name: str,
    model: torch.nn.Module,
    data: PreparedData,
    params: dict[str, Any],
    fit_fn: Any,
) -> TrainResult:
    """Wrap ``fit_fn(on_epoch=...) -> FitResult`` in an MLflow run and register the model."""
    import mlflow

    validate_name(name)
    with _store_errors(f"cannot open the model store at {store.uri}"):
        experiment_id = store.experiment_id()

    with store.tracking():
        with store.write_lock(), _store_errors("cannot start a run in the model store"):
            run = mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-train")
        try:
            with store.write_lock():
                mlflow.log_params({**params, "task": data.task, "n_features": data.n_features})
                mlflow.set_tags({"km.model": name})

            def on_epoch(result: Any) -> None:
                values = {"train_loss": result.train_loss, "val_loss": result.val_loss}
                values.update(result.metrics)
                with store.write_lock(), _store_errors("could not log metrics to the store"):
                    retry_locked(mlflow.log_metrics, values, step=result.epoch)

            fitted: FitResult = fit_fn(on_epoch=on_epoch)
            started = time.perf_counter()
            with store.write_lock(), _store_errors("could not save the model to the store"):
                info, fmt, notes = _log_model(model, data.input_example)
                local = mlflow.artifacts.download_artifacts(info.model_uri)
                tags = {TAG_SHA256: hash_model_dir(local), TAG_TASK: data.task, TAG_FORMAT: fmt}
                if data.classes is not None:
                    tags[TAG_CLASSES] = json.dumps([_plain(c) for c in data.classes])
                version = _register(store, name, info, run.info.run_id, tags)
            bookkeeping = time.perf_counter() - started
        except (TrainingInterrupted, KeyboardInterrupt):
            _end_run("KILLED", store)
            raise
        except BaseException:
            _end_run("FAILED", store)
            raise
        with store.write_lock():
            mlflow.end_run("FINISHED")

    return TrainResult(
        name=name,
        version=int(version.version),
        run_id=run.info.run_id,
        metrics=dict(fitted.final_metrics),
        history=[
            {"epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.val_loss, **r.metrics}
            for r in fitted.history
        ],
        model=model,
        format=fmt,
        train_seconds=fitted.seconds,
        bookkeeping_seconds=bookkeeping,
        notes=notes,
    )


def _register(store: Store, name: str, info: Any, run_id: str, tags: dict) -> Any:
    """One call creates the version with its hash tag: no version ever lacks it."""
    from mlflow.exceptions import MlflowException

    if not store.model_exists(name):
        try:
            store.client.create_registered_model(name)
        except MlflowException:  # a parallel process registered the name first
            pass
    return retry_locked(
        store.client.create_model_version,
        name=name,
        source=info.model_uri,
        run_id=run_id,
        tags=tags,
        model_id=getattr(info, "model_id", None),
    )


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Turn I/O and database failures (disk full, store gone) into one clear line."""
    try:
        yield
    except KernelMagicsError:
        raise
    except Exception as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise StoreError(f"{what}: {type(err).__name__}: {detail}") from err


def _end_run(status: str, store: Store) -> None:
    import mlflow

    try:
        with store.write_lock():
            mlflow.end_run(status)
    except Exception as err:  # the store may be what failed; the original error matters more
        log.warning("could not mark the run %s: %s", status, err)


def _plain(value: Any) -> Any:
    """Class labels as JSON values (numpy scalars → Python)."""
    return value.item() if hasattr(value, "item") else value
