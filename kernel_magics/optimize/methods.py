"""What each optimization makes from the parent: a ``Candidate`` — the model registration
probes and logs (or an artifact's ``log_fn``), its recipe and parameters, and the training
step (fine-tuning, distillation) that runs inside the version's MLflow run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.errors import InvalidInput
from kernel_magics.optimize import onnx_export, prune, quantize
from kernel_magics.preprocess import TableEncoder
from kernel_magics.registration import LogFn
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import PreparedData

OnEpoch = Callable[[Any], None]


@dataclass
class Parent:
    """The version being optimized, as every method needs it."""

    ref: str  # NAME@VERSION
    folder: Path
    format: str
    example: np.ndarray  # input rows in the signature's dtype (≥ 2)
    module: torch.nn.Module | None  # None for an ONNX version
    forward: Callable[[np.ndarray], np.ndarray]  # the served forward (any format)
    classes: int | None  # output columns, for a classifier
    task: str | None  # km.task
    labels: list | None  # km.classes: the labels in output order
    # The parent's declared one-hot step (preprocess.py): methods work on the encoded rows the
    # graph takes, and the new version carries the same step.
    encoder: TableEncoder | None = None


@dataclass
class Candidate:
    model: torch.nn.Module
    recipe: str
    params: dict[str, Any]
    log_fn: LogFn | None = None
    serialization: str = "pt2"  # "pickle": skip torch.export (it cannot trace the model)
    train: Callable[[OnEpoch, Any], None] | None = None  # (on_epoch, progress), in the run
    notes: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)  # max_abs_diff, tolerance
    baseline: torch.nn.Module | None = None  # distillation: the labels-only student


def _torch_module(parent: Parent, what: str) -> torch.nn.Module:
    if parent.module is None:
        raise InvalidInput(
            f"{parent.ref} is an ONNX version: {what} works on torch versions (pt2 or pickle); "
            "optimize its parent instead"
        )
    return parent.module


# -- quantization and ONNX ----------------------------------------------------------------------
def onnx_version(
    parent: Parent, tmp: Path, mode: str | None, calibration: np.ndarray | None, rows: np.ndarray
) -> Candidate:
    """fp32 ONNX (``mode`` None), or int8 ONNX (``dynamic`` / ``static``), from the parent."""
    what = f"{mode} quantization" if mode else "ONNX export"
    if parent.format == "onnx":
        if mode is None:
            raise InvalidInput(f"{parent.ref} is already an ONNX version")
        onnx_export.require_onnx(what)
        fp32, checks = parent.folder / "model.onnx", {}
    else:
        module = _torch_module(parent, what)
        if parent.format == "pickle":  # torch.export could not trace it: neither can ONNX
            if mode == "dynamic":
                return _torch_int8(module, parent.ref)
            raise InvalidInput(
                f"{parent.ref} is in MLflow's pickle format (torch.export could not trace its "
                f"forward), so {what} to ONNX is not possible; --quantize dynamic works (torch.ao)"
            )
        onnx_export.require_onnx(what)
        fp32 = tmp / "fp32.onnx"
        onnx_export.export(module, parent.example, fp32)
        diff = onnx_export.check_export(module, fp32, rows)
        checks = {"max_abs_diff_fp32": diff, "tolerance_fp32": onnx_export.TOLERANCE}
    params: dict[str, Any] = {"method": "quantize" if mode else "export", "format": "onnx"}
    if mode is None:
        recipe = "export onnx fp32 (onnxruntime)"
        return Candidate(
            onnx_export.OnnxModule(fp32), recipe, params, onnx_export.log_fn(fp32), checks=checks
        )
    int8 = tmp / "int8.onnx"
    quantize.onnx_int8(fp32, int8, mode, calibration)
    params.update(
        quantize=mode, calibration_rows=len(calibration) if calibration is not None else 0
    )
    if parent.module is not None:
        diff, _ = onnx_export.max_abs_diff(parent.module, int8, rows)
        checks["max_abs_diff_int8"] = diff
    recipe = f"quantize {mode} int8 (onnxruntime" + (
        f", {len(calibration)} calibration rows)" if calibration is not None else ")"
    )
    return Candidate(
        onnx_export.OnnxModule(int8), recipe, params, onnx_export.log_fn(int8), checks=checks
    )


def _torch_int8(module: torch.nn.Module, ref: str) -> Candidate:
    """A pickle-format parent: torch.ao's dynamic int8 of its Linear layers, pickled too."""
    model = quantize.torch_dynamic(module)
    note = (
        f"{ref} is in MLflow's pickle format (torch.export could not trace it), so no ONNX: "
        "torch.ao dynamic int8 instead, also in the pickle format"
    )
    params = {"method": "quantize", "quantize": "dynamic", "format": "pickle"}
    recipe = "quantize dynamic int8 (torch.ao)"
    return Candidate(model, recipe, params, serialization="pickle", notes=[note])


# -- pruning ------------------------------------------------------------------------------------
def pruned(
    parent: Parent,
    amount: float,
    structured: bool,
    data: PreparedData | None,
    epochs: int,
    seed: int,
) -> Candidate:
    module = _torch_module(parent, "pruning")
    params: dict[str, Any] = {"method": "prune", "amount": amount, "structured": structured}
    notes = []
    masks: dict[str, torch.Tensor] = {}
    if structured:
        if parent.format == "pickle":
            raise InvalidInput(
                f"structured pruning works on the exported graph; {parent.ref} is in MLflow's "
                "pickle format (torch.export could not trace it): use unstructured pruning"
            )
        module = prune.as_graph(module, parent.example)
        layers = prune.structured(module, amount, parent.example)
        shrunk = ", ".join(f"{layer.before}→{layer.after}" for layer in layers)
        recipe = f"prune {amount:.0%} structured (lowest-L2 neurons; layers {shrunk})"
    else:
        masks = prune.unstructured(module, amount)
        recipe = f"prune {amount:.0%} unstructured (weights zeroed)"
        notes.append(
            "unstructured pruning only zeroes weights: parameter count, file size and speed "
            "do not change (use --structured to shrink the layers)"
        )
    train = None
    if epochs:
        assert data is not None
        recipe += f" + fine-tuned {epochs} epoch{'s' if epochs > 1 else ''}"
        params["finetune_epochs"] = epochs
        config = TrainConfig(epochs=epochs, seed=seed, task=data.task)

        def train(on_epoch: OnEpoch, progress: Any) -> None:
            from kernel_magics.training.fit import fit

            release = prune.keep_zeros(module, masks) if masks else (lambda: None)
            try:
                title = f"{parent.ref} pruned: fine-tuning"  # not the graph's class name
                fit(module, data, config, on_epoch=on_epoch, progress=progress, title=title)
            finally:
                release()

    return Candidate(module, recipe, params, serialization=parent.format, train=train, notes=notes)


# -- distillation -------------------------------------------------------------------------------
def distilled(
    parent: Parent,
    student: Any,
    data: PreparedData,
    *,
    temperature: float,
    alpha: float,
    epochs: int,
    seed: int,
) -> Candidate:
    from kernel_magics.optimize.distill import check_student, distill

    model = check_student(student, data, parent.classes or data.n_outputs)
    config = TrainConfig(epochs=epochs, seed=seed, task="classification")
    params = {
        "method": "distill",
        "student": type(model).__name__,
        "temperature": temperature,
        "alpha": alpha,
        "epochs": epochs,
        "seed": seed,
    }
    recipe = (
        f"distill into {type(model).__name__} (T={temperature:g}, alpha={alpha:g}, {epochs} epochs)"
    )
    candidate = Candidate(model, recipe, params)

    def train(on_epoch: OnEpoch, progress: Any) -> None:
        done = distill(
            parent.forward,
            model,
            data,
            config,
            temperature=temperature,
            alpha=alpha,
            on_epoch=on_epoch,
            progress=progress,
            title=f"{type(model).__name__} distilled from {parent.ref}",
        )
        candidate.baseline = done.labels_only

    candidate.train = train
    return candidate
