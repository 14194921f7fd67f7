"""Model optimization: each method makes a new registered version of a version, tagged with
its parent and recipe, and measured beside it.

    from kernel_magics import api
    r = api.optimize("digits@1", quantize="dynamic")                  # int8 ONNX (onnxruntime)
    r = api.optimize("digits@1", prune=0.5, structured=True, X=X, y=y, finetune_epochs=2)
    r = api.optimize("digits@1", distill=True, student=Small(), X=X, y=y)
    r = api.optimize("digits@1", export="onnx")                        # fp32 ONNX

Every new version goes through ``registration.register_version`` (hash, format, lineage tags)
inside one MLflow run of its own; then parent and new version are measured as the inference
process would serve them (``measure``) and the figures are logged to the run (metrics) and to
the version (``km.opt.*`` tags). The heavy libraries (onnx, onnxscript, onnxruntime) are
imported only by the methods that need them.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput
from kernel_magics.naming import validate_name
from kernel_magics.optimize.measure import (
    Figures,
    Validation,
    encoded,
    measure,
    one_thread,
    quality,
)
from kernel_magics.preprocess import read_encoder
from kernel_magics.quality.profile import read_profile
from kernel_magics.store import TAG_FORMAT, Store, parse_ref, retry_locked

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kernel_magics.optimize.methods import Candidate, Parent
    from kernel_magics.training.data import PreparedData

__all__ = ["OptimizeResult", "Figures", "optimize"]
TAG_PREFIX = "km.opt."
QUANTIZE_MODES = ("dynamic", "static")
EXPORTS = ("onnx",)
CHECK_ROWS = 256  # sample rows for the ONNX-vs-torch comparison


@dataclass
class OptimizeResult:
    """What ``%optimize`` / ``api.optimize`` return: the new version and the trade-off."""

    name: str
    version: int
    run_id: str
    parent: str  # NAME@VERSION
    method: str  # quantize | prune | distill | export
    recipe: str
    format: str  # km.format of the new version
    parent_figures: Figures
    figures: Figures
    baseline: Figures | None = None  # distillation: the same student trained on labels only
    checks: dict[str, float] = field(default_factory=dict)  # max_abs_diff_*, tolerance_*
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def validated(self) -> bool:
        return bool(self.figures.metrics)


def optimize(
    store: Store,
    ref: str,
    *,
    quantize: str | None = None,
    calibration: Any = None,
    prune: float | None = None,
    structured: bool = False,
    finetune_epochs: int = 0,
    distill: bool = False,
    student: Any = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    epochs: int = 20,
    export: str | None = None,
    X: Any = None,
    y: Any = None,
    name: str | None = None,
    seed: int = 0,
    progress: Any = None,
) -> OptimizeResult:
    """Make one optimized version of ``ref`` ("NAME", "NAME@VERSION" or "NAME@ALIAS") as the
    next version of ``name`` (default: the same model). See ``api.optimize``."""
    from kernel_magics.optimize import methods

    started = time.perf_counter()
    method = _check(quantize, prune, distill, export, finetune_epochs, temperature, alpha, epochs)
    if distill and (student is None or X is None):
        raise InvalidInput("distillation needs a student model and training data (X, y)")
    if finetune_epochs and X is None:
        raise InvalidInput("fine-tuning needs training data (X, y)")
    if quantize == "static" and calibration is None and X is None:
        raise InvalidInput("static quantization needs calibration rows (or data X)")
    parent_name, version_ref = parse_ref(ref)
    target = name or parent_name
    validate_name(target)
    parent = _load_parent(store, parent_name, version_ref)
    data, val = _data(parent, X, y, seed) if X is not None else (None, None)
    rows = val.X[:CHECK_ROWS] if val is not None else parent.example
    with tempfile.TemporaryDirectory(prefix="km-optimize-") as tmp:
        if method in ("quantize", "export"):
            rows_cal = _calibration(parent, calibration, data) if quantize == "static" else None
            candidate = methods.onnx_version(parent, Path(tmp), quantize, rows_cal, rows)
        elif method == "prune":
            assert prune is not None
            candidate = methods.pruned(parent, prune, structured, data, finetune_epochs, seed)
        else:
            assert data is not None
            candidate = methods.distilled(
                parent,
                student,
                data,
                temperature=temperature,
                alpha=alpha,
                epochs=epochs,
                seed=seed,
            )
        result = _register_and_measure(store, parent, candidate, target, val, progress)
    result.method, result.seconds = method, time.perf_counter() - started
    return result


def _check(
    quantize: str | None,
    prune: float | None,
    distill: bool,
    export: str | None,
    finetune_epochs: int,
    temperature: float,
    alpha: float,
    epochs: int,
) -> str:
    """The method asked for; every option checked before anything is loaded or written."""
    chosen = [m for m, on in (("prune", prune is not None), ("distill", distill)) if on]
    if quantize is not None or export is not None:
        chosen.append("quantize" if quantize is not None else "export")
    if len(chosen) != 1:
        raise InvalidInput(
            "choose one optimization: quantize, prune, distill or export (export may be "
            "combined with quantize)" + (f"; got {' and '.join(chosen)}" if chosen else "")
        )
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise InvalidInput(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if export is not None and export not in EXPORTS:
        raise InvalidInput(f"export must be one of {', '.join(EXPORTS)}, got {export!r}")
    if prune is not None and not (isinstance(prune, int | float) and 0 < prune < 1):
        raise InvalidInput(f"prune takes the fraction of weights to remove, in (0, 1); got {prune}")
    if finetune_epochs and chosen[0] != "prune":
        raise InvalidInput("fine-tuning epochs apply to pruning only")
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise InvalidInput(f"finetune_epochs must be a whole number >= 0, got {finetune_epochs!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvalidInput(f"temperature must be a positive number, got {temperature}")
    if not 0 <= alpha <= 1:
        raise InvalidInput(f"alpha must be between 0 and 1, got {alpha}")
    if not isinstance(epochs, int) or epochs < 1:
        raise InvalidInput(f"epochs must be a whole number >= 1, got {epochs!r}")
    return chosen[0]


# -- the parent and the data --------------------------------------------------------------------
def _load_parent(store: Store, name: str, ref: str | None) -> Parent:
    from kernel_magics.formats.loaders import loader_for
    from kernel_magics.formats.model_files import read_example, read_signature
    from kernel_magics.formats.verified import verified_folder
    from kernel_magics.optimize.measure import served
    from kernel_magics.optimize.methods import Parent
    from kernel_magics.registration import example_rows

    info = store.resolve(name, ref)
    folder = verified_folder(store, info)
    fmt = info.tags.get(TAG_FORMAT) or loader_for(folder, None).format
    example = read_example(folder)
    signature = read_signature(folder, example)
    if example is None:
        raise InvalidInput(f"{name}@{info.version} has no input example to export or measure with")
    example, _ = example_rows(example.astype(signature.dtype))
    model = served(folder, fmt, f"{name}@{info.version}")
    out = model.forward(encoded(model, example))
    classes = int(out.shape[-1]) if info.task == "classification" and out.ndim == 2 else None
    return Parent(
        ref=f"{name}@{info.version}",
        folder=folder,
        format=fmt,
        example=example,
        module=_torch_module(folder, fmt),
        forward=lambda X: model.forward(encoded(model, X)),
        classes=classes,
        task=info.task,
        labels=info.classes,
        encoder=read_encoder(folder),
    )


def _torch_module(folder: Path, fmt: str) -> Any:
    """The parent as a torch module to transform: a pt2 version's exported graph (made
    trainable), a pickle version's own module; None for ONNX."""
    import torch

    if fmt == "pt2":
        from kernel_magics.optimize.prune import trainable

        return trainable(torch.export.load(str(folder / "data" / "model.pt2")).module())
    if fmt == "pickle":
        return torch.load(folder / "data" / "model.pth", map_location="cpu", weights_only=False)
    return None


def _data(parent: Parent, X: Any, y: Any, seed: int) -> tuple[PreparedData, Validation | None]:
    """Training rows (fine-tuning, distillation, calibration) and held-out rows (the table)."""
    from kernel_magics.training.data import prepare_data

    task = parent.task if parent.task in ("classification", "regression") else None
    if parent.encoder is not None:  # raw table rows, encoded as the parent encodes them
        X = parent.encoder.encode(X)
    data = prepare_data(X, y, task=task, seed=seed)
    if tuple(data.row_shape) != tuple(parent.example.shape[1:]):
        raise InvalidInput(
            f"X has rows shaped {data.row_shape}; {parent.ref} takes {parent.example.shape[1:]}"
        )
    if data.task == "classification" and parent.labels and parent.labels != data.classes:
        raise InvalidInput(
            f"the labels in y ({data.classes}) are not {parent.ref}'s classes ({parent.labels})"
        )
    if not len(data.X_val):
        return data, None
    X_val = data.X_val.numpy().astype(parent.example.dtype)
    if data.task == "classification":
        truth = np.asarray(data.classes, dtype=object)[data.y_val.numpy()]
        return data, Validation(X_val, truth, data.task, list(parent.labels or data.classes or []))
    return data, Validation(X_val, data.y_val.numpy(), data.task)


def _calibration(parent: Parent, calibration: Any, data: PreparedData | None) -> np.ndarray:
    from kernel_magics.optimize.quantize import calibration_rows

    if calibration is None:
        assert data is not None
        calibration = data.X_train.numpy()
    elif parent.encoder is not None:
        calibration = parent.encoder.encode(calibration)
    return calibration_rows(calibration, parent.example.dtype, tuple(parent.example.shape[1:]))


# -- registering, measuring, recording ----------------------------------------------------------
def _register_and_measure(
    store: Store,
    parent: Parent,
    candidate: Candidate,
    target: str,
    val: Validation | None,
    progress: Any,
) -> OptimizeResult:
    import mlflow

    from kernel_magics.registration import register_version
    from kernel_magics.runs import mlflow_run, store_errors
    from kernel_magics.training.progress import make_progress

    reporter = make_progress(progress) if isinstance(progress, str) else progress
    with store.tracking(), mlflow_run(store, f"{target}-optimize") as run:
        with store.write_lock(), store_errors("could not log to the store"):
            mlflow.log_params({**candidate.params, "parent": parent.ref})
            mlflow.set_tags({"km.model": target, "km.parent": parent.ref})
        if candidate.train is not None:
            candidate.train(_epoch_logger(store), reporter)
        rows = parent.example
        measured: dict[str, Any] = {}

        def finish(folder: Path, fmt: str) -> dict[str, str]:
            """Measure the logged model beside its parent before the version exists: its
            figures are tags the version is created with (one call, nothing after it)."""
            figures = measure(folder, fmt, f"{target} (new)", rows, val)
            before = measure(parent.folder, parent.format, f"{parent.ref} (parent)", rows, val)
            baseline = _baseline(candidate, figures, val)
            measured.update(figures=figures, before=before, baseline=baseline)
            return _record(store, candidate.recipe, figures, before, baseline, candidate.checks)

        registered = register_version(
            store,
            candidate.model,
            parent.example,
            name=target,
            task=parent.task,
            classes=parent.labels,
            parent=parent.ref,
            recipe=candidate.recipe,
            log_fn=candidate.log_fn,
            serialization=candidate.serialization,
            encoder=parent.encoder,
            finish=finish,
            # the parent's reference: a derived version serves the same inputs
            reference=read_profile(parent.folder),
        )
        new_label = f"{target}@{registered.version} (new)"
        return OptimizeResult(
            name=target,
            version=registered.version,
            run_id=run.info.run_id,
            parent=parent.ref,
            method="",
            recipe=candidate.recipe,
            format=registered.format,
            parent_figures=measured["before"],
            figures=replace(measured["figures"], label=new_label),
            baseline=measured["baseline"],
            checks=dict(candidate.checks),
            notes=registered.notes + candidate.notes,
        )


def _epoch_logger(store: Store) -> Any:
    import mlflow

    from kernel_magics.registration import store_errors

    def on_epoch(result: Any) -> None:
        values = {"train_loss": result.train_loss, "val_loss": result.val_loss, **result.metrics}
        with store.write_lock(), store_errors("could not log metrics to the store"):
            retry_locked(mlflow.log_metrics, values, step=result.epoch)

    return on_epoch


def _baseline(candidate: Candidate, figures: Figures, val: Validation | None) -> Figures | None:
    """The labels-only student: same architecture (so same size and speed), its own quality."""
    import torch

    model = candidate.baseline
    if model is None:
        return None
    metrics: dict[str, float] = {}
    if val is not None:
        with one_thread(), torch.no_grad():
            metrics = quality(model.eval()(torch.from_numpy(val.X)).numpy(), val)
    label = "same student, labels only (not registered)"
    return replace(figures, label=label, metrics=metrics)


def _record(
    store: Store,
    recipe: str,
    figures: Figures,
    before: Figures,
    baseline: Figures | None,
    checks: Mapping[str, float],
) -> dict[str, str]:
    """Figures as metrics of the run; returns them as the ``km.opt.*`` tags of the version to
    be created (for %compare)."""
    import mlflow

    from kernel_magics.registration import store_errors

    values = dict(figures.flat())
    values.update({f"parent_{k}": v for k, v in before.flat().items()})
    if baseline is not None:
        values.update({f"labels_only_{k}": v for k, v in baseline.metrics.items()})
    values.update(checks)
    tags = {TAG_PREFIX + "method": recipe.split()[0]}
    tags.update(
        {TAG_PREFIX + k.replace("parent_", "parent."): f"{v:.6g}" for k, v in values.items()}
    )
    with store.write_lock(), store_errors("could not log the figures to the store"):
        retry_locked(mlflow.log_metrics, values)
    return tags
